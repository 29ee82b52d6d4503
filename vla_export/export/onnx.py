"""PyTorch -> ONNX, atomically: any module (:func:`export_module`) and the whole policy (:func:`export_policy`).

The low-level :func:`export_module` knows nothing about policies, so other parts (a backbone or a
head exported on its own) use it too. The policy-level export adds everything that makes the result
trustworthy: checker and shape inference by path, the completeness proof, an ONNX Runtime run at
batch 1 and 3 with parity against PyTorch, optional onnxslim simplification (re-checked), and a
manifest. All of that happens in a temporary directory beside the target; only a fully verified
export is moved into place, the ``.onnx`` last, so a failure leaves nothing that looks finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_export import interrupts
from vla_export.artifacts.kinds import is_kind
from vla_export.artifacts.onnxfile import check_model, data_file, io_signature, op_counts, written_opset
from vla_export.choices import Exporter, Precision
from vla_export.errors import ArtifactError, ConfigError
from vla_export.fileio import check_output_path, staging_dir
from vla_export.lazy import lazy_import
from vla_export.models.finite import require_finite_weights
from vla_export.models.memory import check_window_memory
from vla_export.progress import reported, step

log = logging.getLogger(__name__)

EXPORTERS = Exporter.values()
DEFAULT_OPSET = 18
TWO_GB = 2**31 - 1  # protobuf's hard limit for one serialised message
MANIFEST_KIND = "onnx"
#: Exported with this batch: dynamo given batch 1 silently specialises the batch axis to 1.
EXPORT_BATCH = 2


def _module_bytes(module) -> int:
    seen, total = set(), 0
    for t in (*module.parameters(), *module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _dynamo_shapes(example_inputs: Mapping[str, Any], dynamic: Mapping[str, Mapping[int, str]]):
    """{input: {axis: name}} -> torch.export.Dim specs, one Dim per name (shared names tie axes together)."""
    import torch

    dims: dict[str, Any] = {}
    # A tuple in input order: a dict would have to use the forward's parameter names, not the graph's.
    return tuple(
        {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in dynamic.get(name, {}).items()} or None
        for name in example_inputs
    )


#: The opsets each exporter can write (torch 2.13): the dynamo exporter builds opset 18 and converts
#: upwards only; the legacy exporter covers 7 to 20. A requested opset is also compared with the one
#: the written file declares, so another torch that cannot honour it is refused too.
OPSET_RANGE = {Exporter.DYNAMO: (18, 23), Exporter.TORCHSCRIPT: (7, 20)}


def check_opset(opset: int, exporter: str) -> None:
    """Refuse, before any work, an exporter or opset the export cannot honour."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    low, high = OPSET_RANGE[exporter]
    if not low <= opset <= high:
        other = [e for e, (lo, hi) in OPSET_RANGE.items() if e != exporter and lo <= opset <= hi]
        hint = f", or use --exporter {other[0]}" if other else ""
        raise ConfigError(f"--opset {opset}: the {exporter} exporter writes opsets {low} to {high}; choose one of those{hint}")


@reported("exporting to ONNX and verifying")
def export_module(
    module,
    example_inputs: Mapping[str, Any],
    path: str | Path,
    *,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = Exporter.DYNAMO,
    external_data: bool | None = None,
    optimize: bool = True,
) -> Path:
    """Export ``module`` (called with ``example_inputs`` as positional arguments, in order) to ``path``.

    ``dynamic_axes`` maps input and output names to ``{axis: dim name}``; a name shared by several
    axes makes them one dimension. ``external_data``: ``None`` puts the weights in ONE file
    ``path.data`` beside the model when they exceed 2 GB, ``True`` always, ``False`` never.
    The export is staged in a temporary directory and moved into place whole. The policy exports
    (:func:`export_policy`, :func:`~vla_export.export.split.export_split`) run the same steps
    (:func:`check_target`, :func:`stage_module`, their checks, :func:`move_into_place`) one by one.
    """
    path = check_target(path, opset, exporter)
    with staging_dir(path) as tmpdir:
        tmp = tmpdir / path.name
        stage_module(module, example_inputs, tmp, output_names=output_names, dynamic_axes=dynamic_axes, opset=opset,
                     exporter=exporter, external_data=external_data, optimize=optimize)
        move_into_place(tmp, path, [])
    return path


