"""One helper for importing optional heavy modules on first use."""

from __future__ import annotations

import importlib
from types import MappingProxyType, ModuleType

from vla_export.errors import MissingDependencyError

#: How to get each optional module. Read-only: callers pass ``install=`` for anything else.
INSTALL_HINTS = MappingProxyType(
    {
        "tensorrt": "on Jetson: `sudo apt install nvidia-tensorrt` (JetPack 6); on x86, from this checkout: `pip install -e '.[trt]'`",
        "tensorrt_rtx": "from this checkout `pip install -e '.[trt-rtx]'`, or `pip install tensorrt-rtx-cu12==1.7.1.116`",
        "pycuda": "`pip install pycuda` (needs the CUDA toolkit and driver; optional, cuda-python or torch also work)",
        "cuda": "`pip install cuda-python`",
        "polygraphy": "`pip install polygraphy`",
        "onnxruntime": "`pip install onnxruntime` (CPU) or `pip install 'vla-export[gpu]'` (CUDA)",
        "onnxslim": "`pip install 'vla-export[simplify]'`",
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
        hint = install or INSTALL_HINTS.get(top, f"`pip install {top}`")
        what = f"{purpose} needs" if purpose else "needs"
        raise MissingDependencyError(
            f"{what} the Python module '{name}', which cannot be imported ({exc}); install it with {hint}"
        ) from exc
