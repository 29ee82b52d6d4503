"""What to benchmark: artifacts (checkpoint, preset, ONNX, engine) crossed with backend specs -> lazy runners.

A backend spec is ``NAME[:OPTION...]``:

- ``torch[:cpu|cuda][:fp32|fp16|bf16][:cudagraph][:compile[=MODE]][:patchmm][:fuseqkv][:int8|fp8]`` for checkpoints
  and presets (``patchmm``: ViT patch embeddings as matmuls, see :func:`~vla_export.backends.torch_runner.rewrite_patch_convs`;
  ``fuseqkv``: one Q/K/V GEMM per self-attention; ``int8``/``fp8``: 8-bit weights and per-token 8-bit
  activations in the large linears; both in :mod:`vla_export.backends.torch_fast`);
- ``onnxrt[:cpu|cuda|trt]`` for ``.onnx`` files (the onnxruntime execution provider);
- ``trt`` for TensorRT engines (``.engine``/``.plan``).

An artifact ``preset:NAME`` is a policy of that preset with random weights, built directly on the
target device (no multi-GB checkpoint to copy). Nothing is loaded until a runner is activated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_export.backends.base import Runner
from vla_export.backends.select import artifact_kind as select_kind, preset_name, runner_for_artifact
from vla_export.choices import Precision, TORCH_PRECISIONS
from vla_export.data.iospec import PIXEL_VALUES
from vla_export.errors import ArtifactError, ConfigError
from vla_export.models.config import get_preset, PolicyConfig

#: Which backends run which artifact kind; the first is the default.
BACKENDS_FOR_KIND = {"checkpoint": ("torch",), "preset": ("torch",), "onnx": ("onnxrt",), "engine": ("trt",)}
DTYPE_ALIASES = {p.value: p.torch_dtype_name for p in TORCH_PRECISIONS}
_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "trt": "TensorrtExecutionProvider"}


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend spec (see the module docstring)."""

    kind: str  # torch | onnxrt | trt
    device: str = "cpu"
    dtype: str = "float32"
    cuda_graph: bool = False
    compile: str | None = None
    patch_matmul: bool = False
    fuse_qkv: bool = False
    quantize: str | None = None
    provider: str | None = None
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        name, *opts = text.strip().split(":")
        if name == "torch":
            fields: dict[str, Any] = {}
            for opt in opts:
                if opt in ("cpu", "cuda"):
                    fields["device"] = opt
                elif opt in DTYPE_ALIASES:
                    fields["dtype"] = DTYPE_ALIASES[opt]
                elif opt == "cudagraph":
                    fields["cuda_graph"] = True
                elif opt == "patchmm":
                    fields["patch_matmul"] = True
                elif opt == "fuseqkv":
                    fields["fuse_qkv"] = True
                elif opt in (Precision.INT8, "fp8"):
                    if fields.get("quantize", opt) != opt:
                        raise ConfigError(f"backend {text!r}: give one of int8 and fp8, not both")
                    fields["quantize"] = opt
                elif opt == "compile" or opt.startswith("compile="):
                    fields["compile"] = opt.partition("=")[2] or "default"
                else:
                    raise ConfigError(f"backend {text!r}: unknown torch option {opt!r} (cpu, cuda, fp32, fp16, bf16, cudagraph, compile[=MODE], patchmm, fuseqkv, int8, fp8)")
            if fields.get("cuda_graph") and "device" not in fields:
                fields["device"] = "cuda"
            return cls("torch", text=text, **fields)
        if name == "onnxrt":
            if len(opts) > 1 or (opts and opts[0] not in _ORT_PROVIDERS):
                raise ConfigError(f"backend {text!r}: expected onnxrt[:cpu|cuda|trt]")
            key = opts[0] if opts else "cpu"
            return cls("onnxrt", device="cpu" if key == "cpu" else "cuda", provider=_ORT_PROVIDERS[key], text=text)
        if name == "trt":
            if opts:
                raise ConfigError(f"backend {text!r}: 'trt' takes no options (precision is fixed when the engine is built)")
            return cls("trt", device="cuda", text=text)
        raise ConfigError(f"unknown backend {text!r}; use torch[:...], onnxrt[:cpu|cuda|trt] or trt")


def artifact_kind(artifact: str) -> str:
    """The runner selector's kind, ``preset`` included (``preset:NAME``)."""
    return select_kind(artifact, allowed=("preset", "onnx", "engine", "checkpoint"))




@dataclass
class Target:
    """One (artifact, backend) pair to time; ``make_runner`` builds the runner without activating it."""

    artifact: str
    kind: str
    spec: BackendSpec
    make_runner: Callable[[], Runner] = field(repr=False)
    config: PolicyConfig | None = None  # known before activation (presets, --config); else read from the runner
    #: The same weights in float32, eager, on the row's device, giving features too: the parity reference (torch rows).
    make_reference: Callable[[], Runner] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        name = self.artifact if self.kind == "preset" else Path(self.artifact).name
        return f"{name} [{self.spec.text}]"


