"""Proof that an ONNX graph holds the whole policy: count weight elements, compare with the model.

An export that silently keeps a stand-in (a head without its backbone, a graph whose weights were
dropped) is the failure this catches: a 3 MB graph for a 1.8B-parameter model must fail loudly.

How it counts, and why it is honest:

* The graph is read with ``load_external_data=False``: only tensor dims are needed, so a 7 GB model
  costs a few MB of memory. Every initializer and every ``Constant`` node tensor (subgraphs
  included) is counted by elements, not bytes (an fp16 export holds the same number).
* Exporters rename, transpose, re-pack and fold weights (the dynamo optimiser stores ``W.T`` of a
  Linear as an anonymous ``val_123``; ONNX LSTM packs ``weight_ih`` of a layer into ``W`` and
  ``bias_ih + bias_hh`` into one ``B``). So tensors are attributed to parameters in two passes:
  by name (a graph name equal to a parameter name, optionally under a wrapper prefix), then by
  element count (a remaining anonymous tensor with exactly the element count of a remaining
  parameter unit; the two LSTM biases of a layer form one unit).
* Exporters store bitwise-identical tensors once (a freshly initialised model has dozens of
  LayerNorm weights that are all ones and biases that are all zeros). The expected count is
  therefore the elements of *distinct* parameter tensors (found by hashing their bytes); a name
  match of one tensor accounts for every parameter identical to it. For a trained model distinct
  and total are practically the same; both are reported.
* Tensors named after the policy's buffers (e.g. Kosmos-2's sinusoidal position table) are not
  parameters and are left out. Anonymous floating-point tensors that match nothing are reported as
  "unattributed": a fused weight (two parameters folded into one tensor) lands there. They count
  towards coverage only up to the parameter elements still unaccounted for, so they can never lift
  coverage above what the graph physically holds.

Coverage = attributed elements / distinct parameter elements; below :data:`MIN_COVERAGE` is an error.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_export.errors import ArtifactError
from vla_export.lazy import lazy_import
from vla_export.models.components import COMPONENTS, OTHER, component_of

MIN_COVERAGE = 0.999
_LSTM_BIAS = re.compile(r"^(?P<pre>.*)\.bias_(ih|hh)_l(?P<layer>\d+)(?P<rev>_reverse)?$")
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True)
class GraphTensor:
    name: str
    numel: int
    floating: bool


@dataclass
class ComponentCoverage:
    parameters: int
    in_graph: int  # attributed by name or element count

    @property
    def coverage(self) -> float:
        return self.in_graph / self.parameters if self.parameters else 1.0


@dataclass
class Completeness:
    """What the graph holds against what the policy has. ``passed`` iff coverage >= ``min_coverage``."""

    parameters: int  # distinct parameter elements: what the graph must hold
    total_parameters: int  # all parameter elements, identical tensors counted each time
    graph_elements: int
    by_name: int
    by_count: int
    unattributed: int
    buffers: int
    other_constants: int
    components: dict[str, ComponentCoverage] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # parameter units found neither by name nor by count
    min_coverage: float = MIN_COVERAGE

    @property
    def attributed(self) -> int:
        return self.by_name + self.by_count + min(self.unattributed, self.parameters - self.by_name - self.by_count)

    @property
    def coverage(self) -> float:
        return self.attributed / self.parameters if self.parameters else 0.0

    @property
    def passed(self) -> bool:
        return self.coverage >= self.min_coverage

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "coverage": self.coverage,
            "min_coverage": self.min_coverage,
            "parameters": self.parameters,
            "total_parameters": self.total_parameters,
            "graph_elements": self.graph_elements,
            "attributed": self.attributed,
            "by_name": self.by_name,
            "by_count": self.by_count,
            "unattributed": self.unattributed,
            "buffers": self.buffers,
            "other_constants": self.other_constants,
            "components": {k: {"parameters": c.parameters, "in_graph": c.in_graph, "coverage": c.coverage} for k, c in self.components.items()},
            "missing": self.missing[:20],
            "missing_count": len(self.missing),
        }

    def summary(self) -> str:
        return (
            f"graph holds {self.attributed:,} of {self.parameters:,} distinct parameter elements ({100 * self.coverage:.2f}%; "
            f"{self.by_name:,} by name, {self.by_count:,} by element count, {self.unattributed:,} unattributed)"
        )


def graph_tensors(path: str | Path) -> list[GraphTensor]:
    """Every initializer and Constant tensor of the ONNX file at ``path`` (weights are not loaded)."""
    onnx = lazy_import("onnx", purpose="checking ONNX graphs")
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: ONNX file not found") from None
    except Exception as exc:  # onnx raises DecodeError and others for foreign files
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return list(_walk_graph(model.graph))


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _walk_graph(graph) -> Iterator[GraphTensor]:
    for t in graph.initializer:
        yield GraphTensor(t.name, _numel(t.dims), t.data_type in _FLOAT_TYPES)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield GraphTensor(node.output[0] if node.output else node.name, _numel(attr.t.dims), attr.t.data_type in _FLOAT_TYPES)
            elif attr.floats and node.op_type == "Constant":
                yield GraphTensor(node.output[0], len(attr.floats), True)
            elif attr.ints and node.op_type == "Constant":
                yield GraphTensor(node.output[0], len(attr.ints), False)
            if attr.HasField("g"):
                yield from _walk_graph(attr.g)
            for sub in attr.graphs:
                yield from _walk_graph(sub)


def _strip_to(name: str, known: Mapping[str, Any]) -> str | None:
    """``name`` or its longest dotted suffix that is a key of ``known`` (undoes wrapper prefixes)."""
    parts = name.split(".")
    for i in range(len(parts)):
        candidate = ".".join(parts[i:])
        if candidate in known:
            return candidate
    return None


def _units(parameters: Mapping[str, int]) -> dict[str, tuple[int, list[str]]]:
    """Parameter units for matching by count: each parameter alone, except an LSTM layer's two biases."""
    units: dict[str, tuple[int, list[str]]] = {}
    for name, numel in parameters.items():
        m = _LSTM_BIAS.match(name)
        key = f"{m['pre']}.bias_l{m['layer']}{m['rev'] or ''}" if m else name
        total, names = units.get(key, (0, []))
        units[key] = (total + numel, names + [name])
    return units


