"""trtexec's spellings of the ``trt`` command's options, for users who already write trtexec lines.

``--saveEngine``, ``--timingCacheFile`` and ``--useDLACore`` are plain aliases of ``-o``, ``--timing-cache``
and ``--dla-core``. The three below take trtexec's own value formats and are turned into this command's:
``--minShapes/--optShapes/--maxShapes=NAME:DIMS,...`` into ``--shape NAME=MIN:OPT:MAX``,
``--memPoolSize=workspace:SIZE[K|M|G]`` into ``--workspace`` (MiB), ``--stronglyTyped`` into
``--typing strong``. Giving both spellings of one setting is refused, never resolved silently.
:class:`TrtexecSpellings` declares those five options as one group for ``trt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Optional

import typer

from vla_export.cli.options import OptionGroup
from vla_export.errors import ConfigError

_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024}

MinShapes = Annotated[Optional[str], typer.Option("--minShapes", help="trtexec's spelling: NAME:DIMS,... (with --optShapes and --maxShapes; becomes --shape).")]
OptShapes = Annotated[Optional[str], typer.Option("--optShapes", help="trtexec's spelling, see --minShapes.")]
MaxShapes = Annotated[Optional[str], typer.Option("--maxShapes", help="trtexec's spelling, see --minShapes.")]
MemPoolSize = Annotated[Optional[str], typer.Option("--memPoolSize", help="trtexec's spelling of --workspace: workspace:SIZE[K|M|G] (default unit M).")]
StronglyTyped = Annotated[bool, typer.Option("--stronglyTyped", help="trtexec's spelling of --typing strong.")]


@dataclass(frozen=True)
class TrtexecSpellings(OptionGroup):
    """The trtexec-format options of ``trt`` (None/False: not given)."""
    min_shapes: MinShapes = None
    opt_shapes: OptShapes = None
    max_shapes: MaxShapes = None
    mem_pool: MemPoolSize = None
    strongly_typed: StronglyTyped = False


def _shape_list(flag: str, spec: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in spec.split(","):
        name, sep, dims = item.rpartition(":")  # names may hold ':' (trtexec splits at the last one too)
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise ConfigError(f"{flag} takes NAME:DIMS[,NAME:DIMS...] as trtexec does (e.g. input_ids:1x16), got {item!r}")
        if name in out:
            raise ConfigError(f"{flag}: {name} given twice")
        out[name] = dims
    return out


def shapes_from_trtexec(min_shapes: str | None, opt_shapes: str | None, max_shapes: str | None,
                        shape: list[str] | None) -> list[str] | None:
    """``--shape`` specs (``NAME=MIN:OPT:MAX``) from trtexec's three lists; ``shape`` when none is given.

    Each name needs all three, as trtexec does for a dynamic input; a name also given with ``--shape`` is refused.
    """
    given = {"--minShapes": min_shapes, "--optShapes": opt_shapes, "--maxShapes": max_shapes}
    if not any(given.values()):
        return shape
    missing = [flag for flag, v in given.items() if not v]
    if missing:
        raise ConfigError(f"{', '.join(missing)} missing: trtexec's --minShapes, --optShapes and --maxShapes go together "
                          "(or give --shape NAME=MIN:OPT:MAX)")
    lists = {flag: _shape_list(flag, v) for flag, v in given.items() if v}
    names = list(lists["--minShapes"])
    for flag, found in lists.items():
        if set(found) != set(names):
            raise ConfigError(f"--minShapes, --optShapes and --maxShapes must name the same inputs; {flag} names "
                              f"{', '.join(sorted(found))}, --minShapes {', '.join(sorted(names))}")
    already = {s.partition("=")[0] for s in shape or []} & set(names)
    if already:
        raise ConfigError(f"{', '.join(sorted(already))}: given by both --shape and --minShapes/--optShapes/--maxShapes; give one")
    return [*(shape or []), *(f"{n}={lists['--minShapes'][n]}:{lists['--optShapes'][n]}:{lists['--maxShapes'][n]}" for n in names)]


def workspace_from_mem_pool(mem_pool: str | None, workspace: int, workspace_given: bool) -> int:
    """MiB from trtexec's ``--memPoolSize=workspace:SIZE`` (unit K, M or G, default M, as trtexec); else ``workspace``."""
    if mem_pool is None:
        return workspace
    if workspace_given:
        raise ConfigError("--workspace and --memPoolSize set the same limit; give one")
    pools = dict(item.partition(":")[::2] for item in mem_pool.split(","))
    other = sorted(set(pools) - {"workspace"})
    if other:
        raise ConfigError(f"--memPoolSize: only the workspace pool is set by this command, not {', '.join(other)}")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)", pools.get("workspace", ""))
    if not m:
        raise ConfigError(f"--memPoolSize takes workspace:SIZE[K|M|G] as trtexec does (e.g. workspace:2048M), got {mem_pool!r}")
    mib = float(m.group(1)) * _UNITS[m.group(2) or "M"]
    if mib < 1 or mib != int(mib):
        raise ConfigError(f"--memPoolSize: the workspace must be a whole number of MiB, at least 1, got {mem_pool!r}")
    return int(mib)


def typing_from_strongly_typed(strongly_typed: bool, typing: str) -> str:
    """``strong`` for trtexec's ``--stronglyTyped``; refused beside ``--typing weak``."""
    if not strongly_typed:
        return typing
    if typing not in ("auto", "strong"):
        raise ConfigError(f"--stronglyTyped and --typing {typing} contradict each other; give one")
    return "strong"
