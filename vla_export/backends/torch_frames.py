"""Camera frames and feature windows kept on a torch device between control steps.

:class:`FrameStaging` takes raw uint8 camera frames to the device through reused page-locked host
buffers and runs the shared preprocessing there (:func:`~vla_export.data.preprocess.preprocess_tensor`,
its index and weight tables made once per frame size). A 720x1280 frame is 2.8 MB of uint8 against
0.6 MB of preprocessed float32, but the NumPy resize costs ~4 ms of host CPU per frame; on the GPU it is
a few kernels, and the copy from pinned memory runs at the bus's rate without a staging copy.

:class:`DeviceWindows` keeps the per-robot feature windows of many policies in one device tensor, so a
batched step pushes the backbone's features and gathers the head's windows with two indexing kernels
instead of copying features to the host and windows back (the same warm-up rule as
:class:`~vla_export.runtime.policy.FeatureRing`).

torch is imported inside the methods only: this module imports without it.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from vla_export.data.preprocess import check_frame, preprocess_tensor, tensor_tables


class _Pinned:
    """A host buffer (page-locked when ``pin``) and its device twin, grown to the largest batch seen.

    The host buffer is refilled only after the previous copy out of it has finished (a CUDA event), so
    a step never overwrites bytes still in flight; the device buffer is reused in stream order.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, device: str, pin: bool):
        self.shape, self.dtype, self.device, self.pin = tuple(shape), dtype, device, pin
        self.capacity = 0
        self.host = self.dev = self.event = None

    def _grow(self, n: int) -> None:
        import torch

        if self.event is not None:
            self.event.synchronize()
        cap = max(n, 2 * self.capacity)
        self.host = torch.empty((cap, *self.shape), dtype=self.dtype, pin_memory=self.pin)
        self.dev = self.host if self.device == "cpu" else torch.empty((cap, *self.shape), dtype=self.dtype, device=self.device)
        self.capacity = cap

    def fill(self, arrays: Sequence[np.ndarray]) -> Any:
        """The ``arrays`` (each of ``shape``) as rows [0, n) of the host buffer, once its last copy is done."""
        n = len(arrays)
        if n > self.capacity:
            self._grow(n)
        elif self.event is not None:
            self.event.synchronize()  # the last copy from the host buffer is done (it usually is, long since)
        view = self.host.numpy()
        for i, a in enumerate(arrays):
            view[i] = a
        return self.host[:n]

    def send(self, host_rows: Any, dev: Any) -> Any:
        """Copy filled host rows to ``dev`` (asynchronously, in stream order); returns ``dev``."""
        import torch

        dev.copy_(host_rows, non_blocking=True)
        if self.event is None:
            self.event = torch.cuda.Event()
        self.event.record()
        return dev

    def upload(self, arrays: Sequence[np.ndarray]) -> Any:
        """The ``arrays`` as rows [0, n) of the device buffer; valid until the next upload."""
        rows = self.fill(arrays)
        if self.dev is self.host:
            return rows
        return self.send(rows, self.dev[: len(arrays)])


class FrameStaging:
    """Raw uint8 [H, W, 3] frames -> a ``dtype`` tensor [N, 3, S, S] on ``device``, by the shared math.

    Frames of one size go through together (one pinned buffer per size); the order is kept. On CUDA a
    call whose frames all have one size replays a CUDA graph of the preprocessing, captured once per
    (count, size): one launch instead of ~15 small kernels, ~0.5 ms of host time per 720x1280 frame on
    the H200's host. All these graphs share one memory pool, so the result is valid until the next call.
    ``pin=False`` uses pageable host memory (and, on the CPU, no copy at all): for tests without a GPU.
    """

    def __init__(self, device: str, dtype: str = "float32", *, pin: bool = True, graphs: bool = True):
        self.device, self.dtype = device, dtype
        self.pin = pin and not device.startswith("cpu")
        self.graphs = graphs and device.startswith("cuda")
        self._buffers: dict[tuple[int, int], _Pinned] = {}
        self._tables: dict[tuple[int, int, int], dict] = {}
        self._graphed: dict[tuple[int, int, int, int], tuple[Any, Any, Any]] = {}  # (n, h, w, S) -> (static in, graph, static out)
        self._pool: Any = None

    def _buffer(self, h: int, w: int) -> _Pinned:
        import torch

        buf = self._buffers.get((h, w))
        if buf is None:
            buf = self._buffers[(h, w)] = _Pinned((h, w, 3), torch.uint8, self.device, self.pin)
        return buf

    def _tables_for(self, h: int, w: int, image_size: int, like: Any) -> dict:
        tables = self._tables.get((h, w, image_size))
        if tables is None:
            tables = self._tables[(h, w, image_size)] = tensor_tables(h, w, image_size, like)
        return tables

    def _capture(self, key: tuple[int, int, int, int], out_dtype: Any) -> tuple[Any, Any, Any]:
        import torch

        n, h, w, size = key
        static_in = torch.zeros((n, h, w, 3), dtype=torch.uint8, device=self.device)
        tables = self._tables_for(h, w, size, static_in)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as capture requires
            preprocess_tensor(static_in, size, tables).to(out_dtype)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = preprocess_tensor(static_in, size, tables).to(out_dtype)
        self._graphed[key] = (static_in, graph, static_out)
        return self._graphed[key]

    def __call__(self, frames: Sequence[np.ndarray], image_size: int) -> Any:
        import torch

        groups: dict[tuple, list[int]] = {}
        for i, frame in enumerate(frames):
            check_frame(frame)
            groups.setdefault(frame.shape, []).append(i)
        out_dtype = getattr(torch, self.dtype)
        if self.graphs and len(groups) == 1:
            h, w = int(frames[0].shape[0]), int(frames[0].shape[1])
            key = (len(frames), h, w, image_size)
            static_in, graph, static_out = self._graphed.get(key) or self._capture(key, out_dtype)
            buf = self._buffer(h, w)
            buf.send(buf.fill(frames), static_in)
            graph.replay()
            return static_out
        parts = []
        for shape, index in groups.items():
            h, w = int(shape[0]), int(shape[1])
            batch = self._buffer(h, w).upload([frames[i] for i in index])
            parts.append(preprocess_tensor(batch, image_size, self._tables_for(h, w, image_size, batch)).to(out_dtype))
        if len(parts) == 1:
            return parts[0]
        out = torch.empty((len(frames), *parts[0].shape[1:]), dtype=out_dtype, device=self.device)
        for index, part in zip(groups.values(), parts):
            out[torch.tensor(index, device=self.device)] = part
        return out


