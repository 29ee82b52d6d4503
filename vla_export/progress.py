"""Progress of long steps (checkpoint load, export, checks, calibration, builds), for whoever listens.

The lower layers only name their steps; the CLI decides how to show them (a spinner with the
elapsed time on a terminal, one line per finished step in a log). With no listener, a step costs
nothing and prints nothing, so the Python API stays silent.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, ContextManager, TypeVar

Listener = Callable[[str], ContextManager[None]]
_listener: ContextVar[Listener | None] = ContextVar("vla_export_progress_listener", default=None)
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Report ``label`` as a step in progress for the duration of the block."""
    listener = _listener.get()
    if listener is None:
        yield
        return
    with listener(label):
        yield


def reported(label: str) -> Callable[[F], F]:
    """Decorator form of :func:`step`: the whole call is one step."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with step(label):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the steps of the code run inside this block to ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


Advance = Callable[[int], None]


def _ignore(n: int = 1) -> None:
    """The counter of a step nobody listens to."""


@contextlib.contextmanager
def counted(label: str, total: int | None, unit: str = "samples", *, timed: bool = False) -> Iterator[Advance]:
    """A step of ``total`` items: yields ``advance(n=1)``, called after each item, so the listener can show
    how many are done, the elapsed time and the time left.

    ``timed``: the items are timed measurements; the listener must draw only when ``advance`` is called
    (between them), never from a background thread. With no listener ``advance`` does nothing.
    """
    listener = _listener.get()
    counter = getattr(listener, "counted", None)
    if counter is None:
        with step(label):
            yield _ignore
        return
    with counter(label, total, unit, timed=timed) as advance:
        yield advance
