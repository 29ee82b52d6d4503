"""Layer-wise parity: where does an ONNX artifact start to disagree with the PyTorch policy?

``parity`` says *that* an output is off; this says *where*. The dynamo exporter records, on every
ONNX node, the module path it came from (``pkg.torch.onnx.name_scopes``). For each module watched
(component boundaries: vision tower and its layers, projection, each text layer, the text model,
CLIP and its layers, feature projection, LSTM, head; or every module), the tensors its nodes
produce and hand to nodes outside it are that module's outputs in the graph. A copy of the graph
with those tensors marked as outputs runs in ONNX Runtime; PyTorch forward hooks capture the same
modules' outputs; the two are paired by shape (the last such tensor the module produces) and
compared. The report is the per-layer error curve in execution order, the first layer over the
tolerance and the largest jump.

Quantized (Q/DQ) and FP16 graphs keep the exported nodes and their scopes, so they work too.
TensorRT engines would need an engine built with the same marked outputs: not done here.

On a quantized graph the curve is cumulative: every layer inherits the error of all before it, so
the first point over the tolerance is usually the first quantized layer, whatever adds the most.
So for INT8 (W8A8 or weight-only) each point is also measured **alone**: the float ONNX the model
was quantized from (its manifest's ``quantized_from``) with only that point's own INT8 nodes
(those of no deeper compared module) taken from the quantized graph, by the graph surgery of
:func:`vla_export.export.sensitivity.with_float_nodes`. Everything before the point is then float,
so the point sees the reference's own input and its error is what it *adds*; the points are ranked
by the share of their tolerance (``atol + rtol * max|ref|``, :mod:`vla_export.compare.layers`) that error takes, and the report names
the one that adds the most. Both runs use exact Q/DQ
arithmetic (onnxruntime's Q/DQ fusions off), as the parity verdict does.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_export import schemas
from vla_export.artifacts.graph import (
    component_of_onnx_name,
    ensure_node_names,
    node_module_scopes,
    quantized_nodes,
    SCOPE_KEY,
    with_float_nodes,
)
from vla_export.artifacts.kinds import detect_kind
from vla_export.artifacts.manifest import Manifest, read_manifest
from vla_export.artifacts.onnxfile import load_onnx, save_onnx
from vla_export.backends.onnxrt import OnnxrtRunner
from vla_export.choices import Precision, QdqMode
from vla_export.compare.layers import layer_error, share_of_bound
from vla_export.compare.tolerance import Tolerance, tolerance_for
from vla_export.data.episodes import EpisodeSource
from vla_export.data.iospec import ACTIONS, INPUT_NAMES, PIXEL_VALUES
from vla_export.data.source import SyntheticSource
from vla_export.errors import ArtifactError, ConfigError
from vla_export.lazy import lazy_import

SCHEMA = schemas.LOCATE
LEVELS = ("boundaries", "all")
#: Component roots compared at the ``boundaries`` level, besides every ``...layers.N`` module.
BOUNDARY_MODULES = (
    "kosmos_model.vision_model",
    "kosmos_model.image_to_text_projection",
    "kosmos_model.text_model",
    "clip",
    "proj",
    "rnn",
    "action",
)
_LAYER = re.compile(r"\.layers\.\d+$")
#: The smallest relative error the curve's jumps are measured from (float32 rounding), so noise is no jump.
JUMP_FLOOR = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class LayerPoint:
    """One module's output: PyTorch (reference) vs the artifact, over all samples."""

    module: str
    component: str
    onnx_tensor: str
    shape: list[int]  # one sample's
    max_abs: float
    mean_abs: float
    ref_max_abs: float
    rel_err: float  # max_abs / ref_max_abs: comparable across layers of different scale
    cosine: float
    over: bool  # outside the tolerance (max_abs > atol + rtol * ref_max_abs, or cosine < min_cosine)
    #: Quantized graphs: the error of this point with only its own INT8 nodes quantized (everything before it
    #: float): what it adds. {"max_abs", "rel_err", "of_tolerance" (max_abs / (atol + rtol * max|ref|)), "cosine",
    #: "int8_nodes", "int8_modules"}; None when not measured.
    added: dict[str, Any] | None = None


