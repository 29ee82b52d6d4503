"""ONNX -> TensorRT engine for the GPU it runs on (Jetson Orin with JetPack 6 / TensorRT 10.3, x86 TensorRT 10.x).

Three layers, so all the decisions are testable without TensorRT:

1. :class:`TrtBuildOptions` (what the user asked for) + the ONNX -> :class:`BuildPlan` (pure data: network
   typing, builder flags, memory pools, optimization profiles, layer precision rules, DLA, compatibility).
2. Translators: :func:`apply_plan` makes exactly the TensorRT 10 ``IBuilderConfig`` calls for a plan
   (tests pass a recording fake), :func:`trtexec_command` writes the equivalent trtexec command line.
3. Builders: :func:`build_engine` uses the TensorRT Python API (``OnnxParser.parse_from_file``, so
   external data is read from beside the model; ``build_serialized_network``), Polygraphy's
   ``Calibrator`` for implicit INT8 calibration; without the bindings it runs ``trtexec`` with the same
   plan; with neither it says how to install TensorRT.

TensorRT 11 drops the FP16/INT8 builder flags and implicit calibration: there, and whenever the ONNX
already carries its precision (Q/DQ nodes from ``vla-export quantize --int8`` or FP16 weights from
``--fp16``), the network is built strongly typed and the ONNX decides every layer's type.

TensorRT for RTX (module ``tensorrt_rtx``, flavour ``"rtx"``) is planned like TensorRT 11 (strongly typed only)
plus what it adds and lacks: compute-capability targets instead of hardware compatibility, no timing cache,
no version compatibility, no DLA, no calibrator. It builds ahead of time without a GPU; its VERBOSE build log
with detailed profiling verbosity lists the engine's layers, which the manifest keeps by precision.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vla_export.data.iospec import INPUT_IDS, axis_role
from vla_export.backends.tensorrt import INSTALL_TRT, CapturingLogger, engine_version, flavor_label, import_tensorrt
from vla_export.artifacts.onnxfile import io_signature
from vla_export.artifacts.manifest import build_manifest, read_manifest, versions, write_manifest
from vla_export.models.config import PolicyConfig
from vla_export.errors import ArtifactError, ConfigError, DataError, MissingDependencyError
from vla_export.fileio import atomic_write
from vla_export.choices import Precision
from vla_export.precision import PRECISIONS
from vla_export.progress import reported

log = logging.getLogger(__name__)

TYPINGS = ("auto", "strong", "weak")
HARDWARE_COMPAT = ("none", "ampere+")
MANIFEST_KIND = "engine"
DEFAULT_WORKSPACE_MIB = 2048
TRTEXEC = "trtexec"
#: ``--profiling-verbosity`` values (trtexec's ``--profilingVerbosity``): what the engine keeps of its layers.
PROFILING_VERBOSITIES = ("layer_names_only", "detailed")
#: What TensorRT-RTX 1.7 can target (``trt.ComputeCapability.SM*``): no 8.7 (Jetson Orin), no 9.0 (H100/H200).
RTX_COMPUTE_CAPABILITIES = ("75", "80", "86", "89", "120", "121")
DEFAULT_TEXT_OPT = 16
#: What a plan is for when nothing says otherwise: JetPack 6.x ships TensorRT 10.3.
DEFAULT_TRT_VERSION = "10.3.0"
#: trtexec options that TensorRT 11's trtexec no longer parses ("Unknown option").
TRTEXEC_GONE_IN_11 = ("--fp16", "--int8", "--precisionConstraints", "--layerPrecisions", "--layerOutputTypes", "--calib",
                      "--optShapesCalib")


# --- options and plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One input's optimization profile shapes."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise ConfigError(f"profile shapes differ in rank: {self.min} {self.opt} {self.max}")
        if any(not (a <= b <= c) or a < 0 for a, b, c in zip(self.min, self.opt, self.max)):
            raise ConfigError(f"profile needs 0 <= min <= opt <= max per dimension, got {self.min} {self.opt} {self.max}")

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x16"`` -> (1, 16)."""
    try:
        return tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"a shape is written like 1x4x3x224x224, got {text!r}") from None


