"""``vla-export triton``: write the Triton model repository that serves a fleet of robots.

The policy becomes a Python-backend model under Triton's **sequence batcher**: each robot is one
sequence (its correlation id, CORRID), the START request resets the robot's episode (its instruction,
UTF-8 bytes in a UINT8 input, is tokenised as ``Policy.reset`` does: this stub corrupts BYTES tensors
under numpy 2, see the model template), END frees the robot's state, idle sequences
expire. The ``oldest`` strategy hands several robots' steps to one execute(), where the backbone runs
on all their frames at once. The model's step is ``vla_export.runtime.Policy.step`` (see
:mod:`vla_export.serve.fleet`), over the same backends as the robot runtime:

* ``onnxrt``: the split export's ONNX parts (``vla-export onnx --split``);
* ``trt``: TensorRT engines of the parts, run by the Python backend itself;
* ``torch``: a checkpoint's parts in PyTorch (or ``preset:NAME``: seeded random weights, for benchmarks);
* ``tensorrt_plan``: the backbone engine as Triton's own TensorRT model (dynamic batching) that the
  stateful policy model calls (BLS). Needs Triton's TensorRT backend and a GPU: generated and
  validated here, not runnable on a machine without them.

Every ``config.pbtxt`` is parsed into Triton's own ``ModelConfig`` protobuf (tritonclient ships it)
before anything is written, and the repository is built in a temporary folder and renamed into place,
so it appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vla_export import interrupts, schemas
from vla_export.artifacts.kinds import strip_kind_suffix
from vla_export.artifacts.manifest import Manifest, read_manifest, read_split, validate_files, versions
from vla_export.backends.select import artifact_kind, model_loader, preset_name
from vla_export.backends.torch_runner import COMPILE_MODES, INDUCTOR_GRAPH_MODES
from vla_export.choices import TORCH_PRECISIONS
from vla_export.data.iospec import ACTIONS, ATTENTION_MASK, FEATURE, FEATURES, INPUT_IDS, PIXEL_VALUES
from vla_export.errors import ArtifactError, ConfigError
from vla_export.fileio import remove_tree, staging_dir
from vla_export.lazy import lazy_import
from vla_export.serve.fleet import RELEASE, SERVING_FILE, SERVING_SCHEMA

REPOSITORY_FILE = "vla-export-repository.json"
REPOSITORY_SCHEMA = schemas.TRITON_REPOSITORY
BACKENDS = ("onnxrt", "trt", "torch", "tensorrt_plan")
TORCH_DTYPES = tuple(p.torch_dtype_name for p in TORCH_PRECISIONS)
SERVE_INSTALL = "`pip install 'tritonclient[http,grpc]'` (the part of the serve extra that this needs)"
TEMPLATE = Path(__file__).with_name("templates") / "policy_model.py"
#: Inputs and outputs of the policy model (robots send and receive these).
FRAME, INSTRUCTION, ACTION, STEP = "FRAME", "INSTRUCTION", "ACTION", "STEP"
START, END, CORRID = "START", "END", "CORRID"


@dataclass(frozen=True)
class TritonOptions:
    name: str | None = None  # the policy model's name (default: the artifact's stem)
    backend: str | None = None  # default: onnxrt for a split export, torch for a checkpoint
    max_robots: int = 16  # sequences held at once (oldest.max_candidate_sequences)
    max_batch: int = 8  # robots per execute() (max_batch_size)
    preferred_batch: int | None = None  # default: max_batch
    queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    idle_seconds: float = 30.0  # a robot silent this long loses its state
    instances: int = 1
    text_len: int | None = None  # prompt tokens (default: the config's max_text_len)
    backbone: str | None = None  # another artifact for a part (e.g. NAME.backbone.engine)
    head: str | None = None
    providers: tuple[str, ...] = ()
    device: str = "cpu"  # torch backend
    dtype: str = "float32"  # torch backend: float32, float16 or bfloat16
    cuda_graphs: bool = False  # torch backend on CUDA: one graph per batch bucket, captured at load
    compile: str | None = None  # torch backend: a torch.compile mode for the backbone
    bucket_step: int = 8  # with cuda_graphs/compile: batch sizes captured (see batch_buckets)


@dataclass
class TritonRepository:
    """What was written: the repository, its models and the settings the policy model reads."""

    path: Path
    models: list[str]
    backend: str
    settings: dict[str, Any]
    configs: dict[str, str] = field(default_factory=dict)
    runnable_here: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"schema": REPOSITORY_SCHEMA, "path": str(self.path), "models": self.models, "backend": self.backend,
                "runnable_here": self.runnable_here, "settings": self.settings}


def model_config_class():
    """Triton's ``ModelConfig`` protobuf message class (from tritonclient's generated modules)."""
    pb2 = lazy_import("tritonclient.grpc.model_config_pb2", purpose="validating Triton model configs", install=SERVE_INSTALL)
    return pb2.ModelConfig


def validate_config(text: str, *, where: str) -> Any:
    """Parse ``text`` as a Triton ``ModelConfig`` (unknown fields, wrong types and bad enums fail) and check
    what the parser cannot: names, batching, sequence controls. The parsed message, or ArtifactError.
    """
    text_format = lazy_import("google.protobuf.text_format", purpose="validating Triton model configs", install=SERVE_INSTALL)
    pb2 = lazy_import("tritonclient.grpc.model_config_pb2", purpose="validating Triton model configs", install=SERVE_INSTALL)
    try:
        config = text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ArtifactError(f"{where}: not a valid Triton model config: {exc}") from None
    problems = []
    if not config.name:
        problems.append("no name")
    if bool(config.backend) == bool(config.platform):
        problems.append("exactly one of backend and platform must be set")
    if config.HasField("dynamic_batching") and config.max_batch_size < 1:
        problems.append("dynamic batching needs max_batch_size >= 1")
    names = [t.name for t in list(config.input) + list(config.output)]
    if len(set(names)) != len(names) or not all(names):
        problems.append(f"input/output names must be unique and non-empty, got {names}")
    for tensor in list(config.input) + list(config.output):
        if tensor.data_type == pb2.DataType.TYPE_INVALID or not tensor.dims:
            problems.append(f"{tensor.name}: needs a data_type and dims")
    if config.HasField("sequence_batching"):
        seq = config.sequence_batching
        kinds = {c.kind for ci in seq.control_input for c in ci.control}
        for need in ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_CORRID"):
            if pb2.ModelSequenceBatching.Control.Kind.Value(need) not in kinds:
                problems.append(f"sequence_batching lacks a {need} control input")
        if seq.HasField("oldest"):
            if config.max_batch_size < 1:
                problems.append("the oldest strategy needs max_batch_size >= 1")
            if any(b > config.max_batch_size for b in seq.oldest.preferred_batch_size):
                problems.append("a preferred batch size exceeds max_batch_size")
    if problems:
        raise ArtifactError(f"{where}: invalid Triton model config: {'; '.join(problems)}")
    return config


def _tensor(name: str, dtype: str, dims: list[int], *, optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{opt} }}'


def _control(name: str, kind: str, extra: str) -> str:
    return f'    {{ name: "{name}" control [ {{ kind: {kind} {extra} }} ] }}'


def sequence_slots(options: TritonOptions) -> int:
    """Triton's sequence slots per instance: ``--max-robots`` plus room for the robots being refused.

    With no slot free, Triton queues a new sequence's START (its backlog) until one frees, with no answer
    at all; the model holds the ``--max-robots`` limit itself instead, so a robot over it is told "no free
    slot" at once. A refused START's sequence is ended by the model in its next execution (see the model
    template); the extra slots hold those meanwhile: one batch's worth, at least 4.
    """
    return options.max_robots + max(options.max_batch, 4)


def policy_config(name: str, *, action_dim: int, options: TritonOptions, gpu: bool) -> str:
    """The stateful policy model's ``config.pbtxt``: sequence batcher (oldest), START/END/CORRID."""
    preferred = options.preferred_batch or min(options.max_batch, options.max_robots)
    flag = "int32_false_true: [ 0, 1 ]"
    return "\n".join([
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {options.max_batch}",
        "input [",
        _tensor(FRAME, "TYPE_UINT8", [-1, -1, 3]) + ",",
        _tensor(INSTRUCTION, "TYPE_UINT8", [-1], optional=True) + ",",
        _tensor(RELEASE, "TYPE_UINT8", [1], optional=True),
        "]",
        "output [",
        _tensor(ACTION, "TYPE_FP32", [action_dim]) + ",",
        _tensor(STEP, "TYPE_INT64", [1]),
        "]",
        "sequence_batching {",
        f"  max_sequence_idle_microseconds: {int(options.idle_seconds * 1e6)}",
        "  control_input [",
        _control(START, "CONTROL_SEQUENCE_START", flag) + ",",
        _control(END, "CONTROL_SEQUENCE_END", flag) + ",",
        _control(CORRID, "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_UINT64"),
        "  ]",
        f"  oldest {{ max_candidate_sequences: {sequence_slots(options)} preferred_batch_size: [ {preferred} ] "
        f"max_queue_delay_microseconds: {options.queue_delay_us} }}",
        "}",
        f"instance_group [ {{ count: {options.instances} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]",
        "",
    ])