@dataclass
class LocateResult:
    """The per-layer error curve in execution order, and where it goes wrong."""

    artifact: str
    checkpoint: str
    level: str
    precision: str
    tolerance: Tolerance
    samples: int
    points: list[LayerPoint] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # module -> why it was not compared
    #: Quantized graphs: how the error each point adds was measured, or why it was not.
    added_note: str | None = None

    @property
    def first_over(self) -> LayerPoint | None:
        return next((p for p in self.points if p.over), None)

    @property
    def ranking(self) -> list[LayerPoint]:
        """Points measured alone, the one that adds the most error first: by the share of that point's tolerance
        (``atol + rtol * max|ref|``, the rule of the verdict) its error alone takes, then 1 - cosine. A point whose
        output is tiny can have a large relative error that is no error at all at its scale; the share says so."""
        measured = [p for p in self.points if p.added is not None]
        return sorted(measured, key=lambda p: (p.added["of_tolerance"], 1.0 - p.added["cosine"]), reverse=True)

    @property
    def top_adder(self) -> LayerPoint | None:
        ranking = self.ranking
        return ranking[0] if ranking else None

    @property
    def largest_jump(self) -> tuple[LayerPoint, float] | None:
        """The point whose relative error rises most over the worst before it (both floored at float32 eps)."""
        best: tuple[LayerPoint, float] | None = None
        worst_before = JUMP_FLOOR
        for p in self.points:
            factor = max(p.rel_err, JUMP_FLOOR) / worst_before
            if best is None or factor > best[1]:
                best = (p, factor)
            worst_before = max(worst_before, p.rel_err)
        return best

    def summary(self) -> str:
        first, jump, top = self.first_over, self.largest_jump, self.top_adder
        if top is not None:
            a = top.added
            cumulative = (f"first over tolerance (cumulative, inherited downstream): {first.module}" if first is not None
                          else "no layer over tolerance (cumulative)")
            own = a.get("int8_modules") or []
            inside = f" through {', '.join(own[:3])}{' ...' if len(own) > 3 else ''}" if own and own != [top.module] else ""
            return (f"adds the most error: {top.module} ({top.component}){inside}: alone {a['of_tolerance']:.3g}x its tolerance "
                    f"(max abs {a['max_abs']:.3g}, relative {a['rel_err']:.3g}, cosine {a['cosine']:.6f}; {a['int8_nodes']} INT8 nodes "
                    f"of its own); {cumulative}")
        if first is not None:
            return (f"first over tolerance: {first.module} ({first.component}): max abs {first.max_abs:.3g}, "
                    f"relative {first.rel_err:.3g}, cosine {first.cosine:.6f}")
        if jump is not None:
            return f"no layer over tolerance; largest rise of the relative error at {jump[0].module} (x{jump[1]:.3g})"
        return "no layer compared"

    def to_dict(self) -> dict[str, Any]:
        first, jump = self.first_over, self.largest_jump
        return {
            "schema": SCHEMA,
            "artifact": self.artifact,
            "checkpoint": self.checkpoint,
            "level": self.level,
            "precision": self.precision,
            "tolerance": self.tolerance.to_dict(),
            "samples": self.samples,
            "first_over": first.module if first else None,
            "largest_jump": {"module": jump[0].module, "factor": jump[1]} if jump else None,
            "top_adder": self.top_adder.module if self.top_adder else None,
            "ranking_by_added_error": [p.module for p in self.ranking],
            "added_note": self.added_note,
            "summary": self.summary(),
            "points": [asdict(p) for p in self.points],
            "skipped": self.skipped,
        }