def parse_compute_capabilities(text: str) -> tuple[str, ...]:
    """``"86,89,120"`` (also ``8.6``, ``sm86``) -> ("86", "89", "120"), deduplicated, order kept."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        cc = part.lower().removeprefix("sm").replace(".", "")
        if not cc.isdigit():
            raise ConfigError(f"--compute-capability takes a list like 86,89,120, got {text!r}")
        if cc not in out:
            out.append(cc)
    return tuple(out)


def parse_profile(spec: str) -> tuple[str, Profile]:
    """``"input_ids=1x1:1x16:1x64"`` (min:opt:max) or ``"input_ids=1x16"`` (static) -> (name, Profile)."""
    name, sep, shapes = spec.partition("=")
    parts = shapes.split(":")
    if not sep or not name or len(parts) not in (1, 3):
        raise ConfigError(f"--shape takes NAME=MIN:OPT:MAX or NAME=SHAPE (e.g. input_ids=1x1:1x16:1x64), got {spec!r}")
    dims = [parse_shape(p) for p in parts]
    return name, Profile(dims[0], dims[-2 if len(dims) == 3 else 0], dims[-1])


@dataclass(frozen=True)
class TrtBuildOptions:
    """What to build. Precision ``fp16`` keeps LayerNorm, Softmax and mask arithmetic in FP32 with layer
    precision constraints unless ``fp16_all``; ``int8`` also enables FP16 for the layers that stay out of
    INT8 and needs ``calib`` (a calibration set) unless the ONNX has Q/DQ nodes."""

    precision: str = Precision.FP32
    fp16_all: bool = False
    typing: str = "auto"
    shapes: Mapping[str, Profile] = field(default_factory=dict)
    max_batch: int = 1
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    timing_cache: Path | None = None
    optimization_level: int | None = None
    version_compatible: bool = False
    exclude_lean_runtime: bool = False
    hardware_compatibility: str = "none"
    dla_core: int | None = None
    calib: Path | None = None
    calib_cache: Path | None = None
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX targets, e.g. ("86", "89", "120")
    profiling_verbosity: str | None = None  # "detailed" or "layer_names_only" (TensorRT's default); None: not given

    def __post_init__(self) -> None:
        if self.profiling_verbosity not in (None, *PROFILING_VERBOSITIES):
            raise ConfigError(f"--profiling-verbosity must be one of {', '.join(PROFILING_VERBOSITIES)}, got {self.profiling_verbosity!r}")
        unknown = [c for c in self.compute_capabilities if c not in RTX_COMPUTE_CAPABILITIES]
        if unknown:
            raise ConfigError(f"--compute-capability {','.join(unknown)}: TensorRT-RTX targets {', '.join(RTX_COMPUTE_CAPABILITIES)} "
                              "(no 87 Jetson Orin, no 90 H100/H200)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {tuple(p.value for p in PRECISIONS)}, got {str(self.precision)!r}")
        if self.typing not in TYPINGS:
            raise ConfigError(f"typing must be one of {TYPINGS}, got {self.typing!r}")
        if self.hardware_compatibility not in HARDWARE_COMPAT:
            raise ConfigError(f"hardware compatibility must be one of {HARDWARE_COMPAT}, got {self.hardware_compatibility!r}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"builder optimization level must be 0..5, got {self.optimization_level}")
        if self.workspace_mib < 1 or self.max_batch < 1:
            raise ConfigError("workspace and max batch must be positive")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise ConfigError("--exclude-lean-runtime needs --version-compatible")
        if self.dla_core is not None and self.dla_core < 0:
            raise ConfigError(f"--dla-core must be >= 0, got {self.dla_core}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shapes"] = {k: v.to_dict() for k, v in self.shapes.items()}
        d["compute_capabilities"] = list(self.compute_capabilities)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


@dataclass(frozen=True)
class OnnxFacts:
    """What the plan needs from the ONNX: inputs, whether it carries its own precision, sensitive nodes."""

    path: Path
    inputs: list[dict[str, Any]]
    has_qdq: bool
    has_fp16: bool
    sensitive: dict[str, str]  # node name -> reason (see quantize.precision_sensitive_nodes)
    config: PolicyConfig | None = None  # the policy config from the ONNX manifest, when there is one
    model: dict[str, Any] | None = None  # how that config was obtained (layout, assumptions), from the ONNX manifest
    quantized: frozenset[str] = frozenset()  # Q/DQ nodes and the nodes that take a DequantizeLinear output
    non_float: frozenset[str] = frozenset()  # nodes with an output that is not floating point (or of unknown type)

    @property
    def typed(self) -> bool:
        return self.has_qdq or self.has_fp16


def read_onnx_facts(path: str | Path) -> OnnxFacts:
    """Read the facts from an ONNX file (weights not loaded) and its manifest, if any."""
    from vla_export.artifacts.graph import ensure_node_names
    from vla_export.export.quantize import precision_sensitive_nodes
    from vla_export.artifacts.onnxfile import load_graph
    from vla_export.lazy import lazy_import

    onnx = lazy_import("onnx", purpose="reading ONNX models")
    path = Path(path)
    model = load_graph(path)  # names and types, no weight values; also checks that external data files exist
    ensure_node_names(model)
    ops = {n.op_type for n in model.graph.node}
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(t.data_type == fp16 for t in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in n.attribute) for n in model.graph.node
    )
    manifest = read_manifest(path, kind="onnx", required=False)
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = {n.name for n in model.graph.node
                 if n.op_type in ("QuantizeLinear", "DequantizeLinear") or dq_outputs.intersection(n.input)}
    return OnnxFacts(
        path=path,
        inputs=io_signature(path)["inputs"],
        has_qdq=bool({"QuantizeLinear", "DequantizeLinear"} & ops),
        has_fp16=has_fp16,
        sensitive=precision_sensitive_nodes(model),
        config=manifest.config if manifest else None,
        model=manifest.extra.get("model") if manifest else None,
        quantized=frozenset(quantized),
        non_float=frozenset(_non_float_nodes(model, onnx)),
    )


def _non_float_nodes(model, onnx) -> set[str]:
    """Nodes with an output whose type is not float/float16/bfloat16 after type inference (or is unknown).

    Layer precision constraints go only on float layers: on a bool, int or shape layer they fail the build.
    """
    # Types only need the graph, not the weights. Inferred afresh: converters (onnxruntime's float16 one)
    # leave value_info from before the conversion that contradicts the converted graph.
    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    del fresh.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(fresh)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    return {n.name for n in model.graph.node if any(types.get(o) not in floats for o in n.output if o)}


@dataclass(frozen=True)
class LayerRule:
    """Keep matching layers at ``precision``: by TensorRT layer type or by ONNX node name."""

    precision: str  # Precision.FP32 or Precision.FP16
    layer_types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    reason: str = ""


@dataclass
class BuildPlan:
    """Everything a builder does, as data (written to the manifest as the build's flags)."""

    strongly_typed: bool
    flags: list[str]
    workspace_bytes: int
    profiles: dict[str, Profile]
    calibration_profile: dict[str, Profile] | None
    layer_rules: list[LayerRule]
    timing_cache: str | None
    optimization_level: int | None
    hardware_compatibility: str
    dla_core: int | None
    calib: str | None
    calib_cache: str | None
    precision: str
    tensorrt: str = "10.3.0"  # the TensorRT the plan is for (trtexec lines differ between 10 and 11)
    flavor: str = "tensorrt"  # or "rtx" (TensorRT for RTX)
    compute_capabilities: list[str] = field(default_factory=list)  # TensorRT-RTX targets; empty: the library's default
    detailed_profiling: bool = False  # ProfilingVerbosity.DETAILED: the build log lists the engine's layers

    @property
    def implicit_int8(self) -> bool:
        """INT8 from a calibration cache (weakly typed, no Q/DQ): trtexec must be given the real cache."""
        return "INT8" in self.flags and self.calibration_profile is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensorrt": self.tensorrt,
            "flavor": self.flavor,
            "compute_capabilities": self.compute_capabilities,
            "detailed_profiling": self.detailed_profiling,
            "precision": self.precision,
            "strongly_typed": self.strongly_typed,
            "flags": self.flags,
            "workspace_bytes": self.workspace_bytes,
            "profiles": {k: v.to_dict() for k, v in self.profiles.items()},
            "calibration_profile": {k: v.to_dict() for k, v in self.calibration_profile.items()} if self.calibration_profile else None,
            "layer_rules": [asdict(r) | {"names": len(r.names)} for r in self.layer_rules],
            "timing_cache": self.timing_cache,
            "optimization_level": self.optimization_level,
            "hardware_compatibility": self.hardware_compatibility,
            "dla_core": self.dla_core,
            "calib": self.calib,
            "calib_cache": self.calib_cache,
        }


