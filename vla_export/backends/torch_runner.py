"""PyTorch backend: eager fp32/fp16/bf16, optionally torch.compile and/or CUDA-graph replay.

This is the fast path for users without TensorRT. ``cuda_graph=True`` captures the whole forward once
per input shape and replays it (one launch instead of about a thousand kernels at batch 1), keeping
one graph per shape. ``batch_buckets`` pads a batch up to the next listed size (and splits one larger
than the largest), so a server whose batch size varies with the robots waiting replays a few graphs
captured up front instead of capturing a new one per size.
``compile`` takes a torch.compile mode; with ``cuda_graph`` too, inductor's own graphs are turned
off and the compiled forward is captured here, so there is exactly one capture. All graphs of one runner
share one memory pool (each runner's outputs are valid until its next execute, so a replay may reuse the
memory of another shape's graph): capturing every batch size of a server costs about one graph's memory.
``fuse_qkv`` and ``quantize`` re-pack the weights (:mod:`vla_export.backends.torch_fast`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vla_export.choices import TORCH_PRECISIONS, parse_precision
from vla_export.backends.base import Runner
from vla_export.data.iospec import POLICY
from vla_export.backends.torch_frames import FrameStaging
from vla_export.backends.torch_fast import QUANT_KINDS, fuse_qkv, quantize_linears
from vla_export.errors import RunnerError

DTYPES = tuple(p.torch_dtype_name for p in TORCH_PRECISIONS)
#: torch.compile modes; the two with inductor's CUDA graphs cannot be combined with ``cuda_graph``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
INDUCTOR_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _patch_matmul_class():
    """Defined lazily so this module imports without torch."""
    from torch import nn

    class PatchMatmul(nn.Module):
        """A non-overlapping patch convolution (stride == kernel, no padding) computed as one matmul.

        Same parameters (``weight`` [out, in, kh, kw], ``bias``) and same result as the convolution it
        replaces. At batch 1 the ViT patch embedding is a GEMM with K = 3*14*14 = 588, which cuDNN runs
        through a slow unaligned convolution path (0.18 ms per call on an H200), cuBLAS in microseconds.
        """

        def __init__(self, conv: nn.Conv2d):
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias
            self.kh, self.kw = conv.kernel_size

        def forward(self, x):
            b, c, h, w = x.shape
            gh, gw = h // self.kh, w // self.kw
            x = x[:, :, : gh * self.kh, : gw * self.kw].reshape(b, c, gh, self.kh, gw, self.kw)
            x = x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * self.kh * self.kw)
            y = nn.functional.linear(x, self.weight.reshape(self.weight.shape[0], -1), self.bias)
            return y.transpose(1, 2).reshape(b, -1, gh, gw)

    return PatchMatmul


def rewrite_patch_convs(module) -> int:
    """Replace every non-overlapping patch ``Conv2d`` in ``module`` by :class:`PatchMatmul`; returns how many."""
    from torch import nn

    cls = _patch_matmul_class()
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.Conv2d)
                and child.stride == child.kernel_size
                and child.padding in ((0, 0), "valid")
                and child.dilation == (1, 1)
                and child.groups == 1
            ):
                setattr(parent, name, cls(child))
                count += 1
    return count


def preprocess_on(frames: Sequence[np.ndarray], image_size: int, *, device: str, dtype: str = "float32") -> Any:
    """uint8 [H, W, 3] frames -> a ``dtype`` tensor [N, 3, S, S] on ``device``, by
    :func:`~vla_export.data.preprocess.preprocess_tensor`; frames of one size go through together, the order is kept.
    One-off (pageable memory); a runner keeps a :class:`~vla_export.backends.torch_frames.FrameStaging` instead."""
    return FrameStaging(device, dtype, pin=False)(frames, image_size)


class ModuleRunner(Runner):
    """Runs a torch module (or a loader returning one) whose positional inputs and outputs are named.

    The policy runner (:class:`TorchRunner`) and the streaming parts (backbone, head) are both this.
    ``patch_matmul=True`` computes the ViT patch embeddings as matmuls (:func:`rewrite_patch_convs`;
    same weights, same result).

    A module passed in (rather than a loader) is moved, cast and rewritten in place, not copied: a
    full-size policy has no room for a second copy. Give each runner its own loader when runners of
    different dtypes or devices must coexist.
    """

    def __init__(
        self,
        module_or_loader: Any,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        label: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        cuda_graph: bool = False,
        compile: bool | str = False,
        patch_matmul: bool = False,
        batch_buckets: Sequence[int] | None = None,
        fuse_qkv: bool = False,
        quantize: str | None = None,
    ):
        super().__init__()
        if dtype not in DTYPES:
            raise RunnerError(f"torch dtype must be one of {DTYPES}, got {dtype!r}")
        if cuda_graph and not device.startswith("cuda"):
            raise RunnerError("CUDA-graph capture needs device='cuda'")
        compile_mode = "default" if compile is True else (compile or None)
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise RunnerError(f"torch.compile mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
        if cuda_graph and compile_mode in INDUCTOR_GRAPH_MODES:
            raise RunnerError(
                f"compile mode {compile_mode!r} already captures CUDA graphs; use it without cuda_graph, "
                "or 'max-autotune-no-cudagraphs' with cuda_graph"
            )
        if quantize is not None and quantize not in QUANT_KINDS:
            raise RunnerError(f"quantize must be one of {QUANT_KINDS}, got {quantize!r}")
        buckets = tuple(sorted({int(b) for b in batch_buckets or ()}))
        if buckets and buckets[0] < 1:
            raise RunnerError(f"batch buckets must be >= 1, got {list(buckets)}")
        self.batch_buckets = buckets
        self._source = module_or_loader
        self._inputs, self._outputs = tuple(input_names), tuple(output_names)
        self._device, self.dtype = device, dtype
        self.cuda_graph, self.compile = cuda_graph, compile_mode
        self.patch_matmul, self.fuse_qkv, self.quantize = patch_matmul, fuse_qkv, quantize
        self.rewrites: dict[str, int] = {}  # what the re-packings replaced, counted at activation
        mode = ("+patchmm" if patch_matmul else "") + ("+fuseqkv" if fuse_qkv else "") + (f"+{quantize}" if quantize else "")
        mode += ("+compile" + ("" if compile_mode == "default" else f"-{compile_mode}") if compile_mode else "") + ("+cudagraph" if cuda_graph else "")
        name = f"torch-{device.split(':')[0]}-{parse_precision(dtype)}{mode}"
        self.name = f"{label}:{name}" if label else name
        self.module: Any = None
        self._graphs: dict[tuple, tuple[Any, dict[str, Any], Any]] = {}  # input shapes -> (graph, static in, static out)
        self._staging: FrameStaging | None = None  # a CUDA runner's raw-frame upload and preprocessing (made at first use)
        self._pool: Any = None

    @property
    def input_names(self) -> Sequence[str]:
        return self._inputs

    @property
    def output_names(self) -> Sequence[str]:
        return self._outputs

    @property
    def device(self) -> str:
        return "cuda" if self._device.startswith("cuda") else "cpu"

    @property
    def precision(self) -> str:
        return self.dtype

    @property
    def config(self):
        """The policy config of the active module (None before activation or for a module without one)."""
        return getattr(self.module, "cfg", None)

    def describe(self) -> dict[str, Any]:
        import torch

        info = super().describe() | {
            "dtype": self.dtype, "cuda_graph": self.cuda_graph, "compile": self.compile, "patch_matmul": self.patch_matmul,
            "batch_buckets": list(self.batch_buckets), "fuse_qkv": self.fuse_qkv, "quantize": self.quantize,
            "rewrites": dict(self.rewrites), "torch": torch.__version__,
        }
        if self.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self._device)
        return info

    def _activate(self) -> None:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise RunnerError(f"{self.name}: CUDA is not available to torch {torch.__version__}")
        module = self._source() if callable(self._source) and not isinstance(self._source, torch.nn.Module) else self._source
        module = getattr(module, "policy", module)  # a LoadedPolicy from a loader
        self.module = module.to(device=self._device, dtype=getattr(torch, self.dtype)).eval()
        for sub in self.module.modules():
            if isinstance(sub, torch.nn.RNNBase):
                sub.flatten_parameters()  # .to() leaves cuDNN's LSTM weights in separate chunks
        if self.patch_matmul:
            self.rewrites["patch_matmul"] = rewrite_patch_convs(self.module)
        if self.fuse_qkv:
            self.rewrites["fused_qkv"] = fuse_qkv(self.module)
            if not self.rewrites["fused_qkv"]:
                raise RunnerError(f"{self.name}: fuse_qkv found no self-attention with q_proj/k_proj/v_proj in {type(self.module).__name__}")
        if self.quantize:
            self.rewrites[f"{self.quantize}_linears"] = quantize_linears(self.module, self.quantize)
            if not self.rewrites[f"{self.quantize}_linears"]:
                raise RunnerError(f"{self.name}: quantize={self.quantize} found no nn.Linear large enough to quantise")
        self._pool = None  # the one memory pool of this runner's CUDA graphs
        self._fn: Callable = self.module
        if self.compile:
            # Static shapes: a new input shape recompiles rather than running a slower dynamic kernel. With
            # batch buckets, torch's automatic dynamic shapes instead: the first (largest) bucket compiles
            # static, the second makes the batch axis dynamic for the rest (a few compiles, not one per bucket).
            self._fn = torch.compile(self.module, mode=self.compile, dynamic=None if self.batch_buckets else False, fullgraph=False)

    def _deactivate(self) -> None:
        self._graphs = {}
        self.module = self._fn = self._staging = self._pool = None
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()  # so the next runner's peak-memory figure starts clean

    @property
    def device_preprocessing(self) -> bool:
        """True when :meth:`preprocess` runs on the GPU (a CUDA runner); False: NumPy on the host."""
        return self.device == "cuda"

    def preprocess(self, frames, image_size):
        """On a CUDA device the raw uint8 frames go up through reused pinned buffers and the shared
        preprocessing runs there (:class:`~vla_export.backends.torch_frames.FrameStaging`): a server's CPU
        would otherwise cap its frame rate (64 frames of 224x224 took 152 ms with NumPy on the H100 server's
        CPU, 4 ms on its GPU), and one 720x1280 frame costs ~4 ms of NumPy on the H200 host. The returned
        tensor is valid until the next call. CPU runners (and the Jetson's TensorRT path) keep NumPy."""
        if self.device != "cuda":
            return super().preprocess(frames, image_size)
        if self._staging is None:
            self._staging = FrameStaging(self._device, self.dtype)
        return self._staging(frames, image_size)

    def stage(self, feed):
        """Host arrays are copied to the device; tensors (e.g. from :meth:`preprocess`) are used where they are."""
        import torch

        out = {}
        for name in self.input_names:
            value = feed[name]
            t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            t = t.to(self._device, non_blocking=True)
            if t.is_floating_point():
                t = t.to(getattr(torch, self.dtype))
            out[name] = t
        return out

    def _forward(self, staged):
        return self._fn(*(staged[name] for name in self._inputs))

    def _execute(self, staged):
        import torch

        with torch.inference_mode():
            if not self.batch_buckets:
                out = self._run(staged)
                return dict(zip(self.output_names, out if isinstance(out, tuple) else (out,)))
            n, top = len(next(iter(staged.values()))), self.batch_buckets[-1]
            chunks = []
            for lo in range(0, n, top):
                part = {k: v[lo:lo + top] for k, v in staged.items()}
                m = min(top, n - lo)
                size = next(b for b in self.batch_buckets if b >= m)
                if size > m:  # pad with copies of the last row: real inputs, so no NaN from an all-zero mask
                    part = {k: torch.cat([v, v[-1:].expand(size - m, *v.shape[1:])]) for k, v in part.items()}
                out = self._run(part)
                out = out if isinstance(out, tuple) else (out,)
                chunks.append(tuple(o[:m].clone() if n > top else o[:m] for o in out))
            outs = chunks[0] if len(chunks) == 1 else tuple(torch.cat(c) for c in zip(*chunks))
        return dict(zip(self.output_names, outs))

    def _run(self, staged):
        return self._replay(staged) if self.cuda_graph else self._forward(staged)

    def _replay(self, staged):
        """Replay the graph captured for these input shapes (captured on first sight). Outputs stay valid
        until the next execute. All shapes share one memory pool: a replay may overwrite another shape's
        outputs, never its own inputs (those are allocated outside the pool)."""
        import torch

        key = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in staged.items())
        if key not in self._graphs:
            static_in = {k: v.clone() for k, v in staged.items()}
            if self.compile:  # compile (and autotune) on the default stream, before the capture warm-up
                self._forward(static_in)
                torch.cuda.synchronize(self._device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up outside the graph, as capture requires
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self._forward(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for k, v in staged.items():
            static_in[k].copy_(v, non_blocking=True)
        graph.replay()
        return static_out

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize(self._device)

    def to_host(self, outputs):
        return {k: v.detach().float().cpu().numpy() for k, v in outputs.items()}


class TorchRunner(ModuleRunner):
    """The policy as a runner: inputs and outputs of :data:`vla_export.data.iospec.POLICY`.

    ``debug_outputs=True`` also returns the per-frame ``features`` (to catch a broken backbone that a
    near-constant head would hide).
    """

    def __init__(self, policy_or_loader: Any, *, debug_outputs: bool = False, **kwargs: Any):
        super().__init__(policy_or_loader, POLICY.input_names, POLICY.output_names(debug=debug_outputs), **kwargs)
        self.debug_outputs = debug_outputs

    @property
    def policy(self) -> Any:
        """The active policy module (None before activation)."""
        return self.module

    def _forward(self, staged):
        return self._fn(*(staged[name] for name in self._inputs), return_features=self.debug_outputs)