# --- the graph side --------------------------------------------------------------------------------

@dataclass
class _GraphScopes:
    root: str  # the wrapper module's attribute the exporter put around the policy ("policy")
    boundary: dict[str, list[tuple[int, str]]]  # torch module -> [(producing node index, tensor)] leaving it


def graph_scopes(model) -> _GraphScopes:
    """For every module, the tensors its nodes produce and hand to nodes outside it (or to graph outputs).

    Nodes without a scope (Q/DQ pairs a quantizer inserted, Casts of the FP16 converter) are
    transparent: a tensor that reaches, through them, only nodes of the same module stays inside it.
    """
    nodes = list(model.graph.node)
    scopes = [node_module_scopes(n) for n in nodes]
    roots = [s[0] for s in scopes if s]
    if not roots:
        raise ArtifactError(
            f"the graph's nodes carry no module scopes ({SCOPE_KEY}): export it with the dynamo exporter "
            "(the default of `vla-export onnx`) to locate layers; torchscript exports have none"
        )
    root = max(set(roots), key=roots.count)
    member = [{x[len(root) + 1:] for x in s if x.startswith(root + ".")} for s in scopes]
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in n.input:
            consumers.setdefault(v, []).append(i)
    graph_outputs = {o.name for o in model.graph.output}
    reach: dict[str, tuple[list[int], bool]] = {}

    def reached(v: str) -> tuple[list[int], bool]:
        """Scoped nodes that use ``v`` directly or through scope-less nodes, and whether it reaches a graph output."""
        if v not in reach:
            reach[v] = ([], False)  # guards against revisiting (graphs are acyclic; this only bounds the work)
            found, out = [], v in graph_outputs
            for u in consumers.get(v, []):
                if scopes[u]:
                    found.append(u)
                    continue
                for w in nodes[u].output:
                    more, more_out = reached(w)
                    found += more
                    out = out or more_out
            reach[v] = (found, out)
        return reach[v]

    boundary: dict[str, list[tuple[int, str]]] = {}
    for i, n in enumerate(nodes):
        for v in n.output:
            if not v or not member[i]:
                continue
            users, to_output = reached(v)
            for module in member[i]:
                if to_output or any(module not in member[u] for u in users):
                    boundary.setdefault(module, []).append((i, v))
    return _GraphScopes(root, boundary)


def _elem_types(onnx, model, tensors: Sequence[str]) -> dict[str, int]:
    """Element types of ``tensors``: recorded value infos, else ONNX shape inference (weights need not be loaded)."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output, *model.graph.input)}
    if any(not types.get(t) for t in tensors):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # onnx raises InferenceError and others
            raise ArtifactError(f"cannot type the intermediate tensors (shape inference failed: {str(exc).splitlines()[0]})") from None
        types |= {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info if v.type.tensor_type.elem_type}
    return types


FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def marked_copy(onnx, model, tensors: Sequence[str], folder: Path, source: Path) -> tuple[Path, list[str]]:
    """Save a copy of ``model`` with the floating-point ``tensors`` as extra graph outputs into ``folder``
    (external data linked, not copied); returns the copy and the tensors marked."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    types = _elem_types(onnx, model, tensors)
    existing = {o.name for o in copy.graph.output}
    marked = [t for t in tensors if types.get(t) in FLOAT_TYPES]
    for name in marked:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    for t in copy.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and not (folder / loc).exists():
                (folder / loc).parent.mkdir(parents=True, exist_ok=True)
                (folder / loc).symlink_to((source.parent / loc).resolve())
    out = folder / "marked.onnx"
    onnx.save(copy, str(out))
    return out, marked


# --- the PyTorch side ------------------------------------------------------------------------------