def derive_profiles(facts: OnnxFacts, options: TrtBuildOptions, text_opt: int | None = None) -> dict[str, Profile]:
    """A profile for every input with a dynamic dimension: from ``options.shapes``, else defaults.

    Defaults by role: batch 1..``max_batch`` (opt 1: the robot runs one request at a time); window
    1..W (opt W, the config's window); text 1..max_text_len (opt ``text_opt`` or 16). Static inputs need
    no profile; a flag for an unknown input, a wrong rank or a contradiction of a static dim is an error.
    """
    names = {i["name"] for i in facts.inputs}
    unknown = sorted(set(options.shapes) - names)
    if unknown:
        raise ConfigError(f"--shape for {unknown}, but {facts.path.name} has inputs {sorted(names)}")
    cfg = facts.config
    window = cfg.window if cfg else 8
    max_text = cfg.max_text_len if cfg else 256
    profiles: dict[str, Profile] = {}
    for spec in facts.inputs:
        name, dims = spec["name"], spec["shape"]
        if name in options.shapes:
            prof = options.shapes[name]
            if len(prof.min) != len(dims):
                raise ConfigError(f"--shape {name}: rank {len(prof.min)}, the ONNX input has rank {len(dims)} {dims}")
            for axis, d in enumerate(dims):
                if isinstance(d, int) and not (prof.min[axis] == prof.opt[axis] == prof.max[axis] == d):
                    raise ConfigError(f"--shape {name}: axis {axis} is fixed at {d} in the ONNX")
            profiles[name] = prof
            continue
        if all(isinstance(d, int) for d in dims):
            continue
        lo, mid, hi = [], [], []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                lo.append(d), mid.append(d), hi.append(d)
                continue
            role = axis_role(name, axis)
            if role == "batch":
                bounds = (1, 1, options.max_batch)
            elif role == "window":
                bounds = (1, window, window)
            elif role == "text":
                opt = min(text_opt or DEFAULT_TEXT_OPT, max_text)
                bounds = (1, opt, max_text)
            else:
                raise ConfigError(f"{facts.path.name}: input {name} axis {axis} ({d}) is dynamic; give its range with --shape {name}=MIN:OPT:MAX")
            lo.append(bounds[0]), mid.append(bounds[1]), hi.append(bounds[2])
        profiles[name] = Profile(tuple(lo), tuple(mid), tuple(hi))
    return profiles


def trt_major(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m.group(1)) if m else 0


#: Options TensorRT-RTX cannot act on, and why (each refused in one line, never dropped).
RTX_REFUSED = (
    ("--fp16", lambda opts: opts.precision == Precision.FP16, "builds strongly typed only: FP16 comes from the ONNX (`vla-export quantize MODEL.onnx --fp16`, then build that ONNX)"),
    ("--int8", lambda opts: opts.precision == Precision.INT8, "builds strongly typed only: INT8 comes from Q/DQ nodes (`vla-export quantize MODEL.onnx --int8 --calib DATA`, then build that ONNX)"),
    ("--fp16-all", lambda opts: opts.fp16_all, "builds strongly typed only: layer types come from the ONNX"),
    ("--calib", lambda opts: opts.calib is not None, "has no INT8 calibrator: quantize with `vla-export quantize --int8 --calib DATA`"),
    ("--calib-cache", lambda opts: opts.calib_cache is not None, "has no INT8 calibrator: quantize with `vla-export quantize --int8 --calib DATA`"),
    ("--typing weak", lambda opts: opts.typing == "weak", "builds strongly typed networks only"),
    ("--version-compatible", lambda opts: opts.version_compatible, "ships no lean runtime: version-compatible builds fail"),
    ("--exclude-lean-runtime", lambda opts: opts.exclude_lean_runtime, "ships no lean runtime"),
    ("--dla-core", lambda opts: opts.dla_core is not None, "has no DLA"),
    ("--timing-cache", lambda opts: opts.timing_cache is not None, "has no timing cache (kernels are compiled at run time and kept in a runtime cache beside the engine)"),
    ("--hardware-compat", lambda opts: opts.hardware_compatibility != "none", "targets compute capabilities instead: use --compute-capability 86,89,120"),
    ("--profiling-verbosity layer_names_only", lambda opts: opts.profiling_verbosity == "layer_names_only",
     "builds are always detailed here: the engine's layers by precision are read from that build log into the manifest"),
)


