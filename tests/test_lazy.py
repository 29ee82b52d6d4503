"""Optional GPU stacks are never imported at module import time."""

import pkgutil
import subprocess
import sys

import pytest

import vla_export
from vla_export.errors import MissingDependencyError
from vla_export.lazy import lazy_import

BLOCKED = ["tensorrt", "pycuda", "polygraphy", "onnxruntime", "cuda", "onnxslim"]
BLOCK = f"import sys\nfor m in {BLOCKED!r}: sys.modules[m] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=300)


def test_import_and_help_without_optional_stacks():
    r = _run(
        "import vla_export\n"
        "from vla_export.cli.main import app, main\n"
        "from vla_export.cli import bench\n"
        "sys.argv = ['vla-export', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "sys.argv = ['vla-bench', '--help']\n"
        "try:\n    bench.main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert not any(m in sys.modules and sys.modules[m] is not None for m in " + repr(BLOCKED) + ")\n"
    )
    assert r.returncode == 0, r.stderr
    assert "inspect" in r.stdout


def test_every_module_imports_without_optional_stacks():
    names = [m.name for m in pkgutil.walk_packages(vla_export.__path__, "vla_export.")]
    r = _run("import importlib\nfor n in " + repr(names) + ":\n    importlib.import_module(n)\n")
    assert r.returncode == 0, r.stderr


def test_missing_dependency_error_names_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"building engines needs the Python module 'tensorrt'.*apt install.*pip install"):
        lazy_import("tensorrt", purpose="building engines")


def test_cli_reports_missing_dependency_in_one_line():
    r = subprocess.run(
        [sys.executable, "-c", BLOCK + "from vla_export.lazy import lazy_import\n"
         "from vla_export.cli.common import run_app, new_app\n"
         "app = new_app('t')\n@app.command()\ndef go():\n    lazy_import('polygraphy', purpose='go')\n"
         "@app.command()\ndef other():\n    pass\n"
         "sys.exit(run_app(app, ['go']))\n"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 3  # ExitCode.ENVIRONMENT: this machine lacks something, the input is fine
    assert r.stderr.strip().startswith("error: go needs the Python module 'polygraphy'") and "pip install polygraphy" in r.stderr
    assert "Traceback" not in r.stderr


def test_install_hints_name_a_command_that_works_from_the_checkout():
    """vla-export is not on an index: `pip install 'vla-export[trt]'` fails, the checkout's folder works."""
    import re
    from pathlib import Path

    from vla_export.lazy import INSTALL_HINTS, expand_hint, extra_install

    root = Path(vla_export.__file__).resolve().parent.parent
    for hint in (expand_hint(INSTALL_HINTS["tensorrt"]), expand_hint(INSTALL_HINTS["onnxslim"]), extra_install("plot")):
        assert "'vla-export[" not in hint, hint
        target = re.search(r"pip install -e '([^']+)\[(\w+)\]'", hint)
        assert target and Path(target.group(1)) == root and (root / "pyproject.toml").is_file(), hint
    assert "'tensorrt<11,>=10'" in extra_install("trt")  # the extra's own packages, from the installed metadata


def test_importing_reads_no_package_metadata(monkeypatch):
    """The hints are expanded when an import fails, not when vla_export.lazy or vla_export.plots is imported."""
    import importlib
    import importlib.metadata

    import vla_export.lazy
    import vla_export.plots

    calls = []
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: calls.append(name) or [])
    importlib.reload(vla_export.lazy)
    importlib.reload(vla_export.plots)
    assert calls == []
    with pytest.raises(MissingDependencyError, match=r"pip install -e '.*\[plot\]'"):
        vla_export.lazy.lazy_import("no_such_module_xyz", install=vla_export.plots.INSTALL)
    assert calls == ["vla-export"]