def _tensors(obj) -> list[Any]:
    """Tensors in a module's output, in order (tensors, tuples, lists, dicts and ModelOutputs)."""
    if hasattr(obj, "detach") and hasattr(obj, "shape"):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def watched_modules(policy, level: str) -> list[str]:
    """Module names to compare: component roots and every ``...layers.N`` (``boundaries``), or every module (``all``)."""
    if level not in LEVELS:
        raise ConfigError(f"locate level must be one of {LEVELS}, got {level!r}")
    names = [n for n, _ in policy.named_modules() if n]
    if level == "all":
        return names
    return [n for n in names if n in BOUNDARY_MODULES or _LAYER.search(n)]


class _Hooks:
    """Forward hooks that keep each watched module's output tensors, in completion order."""

    def __init__(self, policy, names: Sequence[str]):
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.outputs: dict[str, list[np.ndarray]] = {}
        modules = dict(policy.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str):
        def hook(module, args, output) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name not in self.order:
                self.order.append(name)
            self.outputs[name] = [t.detach().float().cpu().numpy() for t in _tensors(output) if t.is_floating_point()]

        return hook

    def reset(self) -> None:
        self.calls.clear()
        self.outputs.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


# --- the comparison --------------------------------------------------------------------------------

def _point(module: str, tensor: str, refs: list[np.ndarray], cands: list[np.ndarray], tol: Tolerance) -> LayerPoint:
    err = layer_error(refs, cands, tol)
    return LayerPoint(module=module, component=component_of_onnx_name(module + "."), onnx_tensor=tensor,
                      shape=list(refs[0].shape[1:]), **dataclasses.asdict(err))


