"""Per-layer INT8 sensitivity and the accuracy-budget search built on it.

A W8A8 Q/DQ model and the float ONNX it came from differ only where DequantizeLinear feeds a MatMul or
Conv. Any mix of the two is made by graph surgery (a node's inputs re-pointed from its DequantizeLinear
back to the float tensors the float model gives it), so no layer is calibrated twice. Each variant
runs in onnxruntime with exact Q/DQ arithmetic (``OnnxrtRunner(qdq="exact")``, the same on every CPU)
on held-out windows and is compared with the float ONNX on the same inputs (which matches PyTorch to
~1e-6, see ``vla-export parity``).

Sensitivity of a unit (one quantized layer, or one transformer block) is the error of the model with
ONLY that unit in INT8: what the unit adds by itself. To bound the cost on a 2-core machine the
``auto`` granularity measures blocks first, then the layers inside the worst blocks.

The budget search keeps the most sensitive units out of INT8, worst first, until the full model meets
the budget on the held-out windows (or none are left).
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vla_export.artifacts.graph import ensure_node_names, node_module_scopes, producers, quantized_nodes, with_float_nodes
from vla_export.artifacts.onnxfile import OnnxFile, load_onnx, needs_external_data, open_onnx, save_onnx, tensor_bytes
from vla_export.data.iospec import ACTIONS, FEATURES
from vla_export.choices import Precision
from vla_export import schemas
from vla_export.backends.onnxrt import EXACT_QDQ_CONFIG
from vla_export.compare.comparator import compare_output
from vla_export.compare.tolerance import tolerance_for
from vla_export.errors import ConfigError, DataError
from vla_export.export.quantize import _publish, precision_sensitive_nodes, quantize_int8
from vla_export.lazy import lazy_import

SCHEMA = schemas.SENSITIVITY
GRANULARITIES = ("layer", "block", "auto")
#: A transformer block in the exporter's module scopes: ``...encoder.layers.3``, ``...model.layers.0``.
BLOCK_SCOPE = re.compile(r"\.layers\.\d+$")


@dataclass(frozen=True)
class Unit:
    """Quantized nodes measured together: one layer (its module path) or one block."""

    name: str
    block: str
    nodes: tuple[str, ...]
    weight_elements: int


@dataclass(frozen=True)
class Errors:
    """A variant's outputs against the float model's on the same windows."""

    actions_max_abs: float
    actions_mean_abs: float
    actions_cosine: float
    features_max_row_rel: float | None = None
    features_cosine: float | None = None
    #: The largest rise, over action dimensions, of the MAE against the recorded actions over the float
    #: model's on the same windows (as ``vla-export evaluate`` measures it); None without recorded actions.
    actions_mae_increase: float | None = None

    def key(self) -> tuple[float, float, float]:
        """Ranking order: actions max abs, then mean abs, then feature error (worse is larger)."""
        return (self.actions_max_abs, self.actions_mean_abs, self.features_max_row_rel or 0.0)


@dataclass(frozen=True)
class Budget:
    """What the quantized model must meet on held-out windows; None means unconstrained."""

    max_action_error: float | None = None  # actions max abs
    min_cosine: float | None = None  # actions cosine
    max_feature_rel_error: float | None = None  # features, worst frame's relative L2 error
    max_mae_increase: float | None = None  # MAE against recorded actions, rise over the float model's, any dimension

    def __post_init__(self) -> None:
        if all(v is None for v in (self.max_action_error, self.min_cosine, self.max_feature_rel_error, self.max_mae_increase)):
            raise ConfigError("an accuracy budget needs at least one of --max-action-error, --min-cosine, --max-feature-rel-error, "
                              "--max-mae-increase")
        if self.min_cosine is not None and not 0 < self.min_cosine <= 1:
            raise ConfigError(f"--min-cosine must be in (0, 1], got {self.min_cosine}")
        for flag, v in (("--max-action-error", self.max_action_error), ("--max-feature-rel-error", self.max_feature_rel_error),
                        ("--min-cosine", self.min_cosine), ("--max-mae-increase", self.max_mae_increase)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{flag} must be a finite number >= 0, got {v}")

    def holds(self, e: Errors) -> bool:
        return ((self.max_action_error is None or e.actions_max_abs <= self.max_action_error)
                and (self.min_cosine is None or e.actions_cosine >= self.min_cosine)
                and (self.max_feature_rel_error is None or e.features_max_row_rel is None
                     or e.features_max_row_rel <= self.max_feature_rel_error)
                and (self.max_mae_increase is None or (e.actions_mae_increase is not None
                                                       and e.actions_mae_increase <= self.max_mae_increase)))


@dataclass
class UnitSensitivity:
    unit: Unit
    errors: Errors  # of the model with only this unit in INT8

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.unit), "nodes": list(self.unit.nodes), **asdict(self.errors)}


@dataclass
class SensitivityResult:
    """The ranking (worst first) and what it was measured on."""

    qdq: str
    reference: str
    windows: int
    granularity: str
    full: Errors  # the whole W8A8 model
    units: list[UnitSensitivity]
    evaluations: int
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "qdq": self.qdq, "reference": self.reference, "windows": self.windows,
            "granularity": self.granularity, "arithmetic": "exact Q/DQ (onnxruntime Q/DQ fusions off)",
            "data": self.data, "full_int8": asdict(self.full), "evaluations": self.evaluations,
            "seconds": round(self.seconds, 2), "ranking": [u.to_dict() for u in self.units],
        }


def units_of(model, granularity: str = "layer") -> list[Unit]:
    """The quantized nodes grouped by layer (module path from the exporter's scopes, else node name) or block."""
    if granularity not in ("layer", "block"):
        raise ConfigError(f"granularity must be layer or block here, got {granularity!r}")
    from onnx import numpy_helper

    by_name = {n.name: n for n in model.graph.node}
    prod = producers(model)
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[str]] = {}
    blocks: dict[str, str] = {}
    elements: dict[str, int] = {}
    for name in quantized_nodes(model):
        node = by_name[name]
        scopes = node_module_scopes(node)
        layer = scopes[-1] if scopes else name  # the innermost module
        block = next((s for s in reversed(scopes) if BLOCK_SCOPE.search(s)), layer.rsplit(".", 1)[0] if "." in layer else layer)
        key = layer if granularity == "layer" else block
        groups.setdefault(key, []).append(name)
        blocks[key] = block
        for i in node.input:
            dq = prod.get(i)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                elements[key] = elements.get(key, 0) + int(np.prod(numpy_helper.to_array(inits[dq.input[0]]).shape))
    return [Unit(k, blocks[k], tuple(v), elements.get(k, 0)) for k, v in groups.items()]