def _runner_factory(artifact: str, kind: str, spec: BackendSpec, config: PolicyConfig | None, seed: int, load: Any = None,
                    *, features: bool = False) -> Callable[[], Runner]:
    """``features``: torch runners also return the per-frame features (for the parity check). Every runner
    comes from :func:`~vla_export.backends.select.runner_for_artifact`."""
    allowed = ("preset", "onnx", "engine", "checkpoint")
    if spec.kind == "torch":
        if load is None and config is not None and kind == "checkpoint":
            from vla_export.models.resolve import LoadOptions

            load = LoadOptions(config=config)
        if kind == "preset":
            load = None  # a preset's config is its own (plan_targets took it from the preset)
        return lambda: runner_for_artifact(artifact, load=load, seed=seed, allowed=allowed, device=spec.device, dtype=spec.dtype,
                                           cuda_graph=spec.cuda_graph, compile=spec.compile or False, patch_matmul=spec.patch_matmul,
                                           fuse_qkv=spec.fuse_qkv, quantize=spec.quantize, debug_outputs=features)
    return lambda: runner_for_artifact(artifact, providers=[spec.provider] if spec.provider else None)


#: The window when no artifact fixes one: one new frame per inference.
DEFAULT_WINDOW = 1


def artifact_window(artifact: str) -> int | None:
    """The window an exported artifact was made for: its fixed ``pixel_values`` window axis, else the
    manifest's window; ``None`` for checkpoints, presets and artifacts that record none.
    """
    from vla_export.artifacts.manifest import read_manifest

    kind = artifact_kind(artifact)
    if kind in ("checkpoint", "preset"):
        return None
    if kind == "onnx":
        from vla_export.artifacts.onnxfile import require_external_data
        from vla_export.artifacts.onnxfile import io_signature

        require_external_data(artifact)  # a readable model with its weights, or one line saying why not
        shapes = {v["name"]: v["shape"] for v in io_signature(artifact)["inputs"]}
        pixels = shapes.get(PIXEL_VALUES, [])
        if len(pixels) == 5 and isinstance(pixels[1], int):
            return pixels[1]
    manifest = read_manifest(artifact, required=False)
    return manifest.window if manifest else None


def default_window(artifacts: Sequence[str]) -> int:
    """``--window`` when not given: the window the artifacts were exported for (they must agree), else 1."""
    found = {a: w for a in artifacts if (w := artifact_window(a)) is not None}
    windows = sorted(set(found.values()))
    if len(windows) > 1:
        listed = ", ".join(f"{Path(a).name}: {w}" for a, w in found.items())
        raise ConfigError(f"the artifacts were exported for different windows ({listed}); pass --window")
    return windows[0] if windows else DEFAULT_WINDOW


def plan_targets(
    artifacts: Sequence[str], backends: Sequence[str], *, config: PolicyConfig | None = None, seed: int = 0, load: Any = None,
    parity: bool = False,
) -> list[Target]:
    """Every artifact with every backend that can run it (each kind's default when no backend is given).

    ``load`` (:class:`~vla_export.models.resolve.LoadOptions`) is how checkpoints are loaded (the CLI's shared options).
    ``parity``: torch rows also return features and carry a float32 reference runner (``make_reference``).

    A backend that fits none of the artifacts is an error rather than a silently shorter table.
    """
    specs = [BackendSpec.parse(b) for b in backends]
    targets: list[Target] = []
    used: set[str] = set()
    for artifact in artifacts:
        kind = artifact_kind(artifact)
        if kind not in ("preset",) and not Path(artifact).exists():
            raise ArtifactError(f"{artifact}: file not found")
        cfg = get_preset(preset_name(artifact) or "") if kind == "preset" else config
        allowed = BACKENDS_FOR_KIND[kind]
        chosen = [s for s in specs if s.kind in allowed] if specs else [BackendSpec.parse(allowed[0])]
        for spec in chosen:
            used.add(spec.text)
            reference = None
            if parity and spec.kind == "torch":
                ref_spec = BackendSpec("torch", device=spec.device, text=f"torch:{spec.device}:fp32")
                reference = _runner_factory(artifact, kind, ref_spec, cfg, seed, load, features=True)
            targets.append(Target(artifact, kind, spec, _runner_factory(artifact, kind, spec, cfg, seed, load, features=parity), cfg, reference))
    unused = [s.text for s in specs if s.text not in used]
    if unused:
        raise ConfigError(f"backend(s) {', '.join(unused)} fit none of the artifacts given ({', '.join(artifacts)})")
    return targets
