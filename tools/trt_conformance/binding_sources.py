"""Qualified names (``Class.member``) the TensorRT Python bindings define, from their sources at a tag.

Usage: python tools/trt_conformance/binding_sources.py TENSORRT_GIT_DIR TAG OUT.qualified
Reads github:NVIDIA/TensorRT ``python/src/**/*.cpp`` at TAG: ``py::class_<...>(m, "Name"`` and ``py::enum_<...>(m, "Name"`` (or ``{m, "Name"``,
or ``(parentBinding, "Name"`` for a nested enum, also recorded as ``Parent.Name``) open a class; ``.def("x"``, ``.def_property("x"``, ``.def_readwrite("x"``, ``.value("x"`` ... add members to the class
open last; ``m.def("x"`` and ``m.attr("x")`` are module-level (``tensorrt.x``). Complements the wheel strings, which
cannot say which class a name belongs to (BuilderFlag.INT8 is gone in 11, DataType.INT8 is not).
"""

from __future__ import annotations

import re
import subprocess
import sys

OPEN = re.compile(r'py::(?:class_|enum_)<[^;]*?>\s*(\w+)?\s*[({]\s*(\w+)\s*,\s*"(\w+)"', re.S)
MEMBER = re.compile(r'\.(?:def|def_static|def_property|def_property_readonly|def_readwrite|def_readonly|value)\s*\(\s*"(\w+)"')
MODULE = re.compile(r'\bm\.(?:def|attr)\s*\(\s*"(\w+)"')


def names(source: str) -> set[str]:
    found: set[str] = set()
    events = [(m.start(), "open", m.groups()) for m in OPEN.finditer(source)]
    events += [(m.start(), "member", m.group(1)) for m in MEMBER.finditer(source)]
    events += [(m.start(), "module", m.group(1)) for m in MODULE.finditer(source)]
    current = None
    binding_vars: dict[str, str] = {}  # `py::class_<ILogger> baseLoggerBinding{m, "ILogger"}` -> nested enums of it
    for _, kind, name in sorted(events, key=lambda e: e[0]):
        if kind == "open":
            var, parent, cls = name
            if var:
                binding_vars[var] = cls
            if parent in binding_vars:
                found.add(f"{binding_vars[parent]}.{cls}")
            current = cls
            found.add(cls)
        elif kind == "module":
            found.add(name)
        elif current:
            found.add(f"{current}.{name}")
    return found


def main(repo: str, tag: str, out: str) -> None:
    files = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", tag, "python/src"], capture_output=True, text=True, check=True).stdout.split()
    found: set[str] = set()
    for f in files:
        if f.endswith(".cpp"):
            found |= names(subprocess.run(["git", "-C", repo, "show", f"{tag}:{f}"], capture_output=True, text=True, check=True).stdout)
    commit = subprocess.run(["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], capture_output=True, text=True, check=True).stdout.strip()
    with open(out, "w") as fh:
        fh.write(f"# github:NVIDIA/TensorRT {tag} = commit {commit}, python/src/**/*.cpp\n")
        fh.write(f"# made by: python tools/trt_conformance/binding_sources.py TensorRT {tag} {out.rsplit('/', 1)[-1]}\n")
        fh.write("".join(f"{n}\n" for n in sorted(found)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