class Evaluator:
    """Runs model variants (exact Q/DQ arithmetic) on fixed feeds against the float model's outputs."""

    def __init__(self, float_model, feeds: Sequence[Mapping[str, np.ndarray]], *, outputs: tuple[str, ...] = (ACTIONS, FEATURES),
                 targets: np.ndarray | None = None):
        """``outputs``: the graph outputs standing for (actions, features); a model that is not a policy
        (e.g. a trained ViT used to measure quantization on realistic weights) names its own.
        ``targets``: the recorded action [N, D] of each feed's window (batch 1), for the MAE-increase
        budget; the compared dimensions are the first min(action_dim, D)."""
        if not feeds:
            raise DataError("sensitivity needs at least one evaluation window")
        self.feeds = list(feeds)
        self.outputs = dict(zip(outputs, (ACTIONS, FEATURES)))
        self.count = 0
        self.reference = self._run(float_model)
        self.count = 0
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float64)
        if self.targets is not None:
            if self.targets.ndim != 2 or len(self.targets) != len(self.reference[ACTIONS]):
                raise DataError(f"{len(self.reference['actions'])} action rows but recorded targets of shape {self.targets.shape}")
            self.dims = min(self.targets.shape[1], self.reference[ACTIONS].shape[1])
            self.reference_mae = self._mae(self.reference[ACTIONS])

    def _mae(self, actions: np.ndarray) -> np.ndarray:
        return np.abs(actions[:, : self.dims].astype(np.float64) - self.targets[:, : self.dims]).mean(axis=0)

    def _run(self, model) -> dict[str, np.ndarray]:
        ort = lazy_import("onnxruntime", purpose="running ONNX models")
        opts = ort.SessionOptions()
        for k, v in EXACT_QDQ_CONFIG.items():
            opts.add_session_config_entry(k, v)
        if needs_external_data(model):  # handed over in memory: one protobuf, which cannot pass 2 GB
            raise ConfigError(f"layer sensitivity runs each model variant from memory, and this one holds "
                              f"{tensor_bytes(model) / 1e9:.2f} GB of tensors, over protobuf's 2 GB limit: quantize it "
                              "without a budget (--int8) and check it with `vla-export parity`")
        session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs() if o.name in self.outputs]
        if not names:
            raise DataError(f"the model has none of the outputs {list(self.outputs)}")
        outs: dict[str, list[np.ndarray]] = {self.outputs[n]: [] for n in names}
        for feed in self.feeds:
            for n, v in zip(names, session.run(names, dict(feed))):
                outs[self.outputs[n]].append(v.reshape(-1, v.shape[-1]))
        self.count += 1
        return {n: np.concatenate(v) for n, v in outs.items()}

    def __call__(self, model) -> Errors:
        out = self._run(model)
        tol = tolerance_for(Precision.INT8)
        a = compare_output(ACTIONS, self.reference[ACTIONS], out[ACTIONS], tol)
        f = compare_output(FEATURES, self.reference[FEATURES], out[FEATURES], tol) if FEATURES in out else None
        rise = None
        if self.targets is not None:
            mae = self._mae(out[ACTIONS])
            rise = float(np.max(mae - self.reference_mae)) if np.isfinite(mae).all() else float("inf")
        return Errors(a.max_abs, a.mean_abs, a.cosine, f.max_row_rel if f else None, f.cosine if f else None, rise)


