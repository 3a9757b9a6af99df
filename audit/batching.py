"""Batching shared by every check: chunked work that survives an out-of-memory error by
halving the batch (the attack loops and the attribution methods both use it), a batch size
fitted to the free memory (:func:`fit_batch`, :func:`bytes_per_sample`), and one CPU
thread for small batches (:func:`few_threads_for_small_work`)."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn


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



# ---------------------------------------------------------------------------- batch size from memory
#: share of the free memory a batch may take (the rest: the allocator's slack, other tensors)
MEMORY_SHARE = 0.5
#: the largest batch :func:`fit_batch` returns
MAX_BATCH = 4096


def free_bytes(device: torch.device | str) -> int | None:
    """The free memory of ``device`` in bytes: CUDA ``torch.cuda.mem_get_info``; CPU the
    available RAM (psutil's ``virtual_memory().available`` when installed, else
    ``os.sysconf`` available pages x page size; None when neither answers)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def activation_bytes_per_image(model: nn.Module, x1: torch.Tensor) -> int:
    """Bytes one image needs in a forward+backward pass: the sum of all module outputs
    (leaf modules, or the whole model when it has none to hook), times 3 for the input
    gradients, autograd's saved tensors and the gradients of the outputs. ``x1``: (1, C, H, W)
    on the model's device."""
    total = [0]
    hooks = []

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    try:
        for m in leaves:
            hooks.append(m.register_forward_hook(hook))
    except Exception:  # noqa: BLE001 - a ScriptModule refuses Python hooks
        pass
    try:
        with torch.no_grad():
            out = model(x1[:1])
    finally:
        for h in hooks:
            h.remove()
    if total[0] == 0:  # nothing hooked: assume a deep net keeps ~40 input-sized tensors alive
        total[0] = 40 * x1[:1].numel() * x1.element_size() + out.numel() * 4
    return 3 * total[0]


def bytes_per_sample(step: Callable[[torch.Tensor], None], probe: torch.Tensor, model: torch.nn.Module) -> float:
    """Bytes one sample of ``probe`` (N, C, H, W) costs in ``step(probe)`` (a forward+backward
    of ``model``): on CUDA the allocator's peak above what was allocated before, over N; on a
    CPU (no allocator statistics) :func:`activation_bytes_per_image` of ``model``."""
    if probe.device.type == "cuda":
        n = max(1, probe.shape[0])
        torch.cuda.synchronize(probe.device)
        base = torch.cuda.memory_allocated(probe.device)
        torch.cuda.reset_peak_memory_stats(probe.device)
        step(probe)
        torch.cuda.synchronize(probe.device)
        return max(1.0, (torch.cuda.max_memory_allocated(probe.device) - base) / n)
    return float(activation_bytes_per_image(model, probe[:1]))


def fit_batch(per_sample: float, device: torch.device | str, requested: int, *,
              share: float = MEMORY_SHARE) -> int:
    """The batch size: at most ``requested`` (and :data:`MAX_BATCH`), at most ``share`` of
    :func:`free_bytes` at ``per_sample`` bytes a sample, at least 1. Unknown free memory
    (None) keeps ``requested``."""
    free = free_bytes(device)
    cap = min(int(requested), MAX_BATCH)
    if free is None:
        return max(1, cap)
    return int(max(1, min(cap, (free * share) // max(per_sample, 1.0))))