def check_target(path: str | Path, opset: int, exporter: str) -> Path:
    """The checks of an export's target that need no work: exporter, opset, a writable ``.onnx`` path."""
    check_opset(opset, exporter)
    path = check_output_path(path)
    if not is_kind(path, "onnx"):
        raise ConfigError(f"{path}: the output must end in .onnx")
    return path


def stage_module(
    module,
    example_inputs: Mapping[str, Any],
    tmp: Path,
    *,
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = Exporter.DYNAMO,
    external_data: bool | None = None,
    optimize: bool = True,
) -> None:
    """Export ``module`` to ``tmp``, alone in a fresh staging folder; publish nothing.

    Raises :class:`ArtifactError` when the exporter wrote other files than expected, fixed a dynamic
    axis, or wrote another opset than ``opset``. The caller checks the staged file next
    (:func:`static_checks`, parity) and moves it into place (:func:`move_into_place`).
    """
    import torch

    check_opset(opset, exporter)
    dynamic_axes = dict(dynamic_axes or {})
    if external_data is None:
        external_data = _module_bytes(module) > TWO_GB
    tmpdir = tmp.parent
    args = tuple(example_inputs.values())
    with torch.no_grad():
        if exporter == Exporter.DYNAMO:
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=list(example_inputs), output_names=list(output_names),
                dynamic_shapes=_dynamo_shapes(example_inputs, dynamic_axes), opset_version=opset, optimize=optimize,
            )
            program.save(str(tmp), external_data=external_data)
            del program
        else:
            _export_torchscript(module, args, tmp, list(example_inputs), list(output_names), dynamic_axes, opset, external_data)
    made = sorted(p.name for p in tmpdir.iterdir())
    allowed = [tmp.name] + ([data_file(tmp).name] if external_data else [])
    if tmp.name not in made or set(made) - set(allowed):
        raise ArtifactError(f"{tmp.name}: the exporter wrote {made}, expected {allowed}")
    got = written_opset(tmp)
    if got != opset:
        raise ArtifactError(f"{tmp.name}: asked for opset {opset}, the {exporter} exporter wrote opset {got}; use --opset {got}")
    _check_dynamic_axes(tmp, dynamic_axes)


def _check_dynamic_axes(path: Path, dynamic_axes: Mapping[str, Mapping[int, str]]) -> None:
    """Every axis asked to be dynamic is symbolic in the graph.

    torch.onnx "refines" a dynamic axis that the trace specialised into a constant, without an
    error. With torch 2.13 this happens to the LSTM's window axis when an earlier export ran in the
    same process (the first export of a process keeps it dynamic).
    """
    shapes = {v["name"]: v["shape"] for v in io_signature(path)["inputs"] + io_signature(path)["outputs"]}
    for name, axes in dynamic_axes.items():
        for axis, dim in axes.items():
            got = shapes.get(name, [])[axis] if axis < len(shapes.get(name, [])) else None
            if isinstance(got, int):
                raise ArtifactError(
                    f"{path.name}: the exporter fixed the dynamic axis '{dim}' of '{name}' at {got} (dynamo does this to an "
                    "LSTM's window after an earlier export in the same process: export in a fresh process or with "
                    "--exporter torchscript)"
                )


