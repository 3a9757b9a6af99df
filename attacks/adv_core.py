"""The attack engine of the ``adversarial`` check: one objective, one batching helper, and
the attacks written on them in plain torch (batched, early-stopping, seeded).

All attacks work in pixel space [0, 1] under an L∞ or L2 budget and minimise one quantity,
the *margin* of the objective (:class:`Objective`): for an untargeted attack
``z_y - max_{j != y} z_j`` (the sample is fooled when it is negative), for a targeted one
``max_{j != t} z_j - z_t``. Using the logit margin (Carlini & Wagner 2017) rather than the
cross-entropy keeps the gradient alive on very confident samples, where a float32 softmax
saturates and the cross-entropy gradient becomes exactly zero.

- :func:`fgsm` — single step along the steepest-ascent direction of the margin at the clean
  input (Goodfellow et al. 2015; the L2 form is "FGM");
- :func:`pgd` — projected gradient descent with random start / warm start, step size
  ``2.5 ε / steps`` (Madry et al. 2018), restarts, early stop of fooled samples;
- :func:`fmn` — the Fast Minimum-Norm attack (Pintor et al. 2021): an adaptive ε-ball that
  shrinks while the sample is adversarial and grows (from a linear estimate of the distance
  to the boundary) while it is not; returns every sample's smallest adversarial found;
- :func:`square` — the score-based, gradient-free Square attack (Andriushchenko et al.
  2020) for L∞ (random ±ε squares); for L2 a simplified window random search on the
  ε-sphere; accepts a proposal only when the margin drops;
- :func:`noise` — random noise of the same norm and size (random ±ε signs for L∞, a random
  direction of length ε for L2): the baseline adversarial noise must beat.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NORMS = ("linf", "l2")


# ----------------------------------------------------------------------------- norm geometry
def norm_of(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a batch of perturbations (N,)."""
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def dual_norm_of(g: torch.Tensor, norm: str) -> torch.Tensor:
    flat = g.flatten(1)
    return flat.abs().sum(1) if norm == "linf" else flat.norm(dim=1)


