"""Options shared by several commands, declared once.

* The checkpoint-loading options, shared by every command that takes a checkpoint: ``@with_loading_options`` adds
  ``--config``, ``--rename``, ``--set`` and ``--trust-checkpoint`` to a Typer command and hands the command one
  :class:`~vla_export.models.resolve.LoadOptions` as ``load``.
* An :class:`OptionGroup` is a frozen dataclass whose fields are options (``Annotated`` types defined here, once):
  a command parameter whose default is a group instance (``tol: ToleranceOptions = ToleranceOptions()``) is expanded by
  ``@with_option_groups`` into the group's options, in field order at that place, and the command receives the group.
  A command whose help text differs for one option subclasses the group and overrides that field's type.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from vla_export.errors import ConfigError
from vla_export.models.resolve import LoadOptions

CONFIG_HELP = ("Model config JSON: a file from `inspect --save-config` (config + renames), `inspect --json`, or a bare config. "
               "Overrides inference from tensor shapes.")
RENAME_HELP = "Rename key prefixes, OLD=NEW (repeatable), for checkpoints in a layout vla-export does not know."
SET_HELP = "Set one config value, FIELD=VALUE (repeatable), e.g. head_tanh=true, kosmos_text.num_heads=4, pooling=mean."
TRUST_HELP = "Allow full unpickling (runs code from the file: only for files you trust)."
JsonOpt = typer.Option(None, "--json", help="Also write the report as JSON.")

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


JUNIT_HELP = "Also write the checks as JUnit XML (one test case per checked output, step or row) for CI."

# --- the tolerance overrides of a comparison (Polygraphy's spelling for --atol/--rtol) ---
Atol = Annotated[Optional[list[str]], typer.Option("--atol", metavar="[OUTPUT:]VALUE", help="Override the absolute tolerance: VALUE for every output, or OUTPUT:VALUE for one (repeatable; Polygraphy's spelling, e.g. --atol actions:0.05).")]
Rtol = Annotated[Optional[list[str]], typer.Option("--rtol", metavar="[OUTPUT:]VALUE", help="Override the relative tolerance: VALUE or OUTPUT:VALUE, as --atol.")]
MinCosine = Annotated[Optional[float], typer.Option("--min-cosine", help="Override the minimum cosine similarity.")]
MinSignAgreement = Annotated[Optional[float], typer.Option("--min-sign-agreement", help="Override the minimum sign agreement of actions.")]
MaxRelError = Annotated[Optional[float], typer.Option("--max-rel-error", help="Override the per-row relative error bound of intermediate outputs (INT8 features).")]

# --- the inputs a comparison runs on ---
Samples = Annotated[Optional[int], typer.Option("--samples", help="Number of samples (default 8; with a saved reference: the saved ones).")]
Data = Annotated[Optional[list[Path]], typer.Option("--data", help="Episode files or folders (HDF5) instead of synthetic inputs.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed of the input source (default 0).")]
Batch = Annotated[Optional[int], typer.Option("--batch", help="Batch size per sample (default 1).")]

# --- the reports a check writes ---
Json = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON (- for standard output).")]
Junit = Annotated[Optional[Path], typer.Option("--junit", help=JUNIT_HELP)]
BenchJson = Annotated[Optional[Path], typer.Option("--json", help="Write the report JSON here (e.g. benchmarks/results/NAME.json; - for standard output).")]
ReplayJson = Annotated[Optional[Path], typer.Option("--json", help="Also write the per-step result as JSON (- for standard output).")]


class OptionGroup:
    """Base of the option groups: frozen dataclasses whose fields are ``Annotated`` options."""


@dataclasses.dataclass(frozen=True)
class ToleranceOptions(OptionGroup):
    """``--atol/--rtol`` (``[OUTPUT:]VALUE`` strings, parsed by vla_export.compare.tolerance) and the other bounds."""
    atol: Atol = None
    rtol: Rtol = None
    min_cosine: MinCosine = None
    min_sign_agreement: MinSignAgreement = None
    max_rel_error: MaxRelError = None


@dataclasses.dataclass(frozen=True)
class InputOptions(OptionGroup):
    """The inputs of a comparison: how many samples, from which episodes (else synthetic), seed and batch; None: not given."""
    samples: Samples = None
    data: Data = None
    seed: Seed = None
    batch: Batch = None


@dataclasses.dataclass(frozen=True)
class ReportOptions(OptionGroup):
    """``--json`` and ``--junit``: where a check's result also goes (``-``: standard output)."""
    json_path: Json = None
    junit: Junit = None


@dataclasses.dataclass(frozen=True)
class ReplayReportOptions(ReportOptions):
    """``vla-export replay``'s: its JSON is per step."""
    json_path: ReplayJson = None


@dataclasses.dataclass(frozen=True)
class BenchReportOptions(ReportOptions):
    """``vla-bench``'s: its JSON is the benchmark report."""
    json_path: BenchJson = None


def with_option_groups(func: Callable[..., Any]) -> Callable[..., Any]:
    """Expand the command's :class:`OptionGroup` parameters into their options; the command receives each group built."""
    sig = inspect.signature(func)
    params: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {}
    groups: dict[str, tuple[type, list[str]]] = {}
    for p in sig.parameters.values():
        if not isinstance(p.default, OptionGroup):
            params.append(p)
            continue
        cls = type(p.default)
        hints = typing.get_type_hints(cls, include_extras=True)
        names = [f.name for f in dataclasses.fields(cls)]
        groups[p.name] = (cls, names)
        for f in dataclasses.fields(cls):
            params.append(inspect.Parameter(f.name, p.kind, default=getattr(p.default, f.name), annotation=hints[f.name]))
            annotations[f.name] = hints[f.name]
    taken = [p.name for p in params]
    if len(taken) != len(set(taken)):
        raise TypeError(f"{func.__name__}: an option group's field shadows a parameter: {sorted({n for n in taken if taken.count(n) > 1})}")

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        for name, (cls, names) in groups.items():
            kwargs[name] = cls(**{n: kwargs.pop(n) for n in names if n in kwargs})
        return func(*args, **kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {k: v for k, v in func.__annotations__.items() if k not in groups} | annotations
    return command