def _export_torchscript(module, args, tmp: Path, input_names, output_names, dynamic_axes, opset, external_data) -> None:
    """The legacy exporter; its per-tensor external files are consolidated into one ``.data`` file."""
    import torch

    onnx = lazy_import("onnx", purpose="exporting ONNX models")
    scratch = tmp.parent / "torchscript"
    scratch.mkdir()
    raw = scratch / tmp.name
    torch.onnx.export(
        module, args, str(raw), dynamo=False, input_names=input_names, output_names=output_names,
        dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()}, opset_version=opset, do_constant_folding=True,
    )
    model = onnx.load(str(raw))  # loads any external tensors the exporter split out
    onnx.save_model(model, str(tmp), save_as_external_data=external_data, all_tensors_to_one_file=True,
                    location=data_file(tmp).name)
    del model
    shutil.rmtree(scratch)


def move_into_place(tmp: Path, path: Path, extras: Sequence[Path]) -> None:
    """Publish a staged export: the old model first goes, then data, extras (manifest), the ``.onnx`` last.

    Not after Ctrl-C or SIGTERM, and not cut in the middle by one (see :mod:`vla_export.interrupts`)."""
    with interrupts.deferred():
        if path.exists():
            path.unlink()  # an old model must not sit beside new data
        stale = data_file(path)
        if stale.exists() and not data_file(tmp).exists():
            stale.unlink()
        if data_file(tmp).exists():
            os.replace(data_file(tmp), stale)
        for extra in extras:
            os.replace(extra, path.parent / extra.name)
        os.replace(tmp, path)


# --- checks ---------------------------------------------------------------------------------------

#: Ops TensorRT handles badly or that signal a data-dependent shape (HF's boolean scatter exports to these).
UNFRIENDLY_OPS = ("NonZero", "ScatterND")


@reported("simplifying with onnxslim")
def simplify(path: Path) -> None:
    """Rewrite ``path`` with onnxslim (constant folding, dead-node removal), keeping one external data file."""
    onnx = lazy_import("onnx", purpose="--simplify")
    onnxslim = lazy_import("onnxslim", purpose="--simplify")
    external = data_file(path).exists()
    model = onnxslim.slim(str(path))
    if model is None:
        raise ArtifactError(f"{path}: onnxslim returned no model")
    for stale in (path, data_file(path)):
        if stale.exists():
            stale.unlink()  # onnx appends to an existing external data file
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=data_file(path).name)
    if not external and data_file(path).exists():
        raise ArtifactError(f"{path}: onnxslim output unexpectedly wrote external data")


# --- the policy ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OnnxExportOptions:
    """How to export a policy. ``window=None`` uses the config's window."""

    opset: int = DEFAULT_OPSET
    exporter: str = Exporter.DYNAMO
    window: int | None = None
    dynamic_window: bool = False
    debug_outputs: bool = False
    external_data: bool | None = None
    simplify: bool = False
    optimize: bool = True
    ort_check: bool = True
    parity_samples: int = 2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StaticChecks:
    """What :func:`static_checks` found in a staged export, for its manifest and result."""

    completeness: Any  # Completeness
    ops: dict[str, int]
    io: dict[str, Any]


@dataclass
class OnnxExportResult:
    path: Path
    files: list[dict[str, Any]]
    seconds: float
    completeness: Any  # Completeness
    parity: list[Any] = field(default_factory=list)  # ParityResult per stage ("export", "simplified")
    ops: dict[str, int] = field(default_factory=dict)
    io: dict[str, Any] = field(default_factory=dict)
    manifest_path: Path | None = None

    @property
    def passed(self) -> bool:
        return self.completeness.passed and all(p.passed for p in self.parity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "files": self.files,
            "seconds": self.seconds,
            "completeness": self.completeness.to_dict(),
            "parity": [p.to_dict() for p in self.parity],
            "ops": self.ops,
            "io": self.io,
            "manifest": str(self.manifest_path) if self.manifest_path else None,
        }


def policy_graph(policy, debug_outputs: bool):
    """The policy behind a forward that takes exactly the graph inputs and returns the graph outputs."""
    import torch

    class PolicyGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.policy = policy

        def forward(self, pixel_values, input_ids, attention_mask):
            return self.policy(pixel_values, input_ids, attention_mask, return_features=debug_outputs)

    return PolicyGraph().eval()