def _view(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.full((like.shape[0],), float(v), device=like.device)
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def project(d: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Project each perturbation onto its ε-ball."""
    e = _view(eps, d)
    if norm == "linf":
        return torch.maximum(torch.minimum(d, e), -e)
    n = _view(norm_of(d, "l2"), d)
    return d * torch.where(n > e, e / n.clamp_min(1e-12), torch.ones_like(n))


def in_bounds(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The perturbation that keeps ``x + d`` inside [0, 1]."""
    return (x + d).clamp(0, 1) - x


def steepest(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit steepest-ascent direction of a gradient under the norm (sign for L∞)."""
    if norm == "linf":
        return g.sign()
    return g / _view(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)


def random_in_ball(like: torch.Tensor, eps: torch.Tensor | float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """Uniform random points inside the ε-balls (drawn on the CPU generator)."""
    e = _view(eps, like).cpu()
    if norm == "linf":
        r = (torch.rand(like.shape, generator=gen) * 2 - 1) * e
    else:
        u = torch.randn(like.shape, generator=gen)
        u = u / _view(u.flatten(1).norm(dim=1).clamp_min(1e-12), u)
        dim = like[0].numel()
        rad = torch.rand(like.shape[0], generator=gen) ** (1.0 / dim)
        r = u * _view(rad, u) * e
    return r.to(like.device, like.dtype)


def random_on_sphere(like: torch.Tensor, eps: torch.Tensor | float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """Random perturbations of norm exactly ε: ±ε signs (L∞) or a random direction (L2)."""
    e = _view(eps, like).cpu()
    if norm == "linf":
        r = (torch.randint(0, 2, like.shape, generator=gen).float() * 2 - 1) * e
    else:
        u = torch.randn(like.shape, generator=gen)
        r = u / _view(u.flatten(1).norm(dim=1).clamp_min(1e-12), u) * e
    return r.to(like.device, like.dtype)


# ----------------------------------------------------------------------------- objective
class Objective:
    """The model plus the attack goal. ``lab`` is the true label (untargeted) or the target
    class (targeted). Counts forward and backward passes per sample (``queries``)."""

    def __init__(self, model: torch.nn.Module, *, targeted: bool = False, device: torch.device | None = None,
                 amp: torch.dtype | None = None):
        self.model = model
        self.targeted = targeted
        self.device = device or torch.device("cpu")
        self.amp = amp  #: autocast dtype of the forward/backward passes (None: the model's own, fp32)
        self.forwards = 0
        self.backwards = 0

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (float32), under autocast when ``amp`` is set."""
        with torch.autocast(x.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            return self.model(x).float()

    def margin_from_logits(self, z: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        own = z.gather(1, lab[:, None]).squeeze(1)
        other = z.scatter(1, lab[:, None], float("-inf")).amax(1)
        return other - own if self.targeted else own - other

    def __call__(self, x: torch.Tensor, lab: torch.Tensor, *, grad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Margin (N,) at ``x`` and, with ``grad``, its input gradient (N, C, H, W)."""
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

    def ce_grad(self, x: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """Gradient of the cross-entropy loss we ascend (descend when targeted)."""
        self.forwards += x.shape[0]
        self.backwards += x.shape[0]
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(self.logits(xg), lab, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
        g = g.float()
        return -g if self.targeted else g


# ----------------------------------------------------------------------------- attacks
# Each bounded attack takes clean x (n, C, H, W) on the device, labels/targets and ε, and
# returns (fooled (n,) bool, x_adv (n, C, H, W)) where x_adv is the adversarial for fooled
# samples (and the clean input otherwise). Validity is checked by the caller.

def fgsm_from_grad(obj: Objective, x: torch.Tensor, lab: torch.Tensor, g: torch.Tensor, eps: float, norm: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of size ε along the steepest descent of the margin (gradient ``g`` at x)."""
    xa = x + in_bounds(x, -eps * steepest(g, norm))
    m, _ = obj(xa, lab)
    fooled = m < 0
    return fooled, torch.where(fooled.view(-1, 1, 1, 1), xa, x)


def pgd(obj: Objective, x: torch.Tensor, lab: torch.Tensor, eps: float, norm: str, *, steps: int, restarts: int,
        gen: torch.Generator, init: torch.Tensor | None = None, rel_step: float = 2.5,
        warm_step: float = 0.25
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD on the margin. Restart 0 starts from ``init`` (projected onto the ball) when
    given (with step ``warm_step·ε/steps``), else from a random point (step
    ``rel_step·ε/steps``, enough to cross the ball); later restarts from random points. A sample stops as
    soon as it is fooled; each sample keeps its adversarial iterate."""
    n = x.shape[0]
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    adv = x.clone()
    for r in range(max(1, restarts)):
        # a warm start sits near the boundary already: smaller steps refine it
        alpha = (warm_step if (r == 0 and init is not None) else rel_step) * eps / max(steps, 1)
        act = (~fooled).nonzero().flatten()
        if len(act) == 0:
            break
        d0 = init[act] if (r == 0 and init is not None) else random_in_ball(x[act], eps, norm, gen)
        xs, ls = x[act], lab[act]
        d = in_bounds(xs, project(d0, eps, norm))
        live = torch.arange(len(act), device=x.device)
        for k in range(steps + 1):
            xa = xs[live] + d[live]
            m, g = obj(xa, ls[live], grad=k < steps)
            hit = m < 0
            if hit.any():
                where = act[live[hit]]
                fooled[where] = True
                adv[where] = xa[hit]
            keep = ~hit
            if k == steps or not keep.any():
                break
            live, g = live[keep], g[keep]
            dn = d[live] - alpha * steepest(g, norm)
            d[live] = in_bounds(xs[live], project(dn, eps, norm))
    return fooled, adv


def fmn(obj: Objective, x: torch.Tensor, lab: torch.Tensor, norm: str, *, steps: int, max_eps: float,
        gamma0: float = 0.15, gamma1: float = 0.005, lr0: float = 1.0, lr1: float = 0.01
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast Minimum-Norm attack (Pintor et al. 2021), unbounded up to ``max_eps``.

    Returns (norm of the smallest adversarial found, inf where none; that adversarial)."""
    n = x.shape[0]
    d = torch.zeros_like(x)
    eps = torch.full((n,), float("inf"), device=x.device)
    best = torch.full((n,), float("inf"), device=x.device)
    adv = x.clone()
    for k in range(steps):
        xa = x + d
        m, g = obj(xa, lab, grad=True)
        dn = norm_of(d, norm)
        is_adv = m < 0
        better = is_adv & (dn < best)
        best = torch.where(better, dn, best)
        adv[better] = xa[better]
        if k == steps - 1:
            break
        cos = 0.5 * (1 + math.cos(math.pi * k / steps))
        gamma = gamma1 + (gamma0 - gamma1) * cos
        lr = lr1 + (lr0 - lr1) * cos
        gd = dual_norm_of(g, norm)
        found = torch.isfinite(best)
        # not adversarial yet and never was: linear estimate of the distance to the boundary
        guess = dn + m.clamp_min(0) / gd.clamp_min(1e-12)
        guess = torch.where(gd > 0, guess, torch.full_like(guess, float("inf")))
        eps = torch.where(is_adv, torch.minimum(eps, dn) * (1 - gamma),
                          torch.where(found, eps * (1 + gamma), guess))
        eps = torch.minimum(torch.nan_to_num(eps, nan=max_eps), torch.full_like(eps, max_eps))
        step = _view(lr * eps, d) * steepest(g, norm)
        d = in_bounds(x, project(d - step, eps, norm))
    return best, adv


def square(obj: Objective, x: torch.Tensor, lab: torch.Tensor, eps: float, norm: str, *, queries: int,
           gen: torch.Generator, p_init: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-based Square attack: random square windows, accepted only when the margin
    drops; ``queries`` forward passes per sample at most; a fooled sample stops."""
    n, c, h, w = x.shape
    dev = x.device
    if norm == "linf":  # vertical stripes of ±ε, as in the paper
        d = (torch.randint(0, 2, (n, c, 1, w), generator=gen).float() * 2 - 1).to(dev) * eps
        d = d.expand(n, c, h, w).clone()
    else:
        d = random_on_sphere(x, eps, norm, gen)
    d = in_bounds(x, d)
    m, _ = obj(x + d, lab)
    fooled = m < 0
    adv = torch.where(fooled.view(-1, 1, 1, 1), x + d, x)
    live = (~fooled).nonzero().flatten()
    yy = torch.arange(h, device=dev).view(1, 1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, 1, w)
    for q in range(1, queries):
        if len(live) == 0:
            break
        frac = q / queries
        p = p_init * 0.5 ** sum(frac > t for t in (0.05, 0.15, 0.3, 0.5, 0.7, 0.85))
        s = max(1, min(h, w, int(round(math.sqrt(p * h * w)))))
        k = len(live)
        r0 = torch.randint(0, h - s + 1, (k,), generator=gen).to(dev).view(k, 1, 1, 1)
        c0 = torch.randint(0, w - s + 1, (k,), generator=gen).to(dev).view(k, 1, 1, 1)
        win = (yy >= r0) & (yy < r0 + s) & (xx >= c0) & (xx < c0 + s)
        sign = (torch.randint(0, 2, (k, c, 1, 1), generator=gen).float() * 2 - 1).to(dev)
        dl, xl = d[live], x[live]
        if norm == "linf":
            prop = torch.where(win, sign * eps, dl)
        else:  # add a window of mass and put the perturbation back on the ε-sphere
            bump = sign * eps * math.sqrt(max(p, 1e-3)) * win
            prop = dl + bump
            prop = prop * _view(eps / norm_of(prop, "l2").clamp_min(1e-12), prop)
        prop = in_bounds(xl, prop)
        mp, _ = obj(xl + prop, lab[live])
        better = mp < m[live]
        upd = live[better]
        d[upd] = prop[better]
        m[upd] = mp[better]
        hit = mp < 0
        if hit.any():
            where = live[hit]
            fooled[where] = True
            adv[where] = xl[hit] + prop[hit]
        live = live[~hit]
    return fooled, adv


def noise(obj: Objective, x: torch.Tensor, lab: torch.Tensor, eps: float, norm: str, *, draws: int,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random noise of norm ε (before clipping to [0, 1]); fooled if any draw flips it."""
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    adv = x.clone()
    for _ in range(max(1, draws)):
        live = (~fooled).nonzero().flatten()
        if len(live) == 0:
            break
        xa = x[live] + in_bounds(x[live], random_on_sphere(x[live], eps, norm, gen))
        m, _ = obj(xa, lab[live])
        hit = m < 0
        fooled[live[hit]] = True
        adv[live[hit]] = xa[hit]
    return fooled, adv