def _make_rtx_plan(facts: OnnxFacts, options: TrtBuildOptions, trt_version: str) -> BuildPlan:
    """TensorRT-RTX: strongly typed, compute-capability targets, detailed profiling; everything it lacks refused."""
    for flag, given, why in RTX_REFUSED:
        if given(options):
            raise ConfigError(f"{flag}: TensorRT-RTX {trt_version} {why}")
    return BuildPlan(
        strongly_typed=True, flags=[], workspace_bytes=options.workspace_mib << 20, profiles=derive_profiles(facts, options),
        calibration_profile=None, layer_rules=[], timing_cache=None, optimization_level=options.optimization_level,
        hardware_compatibility="none", dla_core=None, calib=None, calib_cache=None, precision=Precision.FP32, tensorrt=trt_version,
        flavor="rtx", compute_capabilities=list(options.compute_capabilities), detailed_profiling=True,
    )


def make_plan(facts: OnnxFacts, options: TrtBuildOptions, *, trt_version: str = DEFAULT_TRT_VERSION,
              calib_shapes: Mapping[str, tuple[int, ...]] | None = None, flavor: str = "tensorrt") -> BuildPlan:
    """Decide the build for TensorRT ``trt_version``. Raises ConfigError for combinations TensorRT would reject or
    silently ignore.

    A Q/DQ ONNX builds strongly typed (under ``--typing auto``, with or without ``--int8``): weakly typed with
    OBEY_PRECISION_CONSTRAINTS, the sensitivity rules would pin its quantized MatMuls to FP16 and de-quantize it.
    Quantized nodes are never pinned, even with ``--typing weak``; only float layers are.
    ``flavor="rtx"`` plans for TensorRT for RTX (see :func:`_make_rtx_plan`).
    """
    trt_version = engine_version(trt_version)
    if flavor == "rtx":
        return _make_rtx_plan(facts, options, trt_version)
    if options.compute_capabilities:
        raise ConfigError(f"--compute-capability: TensorRT-RTX's targets, and this build is for TensorRT {trt_version}, which builds "
                          "for the GPU it runs on (see --hardware-compat ampere+)")
    major = trt_major(trt_version)
    if major and major < 10:
        raise ConfigError(f"TensorRT {trt_version} is too old: vla-export builds with the TensorRT 10 API (JetPack 6 ships 10.3)")
    p = Precision(options.precision)
    qdq_int8 = facts.has_qdq and p == Precision.INT8 and options.typing != "weak"
    if options.typing == "strong" or (options.typing == "auto" and (major >= 11 or (facts.typed and p == Precision.FP32) or qdq_int8)):
        strong = True
    else:
        strong = False
    if strong and p != Precision.FP32 and not (qdq_int8 and major < 11):
        why = f"TensorRT {trt_version} has no FP16/INT8 builder flags" if major >= 11 else "a strongly typed build takes its precision from the ONNX"
        raise ConfigError(
            f"{why}: run `vla-export quantize {facts.path.name} --{p}{' --calib DATA' if p == Precision.INT8 else ''}` "
            "and build the ONNX it writes without --fp16/--int8"
        )
    if major >= 11 and options.typing == "weak":
        raise ConfigError(f"TensorRT {trt_version} builds strongly typed networks only; drop --weakly-typed")
    flags: list[str] = []
    rules: list[LayerRule] = []
    if p in (Precision.FP16, Precision.INT8) and not strong:
        flags.append(Precision.FP16.trt_flag)
    if p == Precision.INT8 and not strong:
        flags.append(Precision.INT8.trt_flag)
        if not facts.has_qdq and options.calib is None:
            raise DataError(
                f"INT8 without Q/DQ nodes in {facts.path.name} needs calibration data: pass --calib DATA "
                "(make it with `vla-export calib`), or quantize explicitly with `vla-export quantize --int8`"
            )
    if p != Precision.FP32 and not options.fp16_all and not strong:
        # By exact ONNX node name only (trtexec's --layerPrecisions matches names, so both paths pin the same
        # layers), float nodes only, never a quantized one.
        by_reason: dict[str, list[str]] = {}
        for name, reason in facts.sensitive.items():
            if name not in facts.quantized and name not in facts.non_float:
                by_reason.setdefault(reason, []).append(name)
        rules.append(LayerRule(Precision.FP32, names=tuple(sorted(by_reason.get("layernorm", []) + by_reason.get("softmax", []))),
                               reason="layernorm+softmax"))
        rules.append(LayerRule(Precision.FP32, names=tuple(sorted(by_reason.get("mask", []))), reason="attention-mask arithmetic"))
        if p == Precision.INT8:
            rules.append(LayerRule(Precision.FP16, names=tuple(sorted(by_reason.get("residual-add", []))), reason="residual adds out of INT8"))
            rules.append(LayerRule(Precision.FP16, names=tuple(sorted(by_reason.get("head", []))), reason="policy head out of INT8"))
            rules.append(LayerRule(Precision.FP16, names=tuple(sorted(by_reason.get("attention-matmul", []))), reason="attention matmuls out of INT8"))
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    if options.dla_core is not None:
        if p == Precision.FP32 and not (strong and facts.typed):
            raise ConfigError("DLA runs FP16 or INT8 only: add --fp16 or --int8 to use --dla-core")
        flags.append("GPU_FALLBACK")
    if options.version_compatible:
        flags.append("VERSION_COMPATIBLE")
    if options.exclude_lean_runtime:
        flags.append("EXCLUDE_LEAN_RUNTIME")
    profiles = derive_profiles(facts, options, text_opt=(calib_shapes or {}).get(INPUT_IDS, (0, None))[-1])
    calib_profile = None
    if p == Precision.INT8 and not strong and not facts.has_qdq and calib_shapes:
        # Implicit calibration runs at one shape per input: the calibration set's.
        calib_profile = {n: Profile(s, s, s) for n, s in calib_shapes.items()}
    calib_cache = options.calib_cache
    if p == Precision.INT8 and not strong and options.calib is not None and calib_cache is None:
        calib_cache = default_calib_cache(options.calib, facts.path, trt_version)
    return BuildPlan(
        strongly_typed=strong, flags=flags, workspace_bytes=options.workspace_mib << 20, profiles=profiles,
        calibration_profile=calib_profile, layer_rules=rules,
        timing_cache=str(options.timing_cache) if options.timing_cache else None,
        optimization_level=options.optimization_level, hardware_compatibility=options.hardware_compatibility,
        dla_core=options.dla_core, calib=str(options.calib) if options.calib else None,
        calib_cache=str(calib_cache) if calib_cache else None, precision=p, tensorrt=trt_version,
        detailed_profiling=options.profiling_verbosity == "detailed",
    )