class DeviceWindows:
    """The last ``window`` features of many policies (robots) in one device tensor [slots, window, F].

    :meth:`push` takes the features of one batched backbone call ([N, F], on the device) for N policies
    and returns their windows [N, window, F], oldest first. A policy gets a slot at its first push, which
    fills its whole window with that feature (the warm-up rule of ``FeatureRing``); :meth:`forget` (at
    ``Policy.reset``) or the policy's garbage collection frees the slot. Slots grow as needed.
    """

    def __init__(self, window: int, *, device: str, pin: bool = True):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window, self.device = window, device
        self._slot: dict[int, int] = {}  # id(policy) -> slot
        self._free: list[int] = []
        self._pos = np.zeros(0, dtype=np.int64)  # per slot: where its next feature goes (= its oldest)
        self._table: Any = None
        self._pin = pin and not device.startswith("cpu")
        self._index_bufs: dict[int, _Pinned] = {}  # one per batch size: the indices of a push, one copy

    @property
    def robots(self) -> int:
        return len(self._slot)

    def forget(self, policy: Any) -> None:
        self._release(id(policy))

    def _release(self, key: int) -> None:
        slot = self._slot.pop(key, None)
        if slot is not None:
            self._free.append(slot)

    def _assign(self, policy: Any) -> int:
        if not self._free:
            old = len(self._pos)
            grow = max(8, old)
            self._pos = np.concatenate([self._pos, np.zeros(grow, dtype=np.int64)])
            self._free = list(range(old + grow - 1, old - 1, -1))
            if self._table is not None:
                self._table = self._grown(self._table, old + grow)
        slot = self._free.pop()
        self._slot[id(policy)] = slot
        weakref.finalize(policy, self._release, id(policy))
        return slot

    def _grown(self, table: Any, slots: int) -> Any:
        new = table.new_zeros((slots, *table.shape[1:]))
        new[: table.shape[0]] = table
        return new

    def push(self, policies: Sequence[Any], features: Any) -> Any:
        """Write each policy's new feature (row i of ``features`` for ``policies[i]``); their windows."""
        import torch

        n, t = len(policies), self.window
        if int(features.shape[0]) != n:
            raise ValueError(f"{n} policies but {int(features.shape[0])} features")
        fresh = np.array([id(p) not in self._slot for p in policies])
        slots = np.array([self._slot.get(id(p)) if id(p) in self._slot else self._assign(p) for p in policies], dtype=np.int64)
        if len(set(slots.tolist())) != n:
            raise ValueError("a policy appears twice in one push")
        if self._table is None:
            self._table = features.new_zeros((len(self._pos), t, int(features.shape[1])))
        pos = np.where(fresh, 0, self._pos[slots])
        after = (pos + 1) % t
        self._pos[slots] = after
        order = (after[:, None] + np.arange(t)[None, :]) % t
        host = np.concatenate([slots, pos, order.reshape(-1), fresh.astype(np.int64)])
        buf = self._index_bufs.get(n)
        if buf is None:
            buf = self._index_bufs[n] = _Pinned(host.shape, torch.int64, self.device, self._pin)
        idx = buf.upload([host])[0]
        s, p, o, f = idx[:n], idx[n:2 * n], idx[2 * n:2 * n + n * t].view(n, t), idx[2 * n + n * t:]
        feats = features.to(self._table.dtype)
        # A fresh slot gets its feature in every position; the others only at their write position.
        self._table[s] = torch.where(f.bool()[:, None, None], feats[:, None, :].expand(n, t, -1), self._table[s])
        self._table[s, p] = feats
        return self._table[s[:, None], o]