def model_record(loaded) -> dict[str, Any] | None:
    """How the exported policy's config was obtained (layout, source, every assumption), for the manifest."""
    resolved = getattr(loaded, "resolved", None)
    return resolved.to_dict() if resolved is not None else None


def export_policy(loaded, path: str | Path, options: OnnxExportOptions = OnnxExportOptions()) -> OnnxExportResult:
    """Export a loaded policy (:class:`~vla_export.models.loader.LoadedPolicy`) to ``path`` and verify it.

    Raises :class:`ArtifactError` (nothing left at ``path``) when the graph is incomplete, fails the
    checker or shape inference, holds ops TensorRT cannot take, or disagrees with PyTorch.
    """
    import torch

    from vla_export.data.iospec import POLICY, dummy_inputs
    from vla_export.artifacts.manifest import manifest_path

    path = Path(path)
    cfg, policy = loaded.config, loaded.policy
    require_finite_weights(policy, loaded.checkpoint.path)
    window = cfg.window if options.window is None else options.window
    if window < 1:
        raise ConfigError(f"--window must be positive, got {window}")
    # The export traces at batch 2 and checks at batch 3 (one frame more with a dynamic window).
    check_window_memory(cfg, window + int(options.dynamic_window), batch=3, factor=2.0)
    example = dummy_inputs(POLICY, cfg, batch=EXPORT_BATCH, window=window, seed=options.seed)
    example_t = {k: torch.from_numpy(v) for k, v in example.items()}
    dyn = POLICY.dynamic_axes(dynamic_window=options.dynamic_window)
    outputs = POLICY.output_names(debug=options.debug_outputs)
    start = time.perf_counter()
    with step("exporting to ONNX and verifying"):
        target = check_target(path, options.opset, options.exporter)
        with staging_dir(target) as tmpdir:
            tmp = tmpdir / target.name
            stage_module(
                policy_graph(policy, options.debug_outputs), example_t, tmp, output_names=outputs, dynamic_axes=dyn,
                opset=options.opset, exporter=options.exporter, external_data=options.external_data, optimize=options.optimize,
            )
            export_seconds = time.perf_counter() - start
            checks, parity = verify_policy_export(tmp, loaded, options, window)
            manifest, files = write_policy_manifest(tmp, loaded, options, window, checks, parity, export_seconds)
            move_into_place(tmp, target, [manifest])
    return OnnxExportResult(
        path=path, files=files, seconds=time.perf_counter() - start, completeness=checks.completeness,
        parity=parity, ops=checks.ops, io=checks.io, manifest_path=manifest_path(path),
    )


def verify_policy_export(tmp: Path, loaded, options: OnnxExportOptions, window: int) -> tuple[StaticChecks, list[Any]]:
    """The staged policy export checked (and, with ``options.simplify``, simplified and checked again).

    Returns the last stage's :class:`StaticChecks` and the parity result of each stage checked with
    ONNX Runtime; raises :class:`ArtifactError` at the first stage that fails."""
    checks, parity = _verify_stage(tmp, loaded, options, window, "export")
    results = [parity] if parity is not None else []
    if options.simplify:
        simplify(tmp)
        checks, parity = _verify_stage(tmp, loaded, options, window, "simplified")
        results += [parity] if parity is not None else []
    return checks, results


