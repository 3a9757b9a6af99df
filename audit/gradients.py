"""The input-gradient probe: can a gradient method use this model's input gradients at all?

Computed once per run (``ctx.gradient_problem``) and read by every gradient-based check:
the adversarial attacks, fooling's gradient ascent, class visualization and the gradient
attribution methods. A model run under ``torch.no_grad``, a detached output, a TorchScript
model without autograd, or non-differentiable preprocessing gives no usable gradient; the
checks then say so in a finding instead of reporting numbers a gradient never informed.
"""
from __future__ import annotations

import torch

from .errors import first_line

__all__ = ["gradient_problem", "gradients_computable", "ZERO", "NOT_FINITE"]

#: the problems of gradients that exist but carry no signal: a gradient method can still run
#: (and a check may report the share of samples affected)
ZERO = "they are all zero"
NOT_FINITE = "they are not finite"


def gradient_problem(model, x: torch.Tensor, target: torch.Tensor | None = None) -> str | None:
    """Why the gradient of ``model(x)[i, target[i]]`` summed over ``i`` (of the squared
    outputs' sum when ``target`` is None: any output depending on the input counts) with
    respect to ``x`` cannot be used (a phrase that completes "input gradients cannot be
    used: ..."), or None when it can. ``x``: (N, C, H, W) float in [0, 1] on the model's
    device; ``target``: (N,) int64 class indices, or None."""
    try:
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(xg)
            if not out.requires_grad:
                return ("the model's output does not depend differentiably on its input (forward under "
                        "torch.no_grad, detached, or a TorchScript model saved without autograd)")
            objective = out.float().square().sum() if target is None else out.gather(1, target[:, None].to(out.device)).sum()
            (grad,) = torch.autograd.grad(objective, xg, allow_unused=True)
    except Exception as e:  # noqa: BLE001 - e.g. non-differentiable ops: the reason is the answer
        return first_line(e, 160, with_type=True)
    if grad is None:
        return "autograd returned no gradient for the input"
    if not torch.isfinite(grad).all():
        return NOT_FINITE
    if float(grad.abs().max()) == 0.0:
        return ZERO
    return None


def gradients_computable(problem: str | None) -> bool:
    """Whether autograd can compute input gradients at all, given :func:`gradient_problem`'s
    answer: True when there is no problem or the gradients are merely zero or not finite."""
    return problem is None or problem in (ZERO, NOT_FINITE)