def default_calib_cache(calib: str | Path, onnx: str | Path, trt_version: str) -> Path:
    """``calibration/set.npz`` -> ``calibration/set.<onnx stem>.trt<major.minor.patch>.cache``: caches are tied to
    the network and the TensorRT version, so both are in the name; the version is the three-part one that
    trtexec reports and the bindings' four-part ``__version__`` starts with, so both builders name it alike."""
    calib = Path(calib)
    return calib.with_name(f"{calib.stem}.{Path(onnx).stem}.trt{engine_version(trt_version)}.cache")


# --- translators -----------------------------------------------------------------------------------------

def network_flags(plan: BuildPlan, trt) -> int:
    """The ``create_network`` flags: TensorRT 10 networks are explicit-batch by default."""
    return (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if plan.strongly_typed else 0


def apply_plan(plan: BuildPlan, builder, config, trt, timing_cache_bytes: bytes = b"") -> Any:
    """Make the ``IBuilderConfig`` calls for ``plan`` (TensorRT 10 API). Returns the timing cache object.
    Layer precisions are set on the network by :func:`apply_layer_rules`. TensorRT-RTX plans set their compute
    capability targets and no timing cache (returns None)."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    if plan.detailed_profiling:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if plan.compute_capabilities:
        config.num_compute_capabilities = len(plan.compute_capabilities)
        for i, cc in enumerate(plan.compute_capabilities):
            target = getattr(trt.ComputeCapability, f"SM{cc}", None)
            if target is None:
                raise ConfigError(f"--compute-capability {cc}: TensorRT-RTX {plan.tensorrt} has no SM{cc} target")
            config.set_compute_capability(target, i)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.optimization_level is not None:
        config.builder_optimization_level = plan.optimization_level
    if plan.hardware_compatibility == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if plan.dla_core is not None:
        available = builder.num_DLA_cores
        if plan.dla_core >= available:
            raise ConfigError(f"--dla-core {plan.dla_core}: this device has {available} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for name, prof in plan.profiles.items():
            profile.set_shape(name, prof.min, prof.opt, prof.max)
        config.add_optimization_profile(profile)
    if plan.calibration_profile:
        cal = builder.create_optimization_profile()
        for name, prof in plan.calibration_profile.items():
            cal.set_shape(name, prof.min, prof.opt, prof.max)
        config.set_calibration_profile(cal)
    if plan.flavor == "rtx":
        return None
    cache = config.create_timing_cache(timing_cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _is_float(dtype, trt) -> bool:
    return dtype in (trt.float32, trt.float16)


def apply_layer_rules(rules: Sequence[LayerRule], network, trt) -> dict[str, int]:
    """Pin the layers a rule names exactly (and their outputs) to its precision, as trtexec's ``--layerPrecisions``
    and ``--layerOutputTypes`` do for the same names. Returns how many each rule pinned.

    The plan names float ONNX nodes only; a named layer whose TensorRT outputs are not float is skipped with
    a warning (a constraint there would fail the build under OBEY_PRECISION_CONSTRAINTS).
    """
    counts = {r.reason: 0 for r in rules}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        rule = next((r for r in rules if layer.name in r.names), None)  # exact names, as trtexec --layerPrecisions
        if rule is None:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not outputs or not all(_is_float(o.dtype, trt) for o in outputs):
            log.warning("layer %s: output not FP32/FP16 in TensorRT's network, precision rule %r not applied", layer.name, rule.reason)
            continue
        dtype = trt.float32 if rule.precision == Precision.FP32 else trt.float16
        layer.precision = dtype
        for j in range(layer.num_outputs):
            layer.set_output_type(j, dtype)
        counts[rule.reason] += 1
    return counts


def _shape_arg(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def layer_info_path(engine: str | Path) -> Path:
    """``x.engine`` -> ``x.engine.layers.json``: the engine's layer information (trtexec ``--exportLayerInfo``)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".layers.json")


def trtexec_command(plan: BuildPlan, onnx: str | Path, engine: str | Path, trtexec: str = TRTEXEC) -> list[str]:
    """The trtexec command line for ``plan`` (for the TensorRT ``plan.tensorrt``), as a list; print it with
    :func:`shlex.join`. Refuses an implicit-INT8 line without an existing calibration cache: given a
    missing ``--calib`` file, trtexec silently calibrates on uniform random data."""
    cmd = [trtexec, f"--onnx={onnx}", f"--saveEngine={engine}", f"--memPoolSize=workspace:{plan.workspace_bytes >> 20}M", "--skipInference"]
    flag_args = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback",
                 "VERSION_COMPATIBLE": "--versionCompatible", "EXCLUDE_LEAN_RUNTIME": "--excludeLeanRuntime",
                 "OBEY_PRECISION_CONSTRAINTS": "--precisionConstraints=obey"}
    if plan.strongly_typed:
        cmd.append("--stronglyTyped")
    cmd += [flag_args[f] for f in plan.flags]
    if plan.profiles:
        for which in ("min", "opt", "max"):
            spec = ",".join(f"{n}:{_shape_arg(getattr(p, which))}" for n, p in plan.profiles.items())
            cmd.append(f"--{which}Shapes={spec}")
    if plan.calibration_profile:
        spec = ",".join(f"{n}:{_shape_arg(p.opt)}" for n, p in plan.calibration_profile.items())
        cmd.append(f"--optShapesCalib={spec}")
    specs = [f"{n}:{r.precision}" for r in plan.layer_rules for n in r.names]
    if specs:
        cmd.append(f"--layerPrecisions={','.join(specs)}")
        cmd.append(f"--layerOutputTypes={','.join(specs)}")
    if plan.timing_cache:
        cmd.append(f"--timingCacheFile={plan.timing_cache}")
    if plan.optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={plan.optimization_level}")
    if plan.hardware_compatibility != "none":
        cmd.append(f"--hardwareCompatibilityLevel={plan.hardware_compatibility}")
    if plan.dla_core is not None:
        cmd.append(f"--useDLACore={plan.dla_core}")
    if plan.detailed_profiling:  # the layer information, beside the engine (trtexec writes it after the build)
        cmd += ["--profilingVerbosity=detailed", f"--exportLayerInfo={layer_info_path(engine)}"]
    if plan.implicit_int8:
        if not (plan.calib_cache and Path(plan.calib_cache).is_file()):
            raise ConfigError(
                f"an INT8 trtexec build needs the calibration cache {plan.calib_cache or '(none named)'}, which does not exist "
                "(without it trtexec calibrates on random data): build once with the TensorRT Python bindings to write it "
                "(`vla-export trt ... --int8 --calib DATA`), or quantize explicitly (`vla-export quantize --int8 --calib DATA`) "
                "and build that ONNX"
            )
        cmd.append(f"--calib={plan.calib_cache}")
    if trt_major(plan.tensorrt) >= 11:
        gone = sorted({a.split("=")[0] for a in cmd[1:] if a.split("=")[0] in TRTEXEC_GONE_IN_11})
        if gone:
            raise ConfigError(f"trtexec {plan.tensorrt} does not take {', '.join(gone)}: quantize the ONNX instead (`vla-export quantize`)")
    return cmd


