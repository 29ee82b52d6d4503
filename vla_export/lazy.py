"""One helper for importing optional heavy modules on first use."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path
from types import MappingProxyType, ModuleType

from vla_export.errors import MissingDependencyError

def extra_install(extra: str) -> str:
    """The command that installs vla-export's optional ``extra``, one that works where vla-export came from.

    vla-export is not on a package index, so ``pip install 'vla-export[trt]'`` fails: the hint names
    the checkout (editable install from its folder) and, as an alternative, the extra's own packages
    as the installed metadata lists them.
    """
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        hint = f"`pip install -e '{root}[{extra}]'`"
    else:
        hint = f"`pip install -e '.[{extra}]'` in a vla-export checkout"
    try:
        requires = importlib.metadata.requires("vla-export") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    marker = re.compile(r";\s*extra\s*==\s*[\"']" + re.escape(extra) + r"[\"']\s*$")
    packages = [marker.sub("", r).strip() for r in requires if marker.search(r)]
    if packages:
        hint += " (or the packages alone: `pip install " + " ".join(f"'{p}'" for p in packages) + "`)"
    return hint


_EXTRA = re.compile(r"\{extra:([\w-]+)\}")


def expand_hint(hint: str) -> str:
    """``hint`` with each ``{extra:NAME}`` replaced by :func:`extra_install` (``NAME``): read when an error is
    raised, so importing this module reads no package metadata."""
    return _EXTRA.sub(lambda m: extra_install(m.group(1)), hint)


#: How to get each optional module (``{extra:NAME}``: see :func:`expand_hint`). Read-only: callers pass
#: ``install=`` for anything else.
INSTALL_HINTS = MappingProxyType(
    {
        "tensorrt": "on Jetson: `sudo apt install nvidia-tensorrt` (JetPack 6); on x86: {extra:trt}",
        "tensorrt_rtx": "{extra:trt-rtx}",
        "pycuda": "`pip install pycuda` (needs the CUDA toolkit and driver; optional, cuda-python or torch also work)",
        "cuda": "`pip install cuda-python`",
        "polygraphy": "`pip install polygraphy`",
        "onnxruntime": "`pip install onnxruntime` (CPU), or for CUDA {extra:gpu}",
        "onnxslim": "{extra:simplify}",
        "onnx": "`pip install onnx`",
        "onnxscript": "`pip install onnxscript`",
        "h5py": "`pip install h5py`",
        "torch": "`pip install torch`",
        "transformers": "`pip install 'transformers>=4.57,<6'`",
        "safetensors": "`pip install safetensors`",
        "psutil": "`pip install psutil`",
    }
)


def lazy_import(name: str, *, purpose: str | None = None, install: str | None = None) -> ModuleType:
    """Import ``name`` or raise :class:`MissingDependencyError` naming the install command.

    ``purpose`` completes the sentence "... needs <module>" in the message, e.g. "building TensorRT engines".
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        hint = expand_hint(install or INSTALL_HINTS.get(top, f"`pip install {top}`"))
        what = f"{purpose} needs" if purpose else "needs"
        raise MissingDependencyError(
            f"{what} the Python module '{name}', which cannot be imported ({exc}); install it with {hint}"
        ) from exc