def backbone_plan_config(name: str, *, image_size: int, feature_dim: int, options: TritonOptions) -> str:
    """The ``tensorrt_plan`` backbone model: Triton's TensorRT backend, dynamic batching across robots."""
    preferred = options.preferred_batch or options.max_batch
    return "\n".join([
        f'name: "{name}"',
        'platform: "tensorrt_plan"',
        f"max_batch_size: {options.max_batch}",
        "input [",
        _tensor(PIXEL_VALUES, "TYPE_FP32", [3, image_size, image_size]) + ",",
        _tensor(INPUT_IDS, "TYPE_INT64", [-1]) + ",",
        _tensor(ATTENTION_MASK, "TYPE_INT64", [-1]),
        "]",
        "output [",
        _tensor(FEATURE, "TYPE_FP32", [feature_dim]),
        "]",
        f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] max_queue_delay_microseconds: {options.queue_delay_us} }}",
        "instance_group [ { count: 1 kind: KIND_GPU } ]",
        "",
    ])


def _place(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (large parts are not copied), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


#: What each part's I/O is (``data.iospec``'s names): the backbone maps a frame to one feature, the head a window of them to the action.
PART_IO = {"backbone": ({PIXEL_VALUES, INPUT_IDS, ATTENTION_MASK}, {FEATURE}), "head": ({FEATURES}, {ACTIONS})}


def check_part(path: Path, part: str, manifest: Manifest) -> None:
    """``path`` (--backbone/--head) must be that part of a split export: a whole policy there loads and
    fails only when the first robot is served."""
    io = manifest.io or {}
    inputs, outputs = ({v["name"] for v in io.get(k, [])} for k in ("inputs", "outputs"))
    want_in, want_out = PART_IO[part]
    recorded = manifest.part
    if (recorded is not None and recorded != part) or (io and (not want_in <= inputs or outputs != want_out)):
        what = f"the {recorded} part" if recorded else "a whole policy" if ACTIONS in outputs and PIXEL_VALUES in inputs else "another model"
        raise ArtifactError(f"{path}: --{part} is {what} (inputs {sorted(inputs)}, outputs {sorted(outputs)}), not the {part} part "
                            f"({sorted(want_in)} -> {sorted(want_out)}): pass NAME.{part}.onnx of a split export "
                            f"(`vla-export onnx CKPT --split`) or an engine built from it")


def _with_manifest(path: Path, kind: str, part: str | None = None) -> list[Path]:
    """``path`` and its manifest, after checking the manifest's kind, listed files and (given ``part``) I/O."""
    manifest = read_manifest(path, kind=kind)
    validate_files(path, manifest)
    if part is not None:
        check_part(path, part, manifest)
    return [path, path.with_name(path.name + ".json")] + [path.parent / f.name for f in manifest.files if f.name != path.name]


def _engine_info(path: Path, part: str | None = None) -> dict[str, Any]:
    manifest = read_manifest(path, kind="engine")
    validate_files(path, manifest)
    if part is not None:
        check_part(path, part, manifest)
    extra = manifest.extra
    return {"file": path.name, "gpu": extra.get("gpu") or {}, "tensorrt": extra.get("tensorrt"),
            "tensorrt_flavor": extra.get("tensorrt_flavor") or "tensorrt", "plan": extra.get("plan") or {}}


def _sources(artifact: Path, options: TritonOptions, load: Any = None) -> tuple[str, dict[str, Any], dict[str, list[Path]], dict[str, Any]]:
    """(backend, config dict, files to place per role, engines info) for ``artifact``, all checked.

    The kind is the runner selector's (:func:`~vla_export.backends.select.artifact_kind`); a name of no
    other kind is a split export's record, prefix or folder, which :func:`read_split` checks. ``load``
    (the checkpoint loading options) gives the checkpoint's config, as the served model will load it.
    """
    kind = artifact_kind(artifact, allowed=("preset", "checkpoint", "split", "onnx", "engine"), otherwise="split")
    if load is not None and kind != "checkpoint":
        why = "a preset has its own config" if kind == "preset" else "its config is the one recorded with it"
        raise ConfigError(f"--config, --rename, --set and --trust-checkpoint load a checkpoint; {artifact} is not one ({why})")
    if kind == "preset":  # seeded random weights, for benchmarks (as in vla-bench)
        if (options.backend or "torch") != "torch":
            raise ConfigError(f"{artifact}: a preset serves with --backend torch")
        return "torch", model_loader(str(artifact)).config.to_dict(), {}, {}
    if kind == "checkpoint":
        backend = options.backend or "torch"
        if backend != "torch":
            raise ConfigError(f"{artifact}: a checkpoint serves with --backend torch; for {backend}, export it first "
                              f"(`vla-export onnx {artifact} --split`) and pass the split export")
        cfg = model_loader(artifact, load=load)().config
        return backend, cfg.to_dict(), {"checkpoint": [artifact]}, {}
    if kind in ("onnx", "engine"):
        raise ArtifactError(f"{artifact}: a whole-policy {artifact.suffix.lower()} cannot keep per-robot state; serve a split export "
                            f"(`vla-export onnx CKPT --split -o NAME.onnx`, then NAME.split.json) or a checkpoint")
    record = read_split(artifact)
    backend = options.backend or "onnxrt"
    if backend == "torch":
        raise ConfigError(f"{artifact}: --backend torch serves a checkpoint; pass the checkpoint instead of the split export")
    split_file = record.path
    chosen = {"backbone": options.backbone, "head": options.head}
    files: dict[str, list[Path]] = {"split": [split_file]}
    engines: dict[str, Any] = {}
    for part in ("backbone", "head"):
        path = Path(chosen[part]) if chosen[part] else record.parts[part]
        if not path.exists():
            raise ArtifactError(f"{path}: the {part} part is missing (listed in {split_file.name})" if not chosen[part]
                                else f"{path}: --{part} not found")
        if artifact_kind(path, allowed=("onnx", "engine")) == "engine":
            engines[part] = _engine_info(path, part)
            files[part] = [path, path.with_name(path.name + ".json")]
        else:
            files[part] = _with_manifest(path, "onnx", part)
    if backend in ("trt", "tensorrt_plan"):
        need = ("backbone", "head") if backend == "trt" else ("backbone",)
        missing = [p for p in need if p not in engines]
        if missing:
            raise ConfigError(f"--backend {backend} needs TensorRT engines for {missing}: pass --{missing[0]} NAME.{missing[0]}.engine "
                              f"(built with `vla-export trt NAME.{missing[0]}.onnx`)")
        rtx = [p for p in need if engines[p]["tensorrt_flavor"] == "rtx"]
        if backend == "tensorrt_plan" and rtx:
            raise ConfigError(f"{engines[rtx[0]]['file']}: a TensorRT-RTX engine, which Triton's TensorRT backend (libnvinfer) cannot "
                              "load; serve it with --backend trt (the Python backend runs it through TensorRT-RTX on a supported "
                              "GPU), or build the backbone with TensorRT for --backend tensorrt_plan")
    elif engines:
        raise ConfigError(f"--backend {backend} runs ONNX parts; engines given for {sorted(engines)}: use --backend trt")
    return backend, record.to_dict()["config"], files, engines


def batch_buckets(max_batch: int, step: int = 8) -> tuple[int, ...]:
    """The batch sizes a CUDA-graph server captures: powers of two below ``step``, then every multiple of
    ``step``, up to ``max_batch`` (``step`` 1: every size).

    With the default 8, a batch of 5 robots replays the graph for 8 and one of 41 the graph for 48: at most
    7 padded rows (powers of two above 8 wasted up to 40% of the H100 on padding), for a dozen graphs
    captured before the first robot. Each graph keeps its own activation memory, so ``step`` 1 trades GPU
    memory (and load time) for no padding at all.
    """
    if step < 1:
        raise ConfigError(f"--bucket-step must be >= 1, got {step}")
    sizes = [b for b in (1, 2, 4, 8, 16, 32) if b < min(step, max_batch)] + list(range(step, max_batch, step))
    return tuple(sorted({*sizes, max_batch}))


def runner_settings(options: TritonOptions) -> dict[str, Any]:
    """:class:`~vla_export.backends.torch_runner.ModuleRunner` options of the torch backend's parts."""
    if not (options.cuda_graphs or options.compile):
        return {}
    graphs = options.cuda_graphs
    return {"cuda_graph": graphs, "compile": options.compile or False, "patch_matmul": graphs or bool(options.compile),
            "batch_buckets": list(batch_buckets(options.max_batch, options.bucket_step)),  # compiled too: a few static shapes
            "head_opts": {"compile": False, "patch_matmul": False}}


def write_repository(artifact: str | Path, output: str | Path, options: TritonOptions = TritonOptions(), *, load: Any = None) -> TritonRepository:
    """Check ``artifact``, generate and validate every config, and publish the repository at ``output`` atomically.

    ``output`` may hold an earlier repository written by this command (replaced as a whole); any other
    existing non-empty folder is refused. ``load`` (:class:`~vla_export.models.resolve.LoadOptions`, a
    checkpoint's ``--config/--rename/--set/--trust-checkpoint``) is recorded in the serving settings
    (``"load"``, only when given), so the served model loads the checkpoint as the command line said.
    """
    from vla_export.models.config import PolicyConfig

    load = load if load is not None and load.given else None
    preset = preset_name(artifact)
    artifact, output = Path(artifact), Path(output)
    if options.backend is not None and options.backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {options.backend!r}")
    for label, value in (("--max-robots", options.max_robots), ("--max-batch", options.max_batch), ("--instances", options.instances)):
        if value < 1:
            raise ConfigError(f"{label} must be >= 1, got {value}")
    if options.preferred_batch is not None and not 1 <= options.preferred_batch <= options.max_batch:
        raise ConfigError(f"--preferred-batch must be between 1 and --max-batch ({options.max_batch}), got {options.preferred_batch}")
    if options.dtype not in TORCH_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(TORCH_DTYPES)} (the torch backend's compute precision), got {options.dtype!r}; "
                          "for INT8, serve a quantized split export (`vla-export quantize`) or TensorRT engines")
    if not options.idle_seconds > 0 or options.queue_delay_us < 0:
        raise ConfigError("--idle-seconds must be positive and --queue-delay-us not negative")
    if output.exists() and any(output.iterdir()) and not (output / REPOSITORY_FILE).exists():
        raise ConfigError(f"{output}: exists and is not a repository written by `vla-export triton`; choose an empty or new folder")
    backend, config, files, engines = _sources(artifact, options, load)
    if options.dtype != "float32" and backend != "torch":
        raise ConfigError(f"--dtype applies to --backend torch; the {backend} parts run in the precision they were exported or built in")
    if (options.cuda_graphs or options.compile) and backend != "torch":
        raise ConfigError(f"--cuda-graphs and --compile apply to --backend torch, not {backend}")
    batch_buckets(options.max_batch, options.bucket_step)  # checks --bucket-step
    if options.cuda_graphs and not options.device.startswith("cuda"):
        raise ConfigError(f"--cuda-graphs needs --device cuda, got --device {options.device}")
    if options.compile and options.compile not in COMPILE_MODES:
        raise ConfigError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {options.compile!r}")
    if options.cuda_graphs and options.compile in INDUCTOR_GRAPH_MODES:
        raise ConfigError(f"--compile {options.compile} captures its own CUDA graphs; with --cuda-graphs use default or max-autotune-no-cudagraphs")
    cfg = PolicyConfig.from_dict(config)
    text_len = cfg.max_text_len if options.text_len is None else options.text_len  # 0 is refused, not "the default"
    if not 1 <= text_len <= cfg.max_text_len:
        raise ConfigError(f"--text-len must be between 1 and the config's max_text_len ({cfg.max_text_len}), got {text_len}")
    name = options.name or _default_name(artifact)
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"--name {name!r}: use letters, digits, '_' and '-' only")
    gpu = backend in ("trt", "tensorrt_plan") or options.device.startswith("cuda") or any("CUDA" in p for p in options.providers)
    configs = {name: policy_config(name, action_dim=cfg.action_dim, options=options, gpu=gpu)}
    backbone_model = None
    if backend == "tensorrt_plan":
        backbone_model = f"{name}_backbone"
        configs[backbone_model] = backbone_plan_config(backbone_model, image_size=cfg.image_size, feature_dim=cfg.frame_feature_dim, options=options)
    for model, text in configs.items():
        validate_config(text, where=f"{model}/config.pbtxt")
    runner = runner_settings(options)
    role_files = {role: paths[0].name for role, paths in files.items()}
    if backbone_model:
        role_files.pop("backbone")
    settings = {
        "schema": SERVING_SCHEMA,
        "backend": backend,
        "files": role_files,
        "config": config,
        "window": int(cfg.window if backend == "torch" else read_split(files["split"][0]).window),
        "text_len": text_len,
        "max_robots": options.max_robots,
        "idle_seconds": options.idle_seconds,
        "providers": list(options.providers),
        "device": options.device,
        "dtype": options.dtype,
        "preset": preset,
        "backbone_model": backbone_model,
        "engines": engines,
        "runner": runner,
        "warm_up": runner.get("batch_buckets", []),  # every bucket captured (and compiled) at load
        "options": asdict(options),
    }
    if load is not None:
        settings["load"] = load.to_record()
    with staging_dir(output) as tmp:  # a file-system error names the repository; nothing is left behind
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: another user's server (a container) must read it
        version = tmp / name / "1"
        version.mkdir(parents=True)
        for role, paths in files.items():
            if role == "backbone" and backbone_model:
                continue
            for path in paths:
                _place(path, version / path.name)
        shutil.copyfile(TEMPLATE, version / "model.py")
        (version / SERVING_FILE).write_text(json.dumps(settings, indent=2, default=str) + "\n")
        if backbone_model:
            _place(files["backbone"][0], tmp / backbone_model / "1" / "model.plan")
        for model, text in configs.items():
            (tmp / model / "config.pbtxt").write_text(text)
        result = TritonRepository(output, list(configs), backend, settings, configs, runnable_here=backend in ("onnxrt", "torch"))
        record = result.to_dict() | {"artifact": str(artifact), "policy_model": name, "versions": versions(("vla-export", "tritonclient", "numpy", "onnxruntime", "torch"))}
        (tmp / REPOSITORY_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        _publish(tmp, output)
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_name(artifact: Path) -> str:
    if preset_name(artifact) is not None:
        return str(preset_name(artifact)).replace("-", "_")
    stem = strip_kind_suffix(artifact, ("split", "checkpoint"))
    if artifact.is_dir():
        stem = read_split(artifact).stem
    return stem.replace(".", "_") or "policy"


def _publish(tmp: Path, output: Path) -> None:
    """Rename the finished repository into place; an earlier one is swapped out, then removed. Not after
    Ctrl-C or SIGTERM, and not cut by one (see :mod:`vla_export.interrupts`)."""
    old = None
    with interrupts.deferred():
        if output.exists():
            old = output.with_name(f".{output.name}.{os.getpid()}.old.partial")  # removed by a later run if this one is killed
            os.replace(output, old)
        try:
            os.replace(tmp, output)
        except OSError:
            if old is not None:
                os.replace(old, output)
            raise
    if old is not None:
        remove_tree(old)


def load_seconds(record: Mapping[str, Any]) -> float:
    """How long to wait for a repository's models to load: 60 s, or 15 minutes when the policy model
    compiles its backbone (``--compile``: a few torch.compile runs per instance while it loads)."""
    return 900.0 if record.get("settings", {}).get("options", {}).get("compile") else 60.0


def read_repository(path: str | Path) -> dict[str, Any]:
    """The record ``vla-export triton`` wrote at the repository's root; ArtifactError when there is none."""
    path = Path(path)
    record = path / REPOSITORY_FILE
    if not path.is_dir():
        raise ArtifactError(f"{path}: model repository not found (write one with `vla-export triton ARTIFACT -o {path}`)")
    if not record.exists():
        raise ArtifactError(f"{path}: no {REPOSITORY_FILE}: not a repository written by `vla-export triton`")
    try:
        data = json.loads(record.read_text())
    except ValueError as exc:
        raise ArtifactError(f"{record}: not readable JSON ({exc})") from None
    if data.get("schema") != REPOSITORY_SCHEMA:
        raise ArtifactError(f"{record}: schema {data.get('schema')!r}, expected {REPOSITORY_SCHEMA!r}")
    return data