# --- building --------------------------------------------------------------------------------------------

@dataclass
class TrtBuildResult:
    engine: Path
    manifest: Path
    builder: str  # "tensorrt-python" or "trtexec"
    tensorrt: str
    gpu: dict[str, Any]
    plan: dict[str, Any]
    seconds: float
    bytes: int
    layer_rules_applied: dict[str, int] = field(default_factory=dict)
    flavor: str = "tensorrt"
    layers: dict[str, Any] | None = None  # the engine's layers by precision (TensorRT-RTX build log)
    warnings: list[str] = field(default_factory=list)  # the builder's and parser's warnings
    onnx_precision: str | None = None  # what the ONNX computes in (strongly typed builds keep it)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["engine"], d["manifest"] = str(self.engine), str(self.manifest)
        return d


def find_builder() -> tuple[str, str]:
    """(builder, flavour): ('tensorrt-python', 'tensorrt' or 'rtx') when TensorRT's or TensorRT-RTX's bindings import
    (TensorRT first), else ('trtexec', 'tensorrt') when trtexec is on PATH; else MissingDependencyError."""
    try:
        _, flavor = import_tensorrt()
    except MissingDependencyError:
        if shutil.which(TRTEXEC):
            return "trtexec", "tensorrt"
        raise MissingDependencyError(INSTALL_TRT) from None
    return "tensorrt-python", flavor


def trtexec_version(trtexec: str = TRTEXEC) -> str:
    """The TensorRT version trtexec reports in its banner (``[TensorRT v100300]`` -> ``10.3.0``)."""
    out = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60)
    m = re.search(r"TensorRT v(\d+)", out.stdout + out.stderr)
    if not m:
        return "unknown"
    v = int(m.group(1))
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}" if v >= 10000 else f"{v // 1000}.{v // 100 % 10}.{v % 100}"


def target_trt_version(override: str | None = None) -> tuple[str, str]:
    """(version, where it came from) of the TensorRT a printed trtexec line is for: ``override``, else the
    installed bindings, else trtexec on PATH, else JetPack 6's 10.3.0."""
    if override:
        return engine_version(override), "--trt-version"
    try:
        import tensorrt  # noqa: F401  (probing only)
    except (ImportError, OSError):
        pass
    else:
        return engine_version(tensorrt.__version__), "the installed TensorRT bindings"
    if shutil.which(TRTEXEC):
        return trtexec_version(), "trtexec on PATH"
    return DEFAULT_TRT_VERSION, "the default (JetPack 6.x); set --trt-version for another"


_LAYER_LINE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<inputs>.*?)\], "
                         r"Constants: \[(?P<constants>.*?)\], Outputs: \[(?P<outputs>.*?)\], TacticName")
_IO_LINE = re.compile(r"^ Name: (?P<name>.*?), IOMode: (?P<mode>\w+), DataType: (?P<dtype>\w+), Dimensions: \[(?P<dims>[^\]]*)\]")
_DATATYPE = re.compile(r"Datatype: (\w+)")
#: Layer kinds that do the arithmetic whose precision a quantized model claims.
GEMM_TYPES = ("gemm", "correlation")
INT8_X_INT8, INT8_WEIGHTS = "Int8 x Int8", "Int8 weights"
LAYER_LOG_NOTE = ("from TensorRT-RTX's VERBOSE build log with detailed profiling verbosity: a layer is 'Int8 x Int8' when an Int8 "
                  "input meets Int8 weights, 'Int8 weights' when Int8 weights meet a float input (weight-only fusions), "
                  "else the widest float type among its tensors (Half, Float), else its output type")


