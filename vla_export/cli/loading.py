"""The checkpoint-loading options, defined once and shared by every command that takes a checkpoint.

``@with_loading_options`` adds ``--config``, ``--rename``, ``--set`` and ``--trust-checkpoint`` to a
Typer command and hands the command one :class:`~vla_export.models.resolve.LoadOptions` as ``load``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from vla_export.errors import ConfigError
from vla_export.models.resolve import LoadOptions

CONFIG_HELP = ("Model config JSON: a file from `inspect --save-config` (config + renames), `inspect --json`, or a bare config. "
               "Overrides inference from tensor shapes.")
RENAME_HELP = "Rename key prefixes, OLD=NEW (repeatable), for checkpoints in a layout vla-export does not know."
SET_HELP = "Set one config value, FIELD=VALUE (repeatable), e.g. head_tanh=true, kosmos_text.num_heads=4, pooling=mean."
TRUST_HELP = "Allow full unpickling (runs code from the file: only for files you trust)."

_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("config", Optional[Path], typer.Option(None, "--config", help=CONFIG_HELP)),
    ("rename", Optional[list[str]], typer.Option(None, "--rename", help=RENAME_HELP)),
    ("set_values", Optional[list[str]], typer.Option(None, "--set", help=SET_HELP)),
    ("trust_checkpoint", bool, typer.Option(False, "--trust-checkpoint", help=TRUST_HELP)),
)


def loading_options(config: Optional[Path] = None, rename: Optional[list[str]] = None, set_values: Optional[list[str]] = None,
                    trust_checkpoint: bool = False) -> LoadOptions:
    """The CLI strings as one :class:`LoadOptions` (a ``--config`` record's renames come first)."""
    if config is not None and not config.is_file():
        raise ConfigError(f"{config}: config file not found" if not config.exists() else f"{config}: is a folder, not a config file")
    return LoadOptions.from_cli(config, rename or [], set_values or [], trust_checkpoint)


def with_loading_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a Typer command the shared loading options; it receives them as ``load: LoadOptions``."""
    sig = inspect.signature(func)
    kept = [p for p in sig.parameters.values() if p.name != "load"]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind) for name, kind, default in _OPTIONS]
    names = [name for name, _, _ in _OPTIONS]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name, None) for name in names}
        return func(*args, load=loading_options(values["config"], values["rename"], values["set_values"], bool(values["trust_checkpoint"])), **kwargs)

    command.__signature__ = sig.replace(parameters=kept + added)  # type: ignore[attr-defined]
    command.__annotations__ = {k: v for k, v in func.__annotations__.items() if k != "load"} | {name: kind for name, kind, _ in _OPTIONS}
    return command
