"""Auto-PGD (APGD) of Croce & Hein 2020, "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks" (ICML), the gradient attacks of AutoAttack:
``apgd_ce`` (cross-entropy), ``apgd_dlr`` (the Difference of Logits Ratio loss) and
``apgd_t`` (the targeted DLR loss towards each of the top classes after the label in turn).

Written after the paper and the reference code (github.com/fra31/auto-attack,
``autopgd_base.py``), batched: every sample keeps its own step size, best point and
checkpoint state, and a sample leaves the batch as soon as it is fooled (which changes
nothing for the others). Pixels are in [0, 1]; ε in the same scale; L∞ or L2.

The losses are computed here from the logits of the :class:`~.objective.Objective`
(``obj.logits``), counting sample passes in ``obj.forwards`` / ``obj.backwards`` as the
objective does; when the objective draws its model several times per evaluation
(``obj.eot`` > 1, a randomized model), the gradient and the loss are averaged over the draws
and a sample counts as fooled when any draw misclassifies it (the smallest margin).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from audit.fastpath import sync_every

from .attacks import BoundedAttack, register_attack
from .objective import Objective
from .threat import in_bounds, per_sample, project, steepest

__all__ = ["attack_loss", "apgd", "APGD", "APGDCE", "APGDDLR", "APGDT", "top_targets"]

#: checkpoint schedule of the reference: first checkpoint after 22% of the iterations, the
#: interval shrinks by 3% of them down to 6%; the step size halves where the loss rose in at
#: most ``rho`` of the steps since the last checkpoint
P_FIRST, P_MIN, P_DECR = 0.22, 0.06, 0.03


def _dlr_scale(z: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The DLR denominator (N,): π1 − π3 (untargeted) or π1 − (π3 + π4)/2 (targeted), π the
    logits sorted in decreasing order; missing order statistics (fewer than 3 or 4 classes)
    are the smallest logit, and with 2 classes the scale is 1 (the plain margin)."""
    k = z.shape[1]
    if k <= 2:
        return torch.ones(z.shape[0], device=z.device)
    zs = z.topk(min(4, k), 1).values  # the 4 largest, in decreasing order: O(N x K), not a full sort
    third, fourth = zs[:, min(2, k - 1)], zs[:, min(3, k - 1)]
    return zs[:, 0] - (0.5 * (third + fourth) if targeted else third) + 1e-12


def loss_from_logits(z: torch.Tensor, lab: torch.Tensor, kind: str, *, targeted: bool = False,
                     target: torch.Tensor | None = None) -> torch.Tensor:
    """The loss (N,) APGD maximises, from logits ``z`` (N, K) float32. ``kind``: ``"ce"``
    (cross-entropy of ``lab``), ``"dlr"`` (−(z_y − max_{j≠y} z_j) / (π1 − π3)) or ``"dlr_t"``
    (−(z_y − z_t) / (π1 − (π3 + π4)/2), ``target`` (N,) the classes t). In a targeted run
    (``targeted``: ``lab`` are the targets) the losses pull towards ``lab``: −CE, and the
    targeted DLR with the best other class in place of the label."""
    own = z.gather(1, lab[:, None]).squeeze(1)
    other = z.scatter(1, lab[:, None], float("-inf")).amax(1)
    if kind == "ce":
        ce = F.cross_entropy(z, lab, reduction="none")
        return -ce if targeted else ce
    if targeted:
        return -(other - own) / _dlr_scale(z, True)
    if kind == "dlr":
        return -(own - other) / _dlr_scale(z, False)
    if kind == "dlr_t":
        return -(own - z.gather(1, target[:, None]).squeeze(1)) / _dlr_scale(z, True)
    raise ValueError(f"unknown APGD loss {kind!r}")