def layer_precision(inputs: Sequence[str], constants: Sequence[str], outputs: Sequence[str]) -> str:
    """One engine layer's precision class from the data types of its inputs, constants (weights) and outputs."""
    int8_in, int8_w = inputs.count("Int8"), constants.count("Int8")
    if int8_in and int8_w or int8_in >= 2 or int8_w >= 2 and not inputs:
        return INT8_X_INT8
    if int8_w:
        return INT8_WEIGHTS
    every = [*inputs, *constants, *outputs]
    for dtype in ("FP8", "BF16", "Half", "Float"):
        if dtype in every:
            return dtype
    return outputs[0] if outputs else "none"


def parse_layer_log(text: str | None) -> dict[str, Any] | None:
    """The engine's layers and I/O from the build log's ``Layers:`` message: counts by precision, by layer type and
    precision, the data types seen, and the I/O tensors (name, mode, dtype, dims). None without the message."""
    if not text:
        return None
    by_precision: dict[str, int] = {}
    by_type: dict[str, dict[str, int]] = {}
    dtypes: set[str] = set()
    io: list[dict[str, Any]] = []
    total = 0
    for line in text.split("\n")[1:]:
        m = _LAYER_LINE.match(line)
        if m:
            ins, consts, outs = (_DATATYPE.findall(m[k]) for k in ("inputs", "constants", "outputs"))
            prec = layer_precision(ins, consts, outs)
            total += 1
            by_precision[prec] = by_precision.get(prec, 0) + 1
            kind = by_type.setdefault(m["type"], {})
            kind[prec] = kind.get(prec, 0) + 1
            dtypes.update(ins + consts + outs)
            continue
        m = _IO_LINE.match(line)
        if m:
            io.append({"name": m["name"], "mode": m["mode"].lower(), "dtype": m["dtype"],
                       "dims": [int(d) for d in m["dims"].split(",") if d.strip()]})
    gemms = {}
    for kind in GEMM_TYPES:
        for prec, n in by_type.get(kind, {}).items():
            gemms[prec] = gemms.get(prec, 0) + n
    return {"total": total, "by_precision": by_precision, "gemm_by_precision": gemms, "by_type": by_type,
            "datatypes": sorted(dtypes), "io": io, "note": LAYER_LOG_NOTE}


def _calib_shapes(calib_path: Path | None, facts: OnnxFacts) -> tuple[Any, dict[str, tuple[int, ...]] | None]:
    if calib_path is None:
        return None, None
    from vla_export.data.calibration import load_calibration_set

    calib = load_calibration_set(calib_path)
    calib.check_inputs(facts.inputs, facts.path)
    return calib, {k: tuple(v.shape[1:]) for k, v in calib.arrays.items()}


@reported("building the TensorRT engine")
def build_engine(onnx: str | Path, output: str | Path, options: TrtBuildOptions = TrtBuildOptions()) -> TrtBuildResult:
    """Build ``output`` (and ``output.json``) from ``onnx``. Nothing appears at ``output`` unless it succeeds."""
    onnx, output = Path(onnx), Path(output)
    builder_kind, flavor = find_builder()
    facts = read_onnx_facts(onnx)
    calib_shapes = None
    if options.precision == Precision.INT8 and flavor != "rtx":
        calib, calib_shapes = _calib_shapes(options.calib, facts)
    else:
        calib = None
    start = time.perf_counter()
    record: dict[str, Any] = {}
    if builder_kind == "tensorrt-python":
        trt, flavor = import_tensorrt()
        version = engine_version(trt.__version__)  # three parts, as trtexec and the engine record it
        plan = make_plan(facts, options, trt_version=version, calib_shapes=calib_shapes, flavor=flavor)
        applied, record = _build_python(trt, plan, facts, output, calib)
        if flavor == "rtx":
            version = str(trt.__version__)  # TensorRT-RTX's four parts, as its wheels name it (compared by three)
    else:
        version = trtexec_version()
        plan = make_plan(facts, options, trt_version=version, calib_shapes=calib_shapes)
        applied = {}
        _build_trtexec(plan, facts, output)
    seconds = time.perf_counter() - start
    from vla_export.backends.tensorrt import gpu_info

    gpu = gpu_info()
    manifest = write_engine_manifest(output, facts, plan, version, gpu, seconds, builder_kind, options, record)
    return TrtBuildResult(output, manifest, builder_kind, version, gpu, plan.to_dict(), round(seconds, 2), output.stat().st_size,
                          applied, flavor=flavor, layers=record.get("layers"), warnings=record.get("warnings", []),
                          onnx_precision=onnx_precision(facts))