def _isolated(qdq_model, float_model, all_nodes: Sequence[str], unit: Unit, evaluate: Callable) -> UnitSensitivity:
    others = set(all_nodes) - set(unit.nodes)
    return UnitSensitivity(unit, evaluate(with_float_nodes(qdq_model, float_model, others)))


def layer_sensitivity(
    float_model, qdq_model, feeds: Sequence[Mapping[str, np.ndarray]], *, granularity: str = "auto", refine: int = 2,
    evaluator: Evaluator | None = None, names: tuple[str, str] = ("float", "qdq"),
) -> SensitivityResult:
    """Rank the quantized units of ``qdq_model`` by the error each adds alone (worst first).

    ``granularity``: "layer", "block", or "auto" (blocks, then the layers of the ``refine`` worst blocks
    replace those blocks in the ranking). ``float_model``/``qdq_model`` are ONNX ModelProtos; the Q/DQ
    model must have been quantized from the float one (same node names).
    """
    if granularity not in GRANULARITIES:
        raise ConfigError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    start = time.perf_counter()
    evaluate = evaluator or Evaluator(float_model, feeds)
    all_nodes = quantized_nodes(qdq_model)
    if not all_nodes:
        raise DataError(f"{names[1]}: no quantized layers (no DequantizeLinear feeds a node)")
    full = evaluate(qdq_model)
    first = "layer" if granularity == "layer" else "block"
    ranked = [_isolated(qdq_model, float_model, all_nodes, u, evaluate) for u in units_of(qdq_model, first)]
    ranked.sort(key=lambda s: s.errors.key(), reverse=True)
    if granularity == "auto":
        layers = {u.name: u for u in units_of(qdq_model, "layer")}
        worst = {s.unit.name for s in ranked[:refine] if len(s.unit.nodes) > 1}
        refined = [_isolated(qdq_model, float_model, all_nodes, u, evaluate) for u in layers.values() if u.block in worst]
        ranked = [s for s in ranked if s.unit.name not in worst] + refined
        ranked.sort(key=lambda s: s.errors.key(), reverse=True)
    return SensitivityResult(names[1], names[0], len(evaluate.feeds), granularity, full, ranked, evaluate.count,
                             time.perf_counter() - start)


@dataclass
class BudgetSearch:
    """Which units the budget search kept out of INT8, and the errors after each step."""

    budget: Budget
    met: bool
    kept_float: list[str]  # unit names, in the order they were taken out of INT8
    steps: list[dict[str, Any]]
    final: Errors
    float_nodes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"budget": asdict(self.budget), "met": self.met, "kept_float": self.kept_float, "steps": self.steps,
                "final": asdict(self.final), "float_nodes": self.float_nodes}