def write_policy_manifest(tmp: Path, loaded, options: OnnxExportOptions, window: int, checks: StaticChecks, parity: Sequence[Any],
                          export_seconds: float) -> tuple[Path, list[dict[str, Any]]]:
    """Write the staged export's manifest beside it; returns its path and the files it records."""
    from vla_export.artifacts.manifest import build_manifest, manifest_path, versions, write_manifest
    from vla_export.fileio import sha256_file

    files = [tmp] + ([data_file(tmp)] if data_file(tmp).exists() else [])
    ckpt = loaded.checkpoint.path
    data = build_manifest(
        MANIFEST_KIND, tmp, files,
        source={"checkpoint": str(ckpt), "sha256": sha256_file(ckpt), "bytes": Path(ckpt).stat().st_size},
        config=loaded.config.to_dict(),
        model=model_record(loaded),
        window=window,
        options=options.to_dict(),
        opset=written_opset(tmp),
        exporter=options.exporter,
        parameters=checks.completeness.to_dict(),
        io=checks.io,
        ops=checks.ops,
        parity={p.label: p.to_dict() for p in parity},
        export_seconds=export_seconds,
        versions=versions(),
    )
    out = manifest_path(tmp)
    write_manifest(tmp, data, path=out)
    return out, [f.to_dict() for f in data.files]


@reported("checking the graph (checker, shape inference, completeness)")
def static_checks(path: Path, module) -> StaticChecks:
    """Checks that need no inference: checker, shape inference, completeness against ``module``, no
    TensorRT-unfriendly ops. Returns what the manifest records of them.
    """
    from vla_export.export.completeness import require_complete

    check_model(path)
    completeness = require_complete(path, module)
    ops = op_counts(path)
    bad = [op for op in UNFRIENDLY_OPS if op in ops]
    if bad:
        raise ArtifactError(f"{path.name}: the graph contains {bad}, which TensorRT handles badly")
    return StaticChecks(completeness, ops, io_signature(path))


def _verify_stage(tmp: Path, loaded, options: OnnxExportOptions, window: int, label: str) -> tuple[StaticChecks, Any]:
    """One stage's checks: the static ones, then (``options.ort_check``) parity; the parity result is None without it."""
    checks = static_checks(tmp, loaded.policy)
    if not options.ort_check:
        return checks, None
    result = ort_parity(tmp, loaded, window=window, debug_outputs=options.debug_outputs, samples=options.parity_samples,
                        seed=options.seed, label=label, other_window=window + 1 if options.dynamic_window else window)
    if not result.passed:
        raise ArtifactError(f"{tmp.name}: ONNX Runtime disagrees with PyTorch after {label}: {result.summary()}")
    return checks, result


@reported("ONNX Runtime vs PyTorch")
def ort_parity(path: Path, loaded, *, window: int, debug_outputs: bool, samples: int, seed: int, label: str,
               other_window: int | None = None):
    """ONNX Runtime vs PyTorch on ``samples`` feeds at batch 1 and ``samples`` at batch 3 (that at
    ``other_window`` frames, for a dynamic window), with other text lengths than the export's.
    """
    from vla_export.backends.onnxrt import OnnxrtRunner
    from vla_export.backends.torch_runner import TorchRunner
    from vla_export.data.source import SyntheticSource
    from vla_export.compare.comparator import compare_runners

    cfg = loaded.config
    feeds = [SyntheticSource(cfg, seed=seed + 1, batch=1, window=window, text_len=min(7, cfg.max_text_len)).sample(i) for i in range(samples)]
    feeds += [SyntheticSource(cfg, seed=seed + 2, batch=3, window=other_window or window, text_len=min(11, cfg.max_text_len)).sample(i)
              for i in range(samples)]
    with TorchRunner(loaded.policy, debug_outputs=debug_outputs) as ref, OnnxrtRunner(path) as cand:
        return compare_runners(ref, cand, feeds, precision=Precision.FP32, label=label)


class OnnxFromPolicy:
    """A lazy step: calling it loads the policy (from ``policy_loader``), exports and verifies it."""

    def __init__(self, policy_loader: Callable[[], Any], path: str | Path, options: OnnxExportOptions = OnnxExportOptions()):
        self.policy_loader, self.path, self.options = policy_loader, Path(path), options

    def __call__(self) -> OnnxExportResult:
        return export_policy(self.policy_loader(), self.path, self.options)