def _parser_errors(parser) -> str:
    """The ONNX parser's errors, each naming its node and operator where the parser says."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = getattr(err, "node_name", lambda: "")() or ""
        op = getattr(err, "node_operator", lambda: "")() or ""
        desc = getattr(err, "desc", lambda: str(err))()
        desc = " | ".join(line.strip() for line in str(desc).splitlines() if line.strip())  # one line
        out.append(f"node {node} ({op}): {desc}" if node or op else desc)
    return "; ".join(out)


def _build_python(trt, plan: BuildPlan, facts: OnnxFacts, output: Path, calib) -> tuple[dict[str, int], dict[str, Any]]:
    """Parse and build with the bindings; returns the layer rules applied and the build record (warnings, and with
    detailed profiling the engine's layers by precision from the log)."""
    logger = CapturingLogger.make(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(plan, trt))
    parser = trt.OnnxParser(network, logger)
    label = flavor_label(plan.flavor, plan.tensorrt)
    if not parser.parse_from_file(str(facts.path)):  # by path: external data is read from beside the model
        errors = _parser_errors(parser)
        # Released before raising: a traceback keeping this builder alive makes TensorRT ignore the next build's logger.
        del parser, network, builder
        raise ArtifactError(f"{facts.path}: {label}'s ONNX parser failed: {errors or 'no details'}")
    config = builder.create_builder_config()
    cache_path = Path(plan.timing_cache) if plan.timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
    cache = apply_plan(plan, builder, config, trt, cache_bytes)
    applied = apply_layer_rules(plan.layer_rules, network, trt) if plan.layer_rules else {}
    calibrator = None
    if calib is not None and plan.calibration_profile:
        from vla_export.lazy import lazy_import

        polygraphy_trt = lazy_import("polygraphy.backend.trt", purpose="INT8 calibration")
        if plan.calib_cache and Path(plan.calib_cache).exists():
            log.warning("INT8 scales from the existing cache %s, not from %s (delete the cache to recalibrate)", plan.calib_cache, plan.calib)
        calibrator = polygraphy_trt.Calibrator(calib, cache=plan.calib_cache)
        config.int8_calibrator = calibrator
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None:
        calibrator.free()
    if serialized is None:
        errors = "; ".join(logger.errors[-3:]) or "see the log above"
        del parser, network, builder, config
        raise ArtifactError(f"{facts.path}: {label} could not build an engine: {errors}")
    atomic_write(output, lambda tmp: tmp.write_bytes(memoryview(serialized)))
    if cache_path is not None and cache is not None:
        atomic_write(cache_path, lambda tmp: tmp.write_bytes(memoryview(cache.serialize())))
    record = {"warnings": list(logger.warnings)}
    if plan.detailed_profiling:
        record["layers"] = parse_layer_log(logger.layer_log)
    return applied, record


def _build_trtexec(plan: BuildPlan, facts: OnnxFacts, output: Path) -> None:
    trtexec_command(plan, facts.path, output)  # refuses before anything runs (e.g. INT8 without its cache)

    def write(tmp: Path) -> None:
        cmd = trtexec_command(plan, facts.path, tmp)
        log.info("running %s", shlex.join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.stat().st_size:
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
            raise ArtifactError(f"{facts.path}: trtexec failed (exit {proc.returncode}): {tail}")

    atomic_write(output, write)


def onnx_precision(facts: OnnxFacts) -> str:
    """The ONNX's precision as built: its manifest's (int8, fp16; int8w for weight-only INT8), else from its nodes."""
    manifest = read_manifest(facts.path, kind="onnx", required=False)
    recorded = manifest.precision if manifest else None
    if recorded == Precision.INT8 and ((manifest.quantization or {}).get("options") or {}).get("weight_bytes"):
        return Precision.INT8W
    if recorded:
        return str(recorded)
    return Precision.INT8 if facts.has_qdq else Precision.FP16 if facts.has_fp16 else Precision.FP32


def write_engine_manifest(engine: Path, facts: OnnxFacts, plan: BuildPlan, version: str, gpu: Mapping[str, Any],
                          seconds: float, builder_kind: str, options: TrtBuildOptions, record: Mapping[str, Any] | None = None) -> Path:
    """``NAME.engine.json``: TensorRT flavour and version, GPU (and TensorRT-RTX targets), precision and flags, profiles,
    ONNX sha256 and precision, build time, the builder's warnings and (TensorRT-RTX) the engine's layers by precision."""
    from vla_export.fileio import sha256_file

    record = record or {}
    rtx = plan.flavor == "rtx"
    as_built = onnx_precision(facts)
    data = build_manifest(
        MANIFEST_KIND, engine, [engine],
        tensorrt=version,
        tensorrt_flavor=plan.flavor,
        compute_capabilities=(plan.compute_capabilities or "default") if rtx else None,
        compute_capabilities_note=("the library's default targets (TensorRT-RTX 1.7: portable to 8.0, 8.6, 8.9, 12.0 per "
                                   "NVIDIA's documentation; not read from the engine)") if rtx and not plan.compute_capabilities else None,
        gpu=dict(gpu),
        precision=(Precision.INT8 if as_built == Precision.INT8W else as_built) if rtx else plan.precision,  # the parity tolerance class
        strongly_typed=plan.strongly_typed,
        flags=plan.flags,
        profiles={k: v.to_dict() for k, v in plan.profiles.items()},
        plan=plan.to_dict(),
        options=options.to_dict(),
        onnx={"path": str(facts.path), "sha256": sha256_file(facts.path), "typed": facts.typed, "precision": as_built},
        layers=record.get("layers"),
        build_warnings=record.get("warnings", []),
        io=io_signature(facts.path),  # the engine's I/O is the ONNX's: runners can name it before activation
        config=facts.config,  # the policy config travels on, for parity and the runtime
        model=facts.model,  # and how it was obtained: layout, assumptions
        builder=builder_kind,
        build_seconds=round(seconds, 2),
        parity=None,
        versions=versions(("vla-export", "tensorrt-rtx-cu12" if rtx else "tensorrt", "polygraphy", "onnx", "numpy")),
    )
    return write_manifest(engine, data)


def record_parity(engine: str | Path, parity: Mapping[str, Any]) -> Path:
    """Store a parity result (``ParityResult.to_dict()``) in the engine's manifest."""

    data = read_manifest(engine, kind=MANIFEST_KIND)
    return write_manifest(engine, data.replace(parity=dict(parity)))


class EngineFromOnnx:
    """A lazy step: calling it builds the engine (ONNX -> engine), for the CLI to compose."""

    def __init__(self, onnx: str | Path, output: str | Path, options: TrtBuildOptions = TrtBuildOptions()):
        self.onnx, self.output, self.options = Path(onnx), Path(output), options

    def __call__(self) -> TrtBuildResult:
        return build_engine(self.onnx, self.output, self.options)
