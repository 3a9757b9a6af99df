"""Batching shared by every check: chunked work that survives an out-of-memory error by
halving the batch (the attack loops and the attribution methods both use it), and one CPU
thread for small batches (:func:`few_threads_for_small_work`)."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


def is_oom(e: BaseException) -> bool:
    """An out-of-memory error from any torch device (typed on recent torch, a RuntimeError
    with that message on older ones)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def batched(idx: torch.Tensor, batch_size: int, fn: Callable[[torch.Tensor], None]) -> None:
    """Call ``fn`` on consecutive chunks of ``idx``; on an out-of-memory error the chunk size
    is halved and the chunk retried (down to 1, then the error propagates)."""
    bs = max(1, int(batch_size))
    i = 0
    while i < len(idx):
        chunk = idx[i:i + bs]
        try:
            fn(chunk)
        except RuntimeError as e:
            if not is_oom(e) or bs == 1:
                raise
            _free()
            bs = max(1, bs // 2)
            continue
        i += len(chunk)


def with_oom_retry(fn: Callable[[int], object], batch: int, on_halve: Callable[[int], None] | None = None):
    """Call ``fn(batch)``; on an out-of-memory error free the cache, halve ``batch`` and
    retry, down to 1 (then the error propagates). ``on_halve`` is told each new batch size."""
    while True:
        try:
            return fn(batch)
        except RuntimeError as e:
            if not is_oom(e) or batch <= 1:
                raise
            _free()
            batch = max(1, batch // 2)
            if on_halve is not None:
                on_halve(batch)


@contextlib.contextmanager
def few_threads_for_small_work(device: torch.device, pixels_per_batch: int, *, limit: int = 1 << 18):
    """On the CPU, run small batches (fewer than ``limit`` pixels a forward pass) on one
    intra-op thread, restoring the setting afterwards. Thousands of tiny ops a second spend
    their time in thread barriers, and on a shared machine a descheduled worker thread
    stalls every op: we measured the demo's class visualization at 6 s on one thread and
    190 s on two while other jobs ran."""
    n = torch.get_num_threads()
    small = device.type == "cpu" and pixels_per_batch < limit and n > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(n)