def budget_search(float_model, qdq_model, sensitivity: SensitivityResult, budget: Budget, evaluate: Evaluator):
    """Take units out of INT8, most sensitive first, until ``budget`` holds; returns (model, BudgetSearch)."""
    steps = [{"kept_float": [], **asdict(sensitivity.full), "holds": budget.holds(sensitivity.full)}]
    current, taken, nodes = sensitivity.full, [], []
    model = qdq_model
    for s in sensitivity.units:
        if budget.holds(current):
            break
        taken.append(s.unit.name)
        nodes += list(s.unit.nodes)
        model = with_float_nodes(qdq_model, float_model, nodes)
        current = evaluate(model)
        steps.append({"kept_float": list(taken), **asdict(current), "holds": budget.holds(current)})
    return model, BudgetSearch(budget, budget.holds(current), taken, steps, current, nodes)


def held_out_feeds(episodes, config, calib_frames: Mapping[str, Sequence[int]] | None, *, count: int, window: int,
                   seed: int = 1, option: str = "--samples", at_most: bool = False) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """``count`` distinct windows of ``episodes`` sharing no frame with ``calib_frames``, and a record of them.

    A ConfigError naming ``option`` when the episodes hold fewer distinct such windows than ``count`` (the
    same window twice would only repeat an evaluation: 1000 asked of 18 ran for minutes); a DataError when
    they leave no such window at all (pass other episodes for evaluation). With ``at_most``, ``count`` is an upper
    bound instead (all the distinct windows when there are fewer). The record's ``recorded_actions`` are
    the actions recorded at each window's last frame, in the order of the feeds."""
    from vla_export.data.episodes import EpisodeSource

    if count < 1:
        raise ConfigError(f"the evaluation needs at least one window, got {count}")
    source = EpisodeSource(episodes, config, seed=seed, window=window, exclude_frames=calib_frames or {})
    candidates = len(source.allowed_windows or [])
    if at_most:
        count = min(count, candidates)
    if count > candidates:
        raise ConfigError(
            f"{option} {count}: the episodes hold only {candidates} distinct windows of {window} frames"
            f"{' sharing no frame with the calibration set' if calib_frames else ''}; pass {option} {candidates} or fewer, "
            "or more episodes with --data"
        )
    chosen, seen, index, actions = [], set(), 0, []
    while len(chosen) < count:  # seeded draws, each window once (a draw of one already taken is skipped)
        ref = source.locate(index)[0]
        if (ref.episode, ref.frames) not in seen:
            seen.add((ref.episode, ref.frames))
            chosen.append(index)
            actions.append(list(ref.action))
        index += 1
    feeds = [source.sample(i) for i in chosen]
    record = {"episodes": [e.path.name for e in source.episodes], "windows": count, "seed": seed,
              "disjoint_from_calibration": calib_frames is not None, "candidate_windows": candidates, "distinct": True,
              "recorded_actions": actions}
    return feeds, record


