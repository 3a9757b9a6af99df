"""The one quantity every attack of the ``adversarial`` check minimises: the logit margin.

For an untargeted attack the margin of a sample is ``z_y - max_{j != y} z_j`` (the sample is
fooled when it is negative), for a targeted one ``max_{j != t} z_j - z_t``. Using the logit
margin (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks") rather
than the cross-entropy keeps the gradient alive on very confident samples, where a float32
softmax saturates and the cross-entropy gradient becomes exactly zero.
"""
from __future__ import annotations

import torch

__all__ = ["Objective"]


class Objective:
    """The model plus the attack goal. ``lab`` (N,) int64 is the true label (untargeted) or
    the target class (targeted). ``amp``: the autocast dtype of the forward and backward
    passes (None: the model's own precision). ``forwards``/``backwards`` count the sample
    passes (the ``queries`` of the check)."""

    def __init__(self, model: torch.nn.Module, *, targeted: bool = False, device: torch.device | None = None,
                 amp: torch.dtype | None = None):
        self.model = model
        self.targeted = targeted
        self.device = device or torch.device("cpu")
        self.amp = amp
        self.forwards = 0
        self.backwards = 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (N, K) float32 at ``x`` (N, C, H, W), under autocast when ``amp``
        is set."""
        with torch.autocast(x.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            return self.model(x).float()

    def margin_from_logits(self, z: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """The margin (N,) of logits ``z`` (N, K) for labels/targets ``lab`` (N,)."""
        own = z.gather(1, lab[:, None]).squeeze(1)
        other = z.scatter(1, lab[:, None], float("-inf")).amax(1)
        return other - own if self.targeted else own - other

    def __call__(self, x: torch.Tensor, lab: torch.Tensor, *, grad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Margin (N,) at ``x`` and, with ``grad``, its input gradient (N, C, H, W) float32."""
        self.forwards += x.shape[0]
        if not grad:
            with torch.no_grad():
                return self.margin_from_logits(self.logits(x), lab), None
        self.backwards += x.shape[0]
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            m = self.margin_from_logits(self.logits(xg), lab)
            (g,) = torch.autograd.grad(m.sum(), xg)
        return m.detach(), g.float()

    @property
    def passes(self) -> tuple[int, int]:
        """(forward, backward) sample passes so far."""
        return self.forwards, self.backwards
