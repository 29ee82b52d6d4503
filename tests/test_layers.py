"""The package's shape stays: no import cycle (imports inside functions counted), no import up the layers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "modgraph.py"


def _modgraph():
    spec = importlib.util.spec_from_file_location("modgraph", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles():
    mg = _modgraph()
    assert mg.cycles(mg.graph()) == []


def test_every_module_has_a_layer_and_imports_only_downwards():
    mg = _modgraph()
    g = mg.graph()
    for module in g:
        mg.layer_of(module)  # KeyError names a module that no layer claims
    assert mg.upward(g) == []


def test_the_checks_catch_a_cycle_and_an_upward_import():
    mg = _modgraph()
    g = {"vla_export.models.a": {"vla_export.cli.main": 3}, "vla_export.cli.main": {"vla_export.models.a": 1}}
    assert mg.cycles(g) == [["vla_export.cli.main", "vla_export.models.a"]]
    assert mg.upward(g) == [("vla_export.models.a", "vla_export.cli.main", 3)]


def test_the_tools_never_import_each_other():
    mg = _modgraph()
    assert mg.sibling_imports(mg.graph()) == []
    names = [name for name, _ in mg.LAYERS]
    tools = dict(mg.LAYERS)["tools"]
    assert set(tools) == {f"vla_export.{t}" for t in ("export", "verify", "bench", "serve")}
    assert names.count("tools") == 1 and "tools" in mg.SIBLING_LAYERS


def test_the_sibling_check_catches_one_tool_importing_another():
    mg = _modgraph()
    g = {"vla_export.serve.fleet": {"vla_export.bench.targets": 7, "vla_export.runtime.policy": 3}}
    assert mg.sibling_imports(g) == [("vla_export.serve.fleet", "vla_export.bench.targets", 7)]
