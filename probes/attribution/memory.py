"""How many images x steps one attribution pass may hold: the internal batch size of
Integrated Gradients, SmoothGrad and occlusion, chosen from a memory budget (the per-image
cost: :func:`audit.batching.activation_bytes_per_image`)."""
from __future__ import annotations

import torch
import torch.nn as nn

from audit.batching import MAX_BATCH, activation_bytes_per_image, fit_batch

__all__ = ["activation_bytes_per_image", "choose_internal_batch"]


def choose_internal_batch(model: nn.Module, x1: torch.Tensor, budget_mb: float) -> int:
    """Images x steps per pass that fit ``budget_mb`` MiB and half the free memory
    (:func:`audit.batching.fit_batch`), between 1 and 4096."""
    per = activation_bytes_per_image(model, x1)
    return fit_batch(per, x1.device, int(min(MAX_BATCH, budget_mb * 2**20 // max(per, 1))))