def eval_feeds(onnx: str | Path | OnnxFile, data: Sequence[Path] | None, calib_frames: Mapping[str, Sequence[int]] | None,
               samples: int, *, calib_meta: Mapping[str, Any] | None = None, option: str = "--samples",
               at_most: bool = False) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Held-out windows for ``onnx``'s policy: from ``data``, else the calibration set's own episodes (the
    windows of ``calib_meta``, the set's meta, name the episode files it sampled), in both cases disjoint
    from ``calib_frames``. Config and window come from the ONNX manifest; returns :func:`held_out_feeds`'s
    feeds and record."""
    from vla_export.artifacts.manifest import read_manifest

    manifest = onnx.require_manifest("onnx") if isinstance(onnx, OnnxFile) else read_manifest(onnx, kind="onnx")
    if manifest.config is None:
        raise ConfigError(f"{onnx.path if isinstance(onnx, OnnxFile) else onnx}: its manifest records no policy config")
    config = manifest.config
    window = manifest.window or config.window
    if not data:
        episodes = sorted({w["episode"] for w in (calib_meta or {}).get("windows", [])})
        if not episodes:
            raise ConfigError("give --data EPISODES to evaluate on (held-out windows)")
        data = [Path(e) for e in episodes]
    try:
        return held_out_feeds(list(data), config, calib_frames, count=samples, window=window, option=option, at_most=at_most)
    except DataError as exc:
        raise DataError(f"{exc}; pass --data with episodes the calibration set did not use") from None


def _weight_elements(model) -> int:
    from onnx import TensorProto

    return sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == TensorProto.FLOAT)


def quantize_int8_with_budget(
    onnx_path: str | Path | OnnxFile, calib, output, budget: Budget, feeds: Sequence[Mapping[str, np.ndarray]], *, data: Mapping[str, Any] | None = None,
    granularity: str = "auto", refine: int = 2, targets: np.ndarray | None = None, **quantize_options: Any,
):
    """W8A8 Q/DQ as :func:`~vla_export.export.quantize.quantize_int8`, then the most sensitive units kept
    out of INT8 until ``budget`` holds on ``feeds`` (held-out windows). The manifest records the ranking,
    which units are INT8 and which not and why, the measured errors and the share of weight elements
    left in INT8. Returns ``(QuantizeResult, BudgetSearch, SensitivityResult)``; the model is written
    whether or not the budget was met (``BudgetSearch.met`` says).

    ``targets``: the recorded action of each window, for ``budget.max_mae_increase`` (MAE per dimension against
    them, its rise over the float ONNX's, which equals the checkpoint's within fp32 parity); the manifest then
    also records whether those windows can tell a collapsed model apart
    (:func:`vla_export.verify.evaluate.discrimination`).

    ``onnx_path``: a path, or the :class:`OnnxFile` opened for the command (read once: the float model and
    the full W8A8 pass both come from it)."""
    start = time.perf_counter()
    source, output = open_onnx(onnx_path), Path(output)
    float_model = source.model()
    ensure_node_names(float_model)
    if budget.max_mae_increase is not None and targets is None:
        raise ConfigError("--max-mae-increase needs the recorded actions of the evaluation windows")
    evaluate = Evaluator(float_model, feeds, targets=targets)
    with tempfile.TemporaryDirectory(prefix="vla-budget-") as work:
        # a copy: quantize_int8 hands its model on to onnxruntime's file and releases it
        full = quantize_int8(source.copy(), calib, Path(work) / "full.int8.onnx", **quantize_options)
        qdq = load_onnx(full.output)
    sens = layer_sensitivity(float_model, qdq, feeds, granularity=granularity, refine=refine, evaluator=evaluate,
                             names=(str(source.path), "W8A8"))
    sens.data = dict(data or {})
    model, search = budget_search(float_model, qdq, sens, budget, evaluate)
    total = _weight_elements(float_model)
    out_units = set(search.kept_float)
    int8_elements = sum(s.unit.weight_elements for s in sens.units if s.unit.name not in out_units)
    reasons = precision_sensitive_nodes(float_model) if quantize_options.get("keep_sensitive_fp32", True) else {}
    reasons.update({n: "user" for n in quantize_options.get("exclude", ())})
    reasons.update({n: "budget" for n in search.float_nodes})
    options = dict(full.options) | {
        "budget": search.to_dict(),
        "held_out": sens.data,
        "layers": {
            Precision.INT8: [s.unit.name for s in sens.units if s.unit.name not in out_units],
            "float": {name: "kept out by the accuracy budget (most sensitive first)" for name in search.kept_float},
        },
        "int8_share_of_weight_elements": int8_elements / total if total else 0.0,
        "int8_share_before_budget": sum(s.unit.weight_elements for s in sens.units) / total if total else 0.0,
        "sensitivity": sens.to_dict(),
    }
    if evaluate.targets is not None:
        from vla_export.compare.actions import dim_names, discrimination

        d = evaluate.dims
        options["mae_discrimination"] = discrimination(evaluate.reference[ACTIONS][:, :d], evaluate.targets[:, :d], dim_names(d),
                                                       budget.max_mae_increase)
    external = needs_external_data(model, source.external)
    result = _publish(source, output, Precision.INT8, lambda tmp: save_onnx(model, tmp, external=external), reasons, options, start)
    return result, search, sens
