"""Ctrl-C and SIGTERM end every command the same way: nothing published, staging removed, exit 130 or 143.

While a command runs (:func:`handling`, entered by the CLI), SIGINT and SIGTERM raise
:class:`Interrupted` (a ``KeyboardInterrupt``), so the ``finally`` blocks that remove staged files run
for both. A library may swallow that exception (the dynamo exporter did: the export went on and was
published), so the signal is also recorded, and every publishing step first calls :func:`check`: an
interrupted command never moves an artifact into place, whatever the code in between did with the
exception. :func:`deferred` holds signals back over a few moves that must happen as a unit.

SIGINT is handled even when the process started with it ignored (a background job of a
non-interactive shell, where ``kill -INT`` would otherwise do nothing).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is what shells report for it (128 + the signal number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_received: int | None = None
_deferring = 0
_count = 0  # signals received so far


def received() -> int | None:
    """The first signal received while :func:`handling` is active (None: none)."""
    return _received


def check() -> None:
    """Raise :class:`Interrupted` if a signal was received (even one whose exception a library swallowed)."""
    if _received is not None and not _deferring:
        raise Interrupted(_received)


def consume() -> int | None:
    """Forget the signal received: for a command whose normal end it is (``serve`` stops on Ctrl-C)."""
    global _received
    signum, _received = _received, None
    return signum


def _handler(signum: int, frame: object) -> None:
    global _received, _count
    _count += 1
    if _received is None:
        _received = signum
    if not _deferring:
        raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: a signal arriving inside it is raised when it ends (moves of one publish)."""
    global _deferring
    check()
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    check()


@contextlib.contextmanager
def deferred_cleanup() -> Iterator[None]:
    """Run a clean-up block whole, interrupted or not: a signal arriving inside it is raised when it ends."""
    global _deferring
    before = _count
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _count != before and not _deferring:
        raise Interrupted(_received or signal.SIGINT)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Install the handlers for the block (main thread only; elsewhere a no-op) and restore the old ones."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _received = None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
        _received = None  # the command is over: later code of this process (the Python API) is not interrupted