def locate(
    policy_loader,
    artifact: str | Path,
    *,
    level: str = "boundaries",
    samples: int = 2,
    data=None,
    seed: int = 0,
    precision: str | None = None,
    tolerance: Tolerance | None = None,
    providers: Sequence[str] | None = None,
    float_onnx: str | Path | None = None,
) -> LocateResult:
    """Compare the PyTorch policy and the ONNX ``artifact`` module by module on ``samples`` inputs (batch 1).

    For a quantized ``artifact`` each point is also measured alone against ``float_onnx`` (default: the
    ONNX its manifest says it was quantized from), see the module docstring."""
    artifact = Path(artifact)
    kind = detect_kind(artifact, allowed=("onnx", "engine", "checkpoint"))
    if kind != "onnx":
        raise ConfigError(
            f"{artifact}: --locate compares ONNX artifacts (through ONNX Runtime); for a TensorRT engine it would need an "
            "engine built with the same marked outputs, which vla-export does not do (unverified without TensorRT): "
            "locate on the ONNX the engine was built from (its NAME.engine.json records the path)"
        )
    if samples < 1:
        raise ConfigError("locate needs at least one sample")
    onnx = lazy_import("onnx", purpose="locating diverging layers")
    if not artifact.is_file():
        raise ArtifactError(f"{artifact}: not found")
    model = onnx.load(str(artifact), load_external_data=False)
    if [i.name for i in model.graph.input] != list(INPUT_NAMES) or ACTIONS not in {o.name for o in model.graph.output}:
        raise ArtifactError(f"{artifact}: --locate takes a whole-policy graph (inputs {list(INPUT_NAMES)}, output 'actions')")
    try:
        scopes = graph_scopes(model)
    except ArtifactError as exc:
        raise ArtifactError(f"{artifact}: {exc}") from None
    manifest = read_manifest(artifact, required=False)
    precision = precision or (manifest.precision if manifest else None) or Precision.FP32
    tol = tolerance or tolerance_for(precision)

    torch = lazy_import("torch", purpose="running the PyTorch reference")
    loaded = policy_loader()
    policy, cfg = loaded.policy.eval(), loaded.config
    names = watched_modules(policy, level)
    tensors = sorted({v for n in names for _, v in scopes.boundary.get(n, [])})
    result = LocateResult(str(artifact), str(loaded.checkpoint.path), level, precision, tol, samples)

    with tempfile.TemporaryDirectory(prefix="vla-locate-") as tmp:
        try:
            marked, marked_tensors = marked_copy(onnx, model, tensors, Path(tmp), artifact)
        except ArtifactError as exc:
            raise ArtifactError(f"{artifact}: {exc}") from None
        feeds: list[dict[str, np.ndarray]] = []
        with OnnxrtRunner(marked, providers=providers, qdq=QdqMode.EXACT) as cand:
            pv = cand.input_shapes[PIXEL_VALUES]
            window = pv[1] if len(pv) == 5 and isinstance(pv[1], int) else cfg.window
            if data:
                source = EpisodeSource(data, cfg, seed=seed, window=window)
            else:
                source = SyntheticSource(cfg, seed=seed, window=window)
            hooks = _Hooks(policy, names)
            pairs: dict[str, tuple[int, str]] = {}  # module -> (index of its torch output tensor, graph tensor)
            refs: dict[str, list[np.ndarray]] = {}
            cands: dict[str, list[np.ndarray]] = {}
            try:
                for i in range(samples):
                    feed = source.sample(i)
                    feeds.append(feed)
                    hooks.reset()
                    with torch.inference_mode():
                        policy(*(torch.from_numpy(np.ascontiguousarray(feed[k])) for k in INPUT_NAMES))
                    outs = cand.infer(feed)
                    if i == 0:
                        pairs = _pair(names, hooks, scopes, outs, result.skipped)
                    for module, (ti, tensor) in pairs.items():
                        refs.setdefault(module, []).append(hooks.outputs[module][ti])
                        cands.setdefault(module, []).append(np.asarray(outs[tensor]))
            finally:
                hooks.remove()
            order = [n for n in hooks.order if n in pairs]
        result.points = [_point(n, pairs[n][1], refs[n], cands[n], tol) for n in order]
        if quantized_nodes(model):  # a Q/DQ graph (W8A8 or weight-only INT8)
            float_path = Path(float_onnx) if float_onnx else _recorded_float_onnx(artifact, manifest)
            if float_path is None or not float_path.is_file():
                where = f" ({float_path}, from its manifest)" if float_path else ""
                result.added_note = (f"not ranked by the error each layer adds: the float ONNX it was quantized from{where} is not "
                                     "found (pass it with --locate-float FLOAT.onnx); the curve below is cumulative")
            else:
                result.points = _added_errors(artifact, float_path, model, marked_tensors, result.points, scopes, refs, feeds,
                                              Path(tmp), providers, tol)
                result.added_note = (f"each point measured alone: {float_path.name} with only that point's own INT8 nodes "
                                     "quantized (everything before it float), exact Q/DQ arithmetic")
    return result


def _recorded_float_onnx(artifact: Path, manifest: Manifest | None) -> Path | None:
    """The float ONNX the manifest says ``artifact`` was quantized from (as recorded, else beside it)."""
    recorded = ((manifest.extra if manifest else {}).get("quantized_from") or {}).get("path")
    if not recorded:
        return None
    path = Path(recorded)
    if not path.is_file() and (artifact.parent / path.name).is_file():
        return artifact.parent / path.name
    return path


def _owners(model, points: Sequence[LayerPoint], root: str) -> dict[str, list[str]]:
    """Point module -> the quantized nodes it owns: those whose deepest compared module it is."""
    names = {p.module for p in points}
    by_name = {n.name: n for n in model.graph.node}
    owned: dict[str, list[str]] = {}
    for node_name in quantized_nodes(model):
        scopes = {x[len(root) + 1:] for x in node_module_scopes(by_name[node_name]) if x.startswith(root + ".")}
        inside = [m for m in scopes if m in names]
        if inside:
            owned.setdefault(max(inside, key=len), []).append(node_name)
    return owned


