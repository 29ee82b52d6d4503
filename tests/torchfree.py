"""Run Python code in a fresh interpreter where ``import torch`` fails, as on a robot without PyTorch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

#: Prepended to the code: a meta-path finder that refuses torch (and so transformers, which needs it).
NO_TORCH = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, _Block())
"""


def run_without_torch(code: str, *, timeout: float = 180, cwd=None) -> subprocess.CompletedProcess:
    """Run ``code`` with torch unimportable; the code must also end with torch absent from sys.modules."""
    body = NO_TORCH + textwrap.dedent(code) + "\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    return subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=timeout, cwd=cwd)


TORCH_IMPORTED = 99  # the exit code when a command ran but imported torch


def cli_without_torch(*args: str, app: str = "main", timeout: float = 180, cwd=None) -> subprocess.CompletedProcess:
    """``vla-export ARGS`` (or ``vla-bench`` with app='bench') in a subprocess with torch unimportable."""
    module = "vla_export.cli.bench" if app == "bench" else "vla_export.cli.main"
    code = f"""
    from vla_export.cli.common import run_app
    from {module} import app
    code = run_app(app, {[str(a) for a in args]!r})
    if 'torch' in sys.modules:
        print('torch was imported', file=sys.stderr)
        sys.exit(TORCH_IMPORTED)
    sys.exit(code)
    """
    return run_without_torch(code.replace("TORCH_IMPORTED", str(TORCH_IMPORTED)), timeout=timeout, cwd=cwd)
