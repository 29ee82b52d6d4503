"""One place decides what kind an artifact is: no suffix test on artifact paths outside artifacts/kinds.py.

The scan reads the package's syntax trees: every ``X.endswith(...)`` with a dotted file ending or a
``*SUFFIX*`` constant, every comparison against ``X.suffix`` (or ``X.suffix.lower()``), and every
``startswith`` of the ``preset:`` prefix. Only endings of files that are not artifacts pass.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import vla_export

PACKAGE = Path(vla_export.__file__).parent
#: Where the kind of an artifact is decided (the suffixes) and where ``preset:NAME`` is read (the selector).
HOMES = {"artifacts/kinds.py"}
PRESET_HOMES = {"artifacts/kinds.py", "backends/select.py"}
#: File names that are not artifacts: saved references and reports (.npz, .json), episodes (.h5), plots (.png).
NOT_ARTIFACTS = {".npz", ".json", ".h5", ".hdf5", ".png"}


def _strings_and_names(node: ast.AST) -> tuple[list[str], list[str]]:
    strings, names = [], []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            strings.append(sub.value)
        elif isinstance(sub, ast.Name):
            names.append(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.append(sub.attr)
    return strings, names


def _is_suffix(node: ast.AST) -> bool:
    """``x.suffix`` or ``x.suffix.lower()``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "lower":
        node = node.func.value
    return isinstance(node, ast.Attribute) and node.attr == "suffix"


def _artifact_test(strings: list[str], names: list[str]) -> bool:
    return any(re.match(r"\.[A-Za-z0-9]", s) and s.lower() not in NOT_ARTIFACTS for s in strings) or any("SUFFIX" in n for n in names)


def suffix_tests(source: str, where: str, *, presets: bool = True) -> list[str]:
    """``file:line`` of every suffix test on an artifact path in ``source`` (and of every ``preset:`` prefix test with ``presets``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            strings, names = _strings_and_names(node.args[0])
            if node.func.attr == "endswith" and _artifact_test(strings, names):
                found.append(f"{where}:{node.lineno}")
            if presets and node.func.attr == "startswith" and (any(s.startswith("preset:") for s in strings) or "PRESET_PREFIX" in names):
                found.append(f"{where}:{node.lineno}")
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_suffix(s) for s in sides):
                strings, names = [], []
                for s in sides:
                    if not _is_suffix(s):
                        more = _strings_and_names(s)
                        strings += more[0]
                        names += more[1]
                if _artifact_test(strings, names):
                    found.append(f"{where}:{node.lineno}")
    return found


def test_no_suffix_tests_on_artifact_paths_outside_kinds():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in HOMES:
            found += suffix_tests(path.read_text(), rel, presets=rel not in PRESET_HOMES)
    assert found == [], f"decide the kind with vla_export.artifacts.kinds / backends.select instead: {found}"


def test_the_scan_sees_each_form_of_suffix_test():
    """Each form the rule forbids is found (and the allowed endings are not), so an empty scan means something."""
    forbidden = [
        'p.suffix == ".onnx"', 'p.suffix.lower() in (".engine", ".plan")', 'p.suffix in CHECKPOINT_SUFFIXES',
        'str(p).endswith(".onnx")', 'p.name.endswith(SPLIT_SUFFIX)', 'name.endswith((".engine", ".plan"))',
        'a.startswith(PRESET_PREFIX)', 'a.startswith("preset:")', 'p.suffix != ".pt"',
    ]
    for code in forbidden:
        assert suffix_tests(code, "x.py") == ["x.py:1"], code
    allowed = ['p.suffix == ".npz"', 'p.suffix in (".npz", ".json")', 'p.suffix != ".png"', 'k.endswith("weight")',
               'k.endswith("." + suffix)', 'key.endswith("_seconds")', 'q.suffix in (".h5", ".hdf5")']
    for code in allowed:
        assert suffix_tests(code, "x.py") == [], code