def attack_loss(obj: Objective, x: torch.Tensor, lab: torch.Tensor, kind: str, *,
                target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss (N,), its input gradient (N, C, H, W) float32, the objective's margin (N,)) at
    ``x``; over ``obj.eot`` draws: the mean loss and gradient, the smallest margin. Counts
    the passes in ``obj``."""
    draws = int(getattr(obj, "eot", 1) or 1)
    n = x.shape[0]
    obj.forwards += n * draws
    obj.backwards += n * draws
    xg = x.detach().requires_grad_(True)
    loss = grad = margin = None
    for _ in range(draws):
        with torch.enable_grad():
            z = obj.logits(xg)
            lv = loss_from_logits(z, lab, kind, targeted=obj.targeted, target=target)
            (g,) = torch.autograd.grad(lv.sum(), xg)
        z, lv, g = z.detach(), lv.detach(), g.float()
        m = obj.margin_from_logits(z, lab)
        loss = lv if loss is None else loss + lv
        grad = g if grad is None else grad + g
        margin = m if margin is None else torch.minimum(margin, m)
    if draws > 1:
        loss, grad = loss / draws, grad / draws
    return loss, torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0), margin


def _start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """The reference's random start: a uniform draw rescaled onto the L∞ sphere of radius ε, or
    a Gaussian direction of L2 length ε; clipped to [0, 1]."""
    if norm == "linf":
        t = torch.rand(x.shape, generator=gen) * 2 - 1
        t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (t.ndim - 1))
    else:
        t = torch.randn(x.shape, generator=gen)
        t = t / (t.flatten(1).norm(dim=1) + 1e-12).view(-1, *[1] * (t.ndim - 1))
    return (x + eps * t.to(x.device, x.dtype)).clamp(0, 1)


def apgd(obj: Objective, x: torch.Tensor, lab: torch.Tensor, eps: float, norm: str, *, kind: str, steps: int,
         gen: torch.Generator, target: torch.Tensor | None = None, rho: float = 0.75
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """One APGD run (one start) on ``x`` (n, C, H, W) in [0, 1], labels/targets ``lab`` (n,),
    at ``eps``: step size 2ε halved at the checkpoints where the loss rose in at most ``rho``
    of the steps since the last one or where the best loss did not improve without a halving
    before (the run then restarts from its best point), momentum 0.75. Returns (fooled (n,)
    bool, x_adv (n, C, H, W): the first adversarial found, the clean input elsewhere)."""
    n, dev = x.shape[0], x.device
    k_first, k_min, k_decr = (max(int(p * steps), 1) for p in (P_FIRST, P_MIN, P_DECR))
    xa = _start(x, eps, norm, gen)
    loss, g, m = attack_loss(obj, xa, lab, kind, target=target)
    fooled = m < 0
    adv = torch.where(fooled.view(-1, 1, 1, 1), xa, x)
    x_best, loss_best, g_best = xa.clone(), loss.clone(), g.clone()
    step = torch.full((n,), 2.0 * eps, device=dev)
    x_old = xa.clone()
    hist = torch.zeros(steps + 1, n, device=dev)
    hist[0] = loss
    k, since = k_first, 0
    best_at_check, reduced_last = loss_best.clone(), torch.ones(n, dtype=torch.bool, device=dev)
    live = torch.arange(n, device=dev)
    every = sync_every(dev)  # fooled samples leave the batch every `every` steps only
    for i in range(steps):
        if i % every == 0:  # the only host-device synchronization of the loop
            live = live[~fooled[live]]
            if len(live) == 0:
                break
        xl, x0 = xa[live], x[live]
        mom = xl - x_old[live]
        x_old[live] = xl
        a = 0.75 if i > 0 else 1.0
        z = xl + per_sample(step[live], xl) * steepest(g[live], norm)
        z = x0 + in_bounds(x0, project(z - x0, eps, norm))
        z = xl + (z - xl) * a + mom * (1 - a)
        z = x0 + in_bounds(x0, project(z - x0, eps, norm))
        xa[live] = z
        lv, gv, mv = attack_loss(obj, z, lab[live], kind, target=None if target is None else target[live])
        g[live], hist[i + 1, live] = gv, lv
        hit = (mv < 0) & ~fooled[live]
        adv[live] = torch.where(per_sample(hit, z) > 0, z, adv[live])
        fooled[live] |= hit
        better = per_sample(lv > loss_best[live], z) > 0
        x_best[live], g_best[live] = torch.where(better, z, x_best[live]), torch.where(better, gv, g_best[live])
        loss_best[live] = torch.where(lv > loss_best[live], lv, loss_best[live])
        since += 1
        if since == k:
            j = i + 1
            rises = (hist[j - k + 1:j + 1] > hist[j - k:j]).sum(0)
            halve = (rises <= k * rho) | (~reduced_last & (best_at_check >= loss_best))
            reduced_last, best_at_check = halve, loss_best.clone()
            step = torch.where(halve, step / 2, step)
            xa, g = torch.where(per_sample(halve, xa) > 0, x_best, xa), torch.where(per_sample(halve, g) > 0, g_best, g)
            since, k = 0, max(k - k_decr, k_min)
    return fooled, adv


def top_targets(obj: Objective, x: torch.Tensor, lab: torch.Tensor, count: int) -> torch.Tensor:
    """(n, min(count, K − 1)) int64: the classes other than ``lab`` in decreasing order of
    their clean logit (one forward pass, counted)."""
    obj.forwards += x.shape[0]
    with torch.no_grad():
        z = obj.logits(x)
    return z.scatter(1, lab[:, None], float("-inf")).topk(max(1, min(count, z.shape[1] - 1)), 1).indices


class APGD(BoundedAttack):
    """APGD with loss ``kind``: ``restarts`` random starts of ``steps`` iterations (APGD-T:
    per target class), each on the samples the previous ones did not fool."""

    kind: ClassVar[str] = "ce"
    iterative = True
    paper = "Croce & Hein 2020"

    def __init__(self, steps: int = 100, restarts: int = 1, targets: int = 9, rho: float = 0.75):
        self.steps, self.restarts, self.targets, self.rho = steps, restarts, targets, rho

    @classmethod
    def from_options(cls, o):
        r = o.resolved
        return cls(steps=r.apgd_steps, restarts=r.apgd_restarts, targets=r.apgd_targets)

    def _targets(self, obj: Objective, x: torch.Tensor, lab: torch.Tensor) -> list[torch.Tensor | None]:
        return [None]

    def run(self, obj, x, lab, eps, norm, *, gen):
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        adv = x.clone()
        for tgt in self._targets(obj, x, lab):
            for _ in range(max(1, self.restarts)):
                act = (~fooled).nonzero().flatten()
                if len(act) == 0:
                    return fooled, adv
                f, xa = apgd(obj, x[act], lab[act], eps, norm, kind=self.kind, steps=self.steps, gen=gen,
                             target=None if tgt is None else tgt[act], rho=self.rho)
                fooled[act[f]] = True
                adv[act[f]] = xa[f]
        return fooled, adv


@register_attack
class APGDCE(APGD):
    """APGD on the cross-entropy loss (AutoAttack's first attack)."""

    name, label, kind = "apgd_ce", "APGD-CE", "ce"


@register_attack
class APGDDLR(APGD):
    """APGD on the DLR loss, invariant to shifts and rescalings of the logits."""

    name, label, kind = "apgd_dlr", "APGD-DLR", "dlr"


@register_attack
class APGDT(APGD):
    """APGD on the targeted DLR loss towards each of the ``targets`` classes with the highest
    clean logits after the label in turn (AutoAttack standard: 9); success is any
    misclassification. In a targeted check (``targeted`` option) one run towards the target."""

    name, label, kind = "apgd_t", "APGD-T", "dlr_t"

    def _targets(self, obj, x, lab):
        if obj.targeted:
            return [None]
        top = top_targets(obj, x, lab, self.targets)
        return [top[:, j] for j in range(top.shape[1])]