def _deepest_module(node, root: str) -> str:
    """The innermost module a node belongs to, without the wrapper's root ("" when it has none)."""
    scopes = [x[len(root) + 1:] for x in node_module_scopes(node) if x.startswith(root + ".")]
    return max(scopes, key=len) if scopes else node.name


def _added_errors(artifact: Path, float_path: Path, model, marked_tensors: Sequence[str], points: list[LayerPoint],
                  scopes: _GraphScopes, refs: Mapping[str, list[np.ndarray]], feeds: Sequence[Mapping[str, np.ndarray]],
                  folder: Path, providers, tol: Tolerance) -> list[LayerPoint]:
    """``points`` with ``added`` filled in: each one measured with only its own INT8 nodes quantized."""
    onnx = lazy_import("onnx", purpose="locating diverging layers")
    float_model = load_onnx(float_path)
    ensure_node_names(float_model)
    qdq = load_onnx(artifact)
    ensure_node_names(qdq)
    every = set(quantized_nodes(qdq))
    foreign = every - {n.name for n in float_model.graph.node}
    if foreign:
        raise ArtifactError(f"{artifact}: {len(foreign)} of its quantized nodes are not in {float_path} (e.g. {sorted(foreign)[0]}): "
                            "not the ONNX it was quantized from; pass that one with --locate-float")
    types = _elem_types(onnx, model, marked_tensors)
    existing = {o.name for o in qdq.graph.output}
    qdq.graph.output.extend(onnx.helper.make_tensor_value_info(t, types[t], None) for t in marked_tensors if t not in existing)
    owned = _owners(qdq, points, scopes.root)
    by_name = {n.name: n for n in qdq.graph.node}
    out = []
    for k, p in enumerate(points):
        nodes = owned.get(p.module)
        if not nodes:
            out.append(p)
            continue
        variant = with_float_nodes(qdq, float_model, every - set(nodes))
        path = folder / f"alone_{k}.onnx"
        save_onnx(variant, path)
        with OnnxrtRunner(path, providers=providers, qdq=QdqMode.EXACT) as runner:
            alone = [np.asarray(runner.infer(dict(feed))[p.onnx_tensor]) for feed in feeds]
        for f in path.parent.glob(f"{path.name}*"):
            f.unlink()
        a = _point(p.module, p.onnx_tensor, refs[p.module], alone, tol)
        where = sorted({_deepest_module(by_name[n], scopes.root) for n in nodes})
        share = share_of_bound(a.max_abs, a.ref_max_abs, tol)
        out.append(dataclasses.replace(p, added={"max_abs": a.max_abs, "rel_err": a.rel_err, "of_tolerance": share, "cosine": a.cosine,
                                                 "int8_nodes": len(nodes), "int8_modules": where}))
    return out


def _pair(names, hooks: _Hooks, scopes: _GraphScopes, outs: Mapping[str, np.ndarray], skipped: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Pair each module's PyTorch output with the graph tensor of the same shape it produces last."""
    pairs: dict[str, tuple[int, str]] = {}
    for n in names:
        calls = hooks.calls.get(n, 0)
        if calls == 0:  # containers (ModuleList) and modules the forward pass does not call
            continue
        if calls > 1:
            skipped[n] = f"called {calls} times per forward pass (ambiguous)"
            continue
        if n not in scopes.boundary:
            skipped[n] = "no graph tensor carries its scope (folded into others by the exporter)"
            continue
        candidates = sorted(scopes.boundary[n], reverse=True)  # last produced first
        found = None
        for ti, ref in enumerate(hooks.outputs[n]):
            for _, v in candidates:
                out = outs.get(v)
                if out is not None and np.issubdtype(np.asarray(out).dtype, np.floating) and tuple(out.shape) == ref.shape:
                    found = (ti, v)
                    break
            if found:
                break
        if found is None:
            skipped[n] = "no graph tensor leaving it has the shape of its PyTorch output"
        else:
            pairs[n] = found
    return pairs
