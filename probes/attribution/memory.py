"""How many images x steps one attribution pass may hold: the internal batch size of
Integrated Gradients, SmoothGrad and occlusion, chosen from a memory budget."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["activation_bytes_per_image", "choose_internal_batch"]


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


def choose_internal_batch(model: nn.Module, x1: torch.Tensor, budget_mb: float) -> int:
    """Images x steps per pass that fit ``budget_mb`` MiB (on CUDA also at most half the free
    memory), between 1 and 4096."""
    per = activation_bytes_per_image(model, x1)
    budget = budget_mb * 2**20
    if x1.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x1.device)
        budget = min(budget, free / 2)
    return int(max(1, min(4096, budget // max(per, 1))))
