"""Which torch device an audit runs on (``--device``)."""
from __future__ import annotations

import os

import torch

from ..errors import UsageError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The :class:`torch.device` for ``--device``: ``auto`` (or None) picks the first GPU when
    there is one, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as they are. In a
    process launched by torchrun, ``auto`` and ``cuda`` mean this process's own GPU
    (``LOCAL_RANK``). Raises :class:`UsageError` for an unknown device, a GPU torch does not
    see, or ``cuda:N`` under torchrun."""
    from ..distributed import launched

    if device is None or str(device) in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if str(device) == "cuda":
                raise UsageError("--device cuda asked for a GPU, but torch sees none; use --device cpu or auto")
            return torch.device("cpu")
        if launched():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0) % torch.cuda.device_count())
        return torch.device("cuda")
    try:
        dev = torch.device(str(device))
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device this tool runs on; pass --device auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and dev.index is not None and launched():
        raise UsageError(f"--device {device}: under torchrun each process takes its own GPU (LOCAL_RANK); pass "
                         "--device cuda or auto (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for a GPU, but torch sees none; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible; pass --device "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1} or auto")
    elif dev.type != "cpu":
        raise UsageError(f"--device {device!r} is not a device this tool runs on; pass --device auto, cpu, cuda or cuda:N")
    return dev