def check_tensors(
    tensors: list[GraphTensor],
    parameters: Mapping[str, int],
    buffers: Mapping[str, int] = {},
    *,
    aliases: Mapping[str, str] = {},
    min_coverage: float = MIN_COVERAGE,
) -> Completeness:
    """Attribute ``tensors`` to ``parameters`` (name -> element count); see the module docstring.

    ``aliases`` maps a parameter to the representative of its group of identical tensors; only
    representatives must be present in the graph.
    """
    rep = {name: aliases.get(name, name) for name in parameters}
    remaining = {r: parameters[r] for r in set(rep.values())}
    distinct = dict(remaining)
    comp_in_graph: dict[str, int] = defaultdict(int)
    by_name = buffer_elems = 0
    anonymous: list[GraphTensor] = []
    for t in tensors:
        pname = _strip_to(t.name, parameters)
        if pname is not None and rep[pname] in remaining and parameters[pname] == t.numel:
            by_name += t.numel
            comp_in_graph[component_of(rep[pname])] += t.numel
            del remaining[rep[pname]]
        elif _strip_to(t.name, buffers) is not None:
            buffer_elems += t.numel
        else:
            anonymous.append(t)

    pool: dict[int, list[GraphTensor]] = defaultdict(list)
    for t in anonymous:
        if t.floating:
            pool[t.numel].append(t)
    by_count = 0
    missing = []
    for unit, (numel, names) in sorted(_units(remaining).items(), key=lambda kv: -kv[1][0]):
        if pool.get(numel):
            pool[numel].pop()
            by_count += numel
            comp_in_graph[component_of(names[0])] += numel
        else:
            missing.append(unit)
    unattributed = sum(t.numel for ts in pool.values() for t in ts)
    other_constants = sum(t.numel for t in anonymous if not t.floating)

    comp_params: dict[str, int] = defaultdict(int)
    for name, numel in distinct.items():
        comp_params[component_of(name)] += numel
    order = [c for c in (*COMPONENTS, OTHER) if comp_params.get(c)]
    return Completeness(
        parameters=sum(distinct.values()),
        total_parameters=sum(parameters.values()),
        graph_elements=sum(t.numel for t in tensors),
        by_name=by_name,
        by_count=by_count,
        unattributed=unattributed,
        buffers=buffer_elems,
        other_constants=other_constants,
        components={c: ComponentCoverage(comp_params[c], comp_in_graph.get(c, 0)) for c in order},
        missing=missing,
        min_coverage=min_coverage,
    )


def policy_counts(module) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """(parameter name -> elements, buffer name -> elements, parameter -> first identical parameter).

    Identity is by shape, dtype and a hash of the bytes (read in place, no copy); shared tensors
    appear once, as in ``named_parameters``.
    """
    import hashlib

    import torch

    params, aliases, first = {}, {}, {}
    for name, p in module.named_parameters():
        params[name] = p.numel()
        if p.device.type == "meta":
            continue
        raw = p.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        key = (tuple(p.shape), str(p.dtype), hashlib.blake2b(memoryview(raw), digest_size=16).hexdigest())
        aliases[name] = first.setdefault(key, name)
    buffers = {n: b.numel() for n, b in module.named_buffers()}
    return params, buffers, aliases


def check_completeness(path: str | Path, module, *, min_coverage: float = MIN_COVERAGE) -> Completeness:
    """Compare the ONNX file at ``path`` with ``module``'s parameters; no weights are loaded."""
    params, buffers, aliases = policy_counts(module)
    return check_tensors(graph_tensors(path), params, buffers, aliases=aliases, min_coverage=min_coverage)


def require_complete(path: str | Path, module, *, min_coverage: float = MIN_COVERAGE) -> Completeness:
    """:func:`check_completeness`, raising :class:`ArtifactError` when coverage is too low."""
    result = check_completeness(path, module, min_coverage=min_coverage)
    if not result.passed:
        worst = sorted(result.components.items(), key=lambda kv: kv[1].in_graph - kv[1].parameters)[:3]
        parts = ", ".join(f"{k} {100 * c.coverage:.1f}%" for k, c in worst)
        raise ArtifactError(
            f"{path}: incomplete export: {result.summary()}, below the required {100 * min_coverage:.1f}% "
            f"(most missing: {parts})"
        )
    return result
