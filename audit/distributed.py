"""One audit over several processes: ``torchrun --nproc-per-node N -m audit run ...``.

The work of a shardable check is cut into **work units** that do not depend on how many
processes run: fixed chunks of samples (``batch_size`` of them) or of target classes, or a
check's independent parts. Unit ``k`` runs on rank ``k mod world_size`` with its own
generator seeded from the check's seed and ``k`` (:func:`unit_seed`), so a unit computes the
same records whichever rank runs it, and a single process runs the very same units one
after the other. Every rank then receives every unit's records (``all_gather_object``) and
computes the metrics from the merged records, so the result equals a single-process run
with the same seed (bit for bit on CPUs, where the kernels are deterministic; on GPUs up
to their float non-determinism). Checks that are not shardable run on rank 0 alone and
their result is sent to the others. Only rank 0 writes outputs.

Failure is collective, never a hang: a unit that raises on one rank is gathered as that
rank's message and every rank raises it, so the check ends ``status="error"`` everywhere
with the failing rank's message. Every exchange between ranks is labelled (what it is, for
which check), so ranks that fell out of step (one failed outside a unit while the others
went on) notice it at their next exchange and stop the battery together
(:class:`DesyncError`); a rank that dies is noticed by torchrun, which stops the others;
every collective has a timeout (``AUDIT_DIST_TIMEOUT`` seconds, default 10800: ranks wait
at the end of each check for the slowest unit).

Each finished unit is checkpointed on its own (``OUT/.audit-checkpoint/<check>/``), so
``--resume`` after a crash recomputes only the units that had not finished -- with the same
or a different number of processes, since units do not depend on it.

Backend: NCCL when the processes use GPUs, gloo on CPUs. Multi-node runs need ``--out`` on
a filesystem every node sees for ``--resume`` to find the units of other nodes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch

from .errors import UsageError, first_line
from .seeding import derive_seed

__all__ = ["World", "init_from_env", "current", "launched", "shutdown", "unit_seed", "ShardError", "DesyncError",
           "map_units", "chunks"]

DEFAULT_TIMEOUT_S = 10800


class ShardError(RuntimeError):
    """A work unit failed on some rank; the message names the rank."""


class DesyncError(BaseException):
    """The ranks met at different exchanges: one of them left the common path (it failed
    outside a work unit). Every rank that took part in that exchange raises it, so they stop
    together; finished units stay checkpointed for ``--resume``. A BaseException, like
    KeyboardInterrupt, so that no check's own ``except Exception`` swallows it."""


@dataclass(frozen=True)
class World:
    """The process group as the audit sees it; ``World()`` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def exchange(self, label: str, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (in rank order) for the exchange named ``label``; raises
        :class:`DesyncError` on every rank when the ranks are not all at that exchange."""
        if not self.distributed:
            return [obj]
        parts = self.gather((label, obj))
        labels = [lab for lab, _ in parts]
        if any(lab != label for lab in labels):
            where = ", ".join(f"rank {r} at {lab!r}" for r, lab in enumerate(labels))
            hint = [o for lab, o in parts if lab.startswith("check-end:") and o]
            raise DesyncError(f"the processes fell out of step ({where})" + (f"; first error: {hint[0]}" if hint else ""))
        return [o for _, o in parts]

    def from_main(self, label: str, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (an :meth:`exchange` the other ranks send nothing to)."""
        return self.exchange(label, obj if self.is_main else None)[0]


def launched() -> bool:
    """True when a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def init_from_env(device: str | None = "auto", timeout_s: float | None = None) -> World:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``); a single process without them. NCCL when this rank
    will use a GPU, gloo otherwise."""
    if not launched():
        return World()
    import torch.distributed as dist

    if not dist.is_available():
        raise UsageError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if dist.is_initialized():
        return current()
    use_gpu = torch.cuda.is_available() and str(device or "auto").split(":")[0] in ("auto", "cuda")
    backend = "nccl" if use_gpu else "gloo"
    if use_gpu:
        torch.cuda.set_device(local % torch.cuda.device_count())
    timeout = float(timeout_s or os.environ.get("AUDIT_DIST_TIMEOUT") or DEFAULT_TIMEOUT_S)
    if use_gpu and "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ:
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"  # a timed-out NCCL collective aborts, never hangs
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except Exception as e:  # noqa: BLE001 - one line, not a traceback from the rendezvous
        raise UsageError(f"cannot join the torch.distributed process group ({backend}): "
                         f"{first_line(e)}") from None
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local, backend=backend)


def current() -> World:
    """The initialized process group, or a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), size=dist.get_world_size(),
                     local_rank=int(os.environ.get("LOCAL_RANK", "0") or 0), backend=str(dist.get_backend()))
    return World()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # nobody tears down while a peer still talks to it
        dist.destroy_process_group()


def unit_seed(seed: int, tag: str, k: int) -> int:
    """The seed of unit ``k`` of a check's ``tag``ged unit list (a check's seed in, not the
    rank or the number of processes): :func:`derive_seed` of the unit's key ``tag:k``."""
    return derive_seed(seed, f"{tag}:{k}")


def map_units(world: World, n_units: int, fn: Callable[[int, torch.Generator], Any], *, seed: int,
              tag: str = "units", keys: list[str] | None = None,
              load: Callable[[int], Any] | None = None, save: Callable[[int, Any], None] | None = None,
              on_done: Callable[[], None] | None = None, where: str = "") -> list[Any]:
    """Run ``fn(k, generator)`` for the units ``k`` of this rank and return every unit's
    result, in unit order, on every rank. Unit ``k``'s generator is seeded from ``seed`` and
    its key (``keys[k]``, default ``f"{tag}:{k}"``).

    ``load(k)`` returns a checkpointed result (or None) and ``save(k, r)`` stores one; ``on_done`` is
    called after each unit (progress). Results must be picklable (tensors on the CPU). A
    unit that raises makes every rank raise :class:`ShardError` with the failing rank's
    message. ``where`` (the check's name) labels the exchange."""
    keys = keys if keys is not None else [f"{tag}:{k}" for k in range(n_units)]
    mine: dict[int, Any] = {}
    err = ""
    for k in range(world.rank, n_units, world.size):
        try:
            got = load(k) if load is not None else None
            if got is None:
                got = fn(k, torch.Generator().manual_seed(derive_seed(seed, keys[k])))
                if save is not None:
                    save(k, got)
            mine[k] = got
            if on_done is not None:
                on_done()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - becomes every rank's error below
            if not world.distributed:
                raise
            err = f"rank {world.rank}, unit {keys[k]}: {first_line(e, 400, with_type=True)}"
            break
    parts = world.exchange(f"units:{where}/{keys[0] if keys else ''}:{n_units}", (mine, err))
    errors = [e for _, e in parts if e]
    if errors:
        raise ShardError(errors[0])
    merged: dict[int, Any] = {}
    for m, _ in parts:
        merged.update(m)
    return [merged[k] for k in range(n_units)]


def chunks(n: int, size: int) -> list[torch.Tensor]:
    """``arange(n)`` cut into consecutive chunks of ``size`` (the sample units)."""
    size = max(1, int(size))
    return [torch.arange(i, min(i + size, n)) for i in range(0, n, size)]
