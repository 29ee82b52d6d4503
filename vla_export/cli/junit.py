"""JUnit XML for the checking commands (parity, replay, vla-bench's floor check).

CI systems (GitHub Actions, GitLab, Jenkins) read this format natively, so a parity regression
shows up as a failed test case with its reason rather than only as a non-zero exit.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_export import schemas
from vla_export.cli.common import STDOUT, console, write_json, wrote
from vla_export.fileio import atomic_write


@dataclass(frozen=True)
class Case:
    """One checked thing: an output of a parity run, a replay step, a benchmark row."""

    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0
    details: str = ""


def write_reports(report: dict[str, Any], json_path: Path | None, junit: Path | None, *, suite: str,
                  cases: Callable[[dict[str, Any]], list[Case]], classname: str, schema: str = schemas.REPORT) -> None:
    """A checking command's ``--json`` report (``schema`` unless it names its own) and
    ``--junit`` XML (``cases(report)``), each where asked, each said."""
    if json_path:
        write_json(json_path, report, schema)
        wrote(json_path)
    if junit:
        write_junit(junit, suite, cases(report), classname=classname)
        wrote(junit)


def write_junit(path: str | Path, suite: str, cases: list[Case], classname: str) -> Path:
    """Write one ``<testsuite>`` with a ``<testcase>`` per case, atomically; ``-`` writes it to standard output."""
    failures = sum(not c.passed for c in cases)
    root = ET.Element("testsuites", name="vla-export", tests=str(len(cases)), failures=str(failures))
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures), errors="0",
                         time=f"{sum(c.seconds for c in cases):.3f}")
    for c in cases:
        case = ET.SubElement(node, "testcase", name=c.name, classname=classname, time=f"{c.seconds:.3f}")
        if not c.passed:
            fail = ET.SubElement(case, "failure", message=c.message, type="CheckFailed")
            fail.text = c.details or c.message
        elif c.details:
            ET.SubElement(case, "system-out").text = c.details
    ET.indent(root)
    data = ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
    if str(path) == STDOUT:  # the human-readable output went to standard error (see cli.common._streams)
        stream = console.report_file or sys.stdout
        stream.write(data)
        stream.flush()
        return Path(STDOUT)
    return atomic_write(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))


def parity_cases(report: dict) -> list[Case]:
    """One case per compared output, failing with the numbers that failed it."""
    tol = report["tolerance"]
    cases = []
    for o in report["outputs"].values():
        summary = (f"max abs {o['max_abs']:.3g}, mean abs {o['mean_abs']:.3g}, cosine {o['cosine']:.6f}, "
                   f"{o['violations']} elements out of tolerance (atol {tol['atol']:g}, rtol {tol['rtol']:g}, cosine >= {tol['min_cosine']:g})")
        cases.append(Case(name=o["name"], passed=bool(o["passed"]), message=f"{o['name']}: {summary}", details=summary))
    return cases


def replay_cases(report: dict) -> list[Case]:
    """One case per control step of the episode."""
    atol = report["atol"]
    return [
        Case(name=f"step {s['index']:04d}", passed=bool(s["max_abs_err"] <= atol), seconds=s["latency_ms"] / 1000,
             message=f"step {s['index']}: max abs action error {s['max_abs_err']:.3g} > atol {atol:g}")
        for s in report["steps"]
    ]


def bench_cases(report: dict) -> list[Case]:
    """One case per benchmark row: a valid measurement (finite outputs, not below the physical floor)."""
    cases = []
    for r in report["results"]:
        why = "outputs are not finite" if not r["outputs_finite"] else "faster than the physical floor: not the full model"
        p50 = {m: v["latency"]["p50_ms"] for m, v in r["modes"].items() if v.get("latency")}
        cases.append(Case(name=r["label"], passed=bool(r["valid"]), message=f"{r['label']}: {why}",
                          details=", ".join(f"{m} p50 {ms:.3f} ms" for m, ms in p50.items())))
    return cases


def evaluate_cases(report: dict) -> list[Case]:
    """One case per artifact and action dimension (its MAE against the gate), and one for the honesty rule.

    The rule's case fails only under ``--strict``; otherwise an inconclusive evaluation passes with the reason
    in its output, as the command's own verdict does."""
    gate = report["gate"]["max_mae_increase"]
    cases = []
    for a in report["artifacts"]:
        change = a["change"]
        for dim in report["dims"]:
            mae = a["mae"][dim]
            text = "non-finite" if mae is None else f"{mae:.4g}"
            if change is None:
                cases.append(Case(name=f"{a['label']} [{dim}]", passed=not a["nonfinite"], message=f"{a['label']}: {a['nonfinite']} non-finite actions",
                                  details=f"MAE {text} (the reference)"))
                continue
            rise = change["mae"][dim]
            over = dim in ((a["gate"] or {}).get("over") or [])
            details = f"MAE {text}, change {'n/a' if rise is None else f'{rise:+.4g}'}" + (f" (gate {gate:g})" if gate is not None else "")
            cases.append(Case(name=f"{a['label']} [{dim}]", passed=not over and not a["nonfinite"],
                              message=f"{a['label']} {dim}: " + (f"{a['nonfinite']} non-finite actions" if a["nonfinite"] else
                                                                 f"MAE rises by more than {gate:g}: {details}"), details=details))
    disc = report["discrimination"]
    why = "; ".join(f"{n}: {v['why']}" for n, v in disc["dims"].items())
    cases.append(Case(name="discrimination", passed=disc["conclusive"] or not report["strict"],
                      message=f"inconclusive (--strict): {why}", details=("conclusive" if disc["conclusive"] else "inconclusive") + f": {why}"))
    return cases
