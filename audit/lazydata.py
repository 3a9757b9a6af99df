"""Evaluation sets larger than memory: images decoded on demand, in parallel, a batch ahead.

:class:`LazyImages` stands where :attr:`audit.data.AuditData.x` is a float32 tensor: it has
its ``shape`` (N, C, H, W), ``dtype`` (float32), ``len``, and indexing with an int, a slice, a
list, an index tensor or a boolean mask returns the float32 images in [0, 1] as a tensor,
decoded then. The whole set is never held: a set of 50,000 ImageNet-sized images (about 30 GB
as float32) is read batch by batch by the clean pass, and the heavier checks index their
stratified subsets. Decoding runs on a thread pool (PIL and torch release the GIL while they
decode and resize), and a request for consecutive rows ``[a, b)`` starts decoding the next span of that size
in the background (:data:`AHEAD` batches ahead), so the next batch is ready while the model
runs on this one. Each image is written into its row of the batch tensor (no stacking copy).

:func:`should_be_lazy` decides: a folder whose images would take more than
:data:`LAZY_BYTES` as float32 is loaded lazily (``AUDIT_LAZY_BYTES`` overrides, in bytes), and
so is a uint8 tensor file (kept as uint8, a quarter of the float32 size, converted per batch).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["LazyImages", "should_be_lazy", "LAZY_BYTES", "float_bytes"]

#: float32 bytes of a data set over which its images are decoded on demand (1 GiB)
LAZY_BYTES = 1 << 30
#: batches decoded ahead of the one asked for (consecutive reads: the clean pass)
AHEAD = 1


def float_bytes(n: int, shape: Sequence[int]) -> int:
    """Bytes of ``n`` float32 images of ``shape`` (C, H, W)."""
    return 4 * int(n) * int(np.prod([int(s) for s in shape]))


def should_be_lazy(n: int, shape: Sequence[int], lazy: bool | None = None) -> bool:
    """``lazy`` when given; else whether ``n`` float32 images of ``shape`` exceed
    :data:`LAZY_BYTES` (or the ``AUDIT_LAZY_BYTES`` environment variable, in bytes)."""
    if lazy is not None:
        return bool(lazy)
    limit = int(os.environ.get("AUDIT_LAZY_BYTES", LAZY_BYTES))
    return float_bytes(n, shape) > limit


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class LazyImages:
    """N images of ``shape`` (C, H, W), image ``i`` made by ``load_one(i)`` (a float32 (C, H, W)
    tensor in [0, 1]) when indexed. ``key(i)`` is a string standing for image ``i``'s content
    (its path, size and modification time; for a uint8 array, its bytes) for the resume hash.
    ``rows`` maps this view's rows to the source's (a subset shares its source's decoder)."""

    dtype = torch.float32

    def __init__(self, n: int, shape: Sequence[int], load_one: Callable[[int], torch.Tensor],
                 key: Callable[[int], bytes], rows: torch.Tensor | None = None) -> None:
        self._load_one, self._key = load_one, key
        self._rows = torch.arange(int(n)) if rows is None else rows.long()
        self.shape = torch.Size((len(self._rows), *(int(s) for s in shape)))
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: list[tuple[tuple[int, int], tuple[torch.Tensor, list[Future]]]] = []

    @classmethod
    def from_uint8(cls, x: torch.Tensor) -> "LazyImages":
        """A uint8 (N, C, H, W) tensor kept as it is, each image scaled to float32 [0, 1] when read."""
        assert x.dtype == torch.uint8 and x.ndim == 4
        return cls(len(x), x.shape[1:], lambda i: x[i].float().div_(255.0),
                   lambda i: x[i].contiguous().numpy().tobytes())

    # -------------------------------------------------------------- tensor-like surface
    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def ndim(self) -> int:
        return 4

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)) or (isinstance(idx, torch.Tensor) and idx.ndim == 0
                                                 and not idx.dtype == torch.bool):
            i = int(idx)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} out of range for {len(self)} images")
            return self._load_one(int(self._rows[i]))
        rows = self._select(idx)
        return self._decode(rows)

    def take(self, idx) -> "LazyImages":
        """The images ``idx`` as another lazy view (nothing decoded)."""
        rows = self._rows[self._select(idx)]
        return LazyImages(len(rows), self.shape[1:], self._load_one, self._key, rows)

    def hash_into(self, h) -> None:
        """Feed the view's shape and each image's content key to hashlib object ``h``."""
        h.update(repr(("lazy", tuple(self.shape))).encode())
        for r in self._rows.tolist():
            h.update(self._key(r))

    # -------------------------------------------------------------- decoding
    def _select(self, idx) -> torch.Tensor:
        """Positions (into this view) named by ``idx``."""
        n = len(self)
        if isinstance(idx, slice):
            return torch.arange(n)[idx]
        if isinstance(idx, range):
            return torch.tensor(list(idx), dtype=torch.long)
        t = torch.as_tensor(np.asarray(idx) if not isinstance(idx, torch.Tensor) else idx)
        if t.dtype == torch.bool:
            if t.shape != (n,):
                raise IndexError(f"boolean index of shape {tuple(t.shape)} for {n} images")
            return t.nonzero().flatten()
        t = t.long().flatten()
        if len(t) and (t.min() < -n or t.max() >= n):
            raise IndexError(f"index out of range for {n} images")
        return torch.where(t < 0, t + n, t)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_workers(), thread_name_prefix="audit-decode")
            return self._pool

    def _submit(self, positions: list[int]) -> tuple[torch.Tensor, list[Future]]:
        """Decode ``positions`` on the pool, each image written into its row of one batch
        tensor (no stacking copy afterwards); returns the tensor and the futures."""
        pool = self._executor()
        out = torch.empty((len(positions), *self.shape[1:]), dtype=torch.float32)

        def one(j: int, p: int) -> None:
            out[j].copy_(self._load_one(int(self._rows[p])))

        return out, [pool.submit(one, j, p) for j, p in enumerate(positions)]

    def _decode(self, pos: torch.Tensor) -> torch.Tensor:
        if len(pos) == 0:
            return torch.empty((0, *self.shape[1:]), dtype=torch.float32)
        p = pos.tolist()
        if len(p) == 1:
            return self._load_one(int(self._rows[p[0]]))[None]
        span = (p[0], p[0] + len(p))
        consecutive = p == list(range(*span))
        ahead, self._ahead = self._ahead, []
        if consecutive and ahead and ahead[0][0] == span:
            (_, (out, futures)), ahead = ahead[0], ahead[1:]
        else:
            for _, (_, fs) in ahead:
                for f in fs:
                    f.cancel()
            ahead = []
            out, futures = self._submit(p)
        if consecutive:  # the next batches, decoded while the model runs on this one
            end = ahead[-1][0][1] if ahead else span[1]
            while len(ahead) < AHEAD and end < len(self):
                nxt = (end, min(len(self), end + len(p)))
                ahead.append((nxt, self._submit(list(range(*nxt)))))
                end = nxt[1]
        self._ahead = ahead
        for f in futures:
            f.result()
        return out

    def __repr__(self) -> str:
        return f"LazyImages(shape={tuple(self.shape)}, decoded on demand)"
