"""The attacks of the ``adversarial`` check and their registry, in plain torch (batched,
early-stopping, seeded).

Every attack works in pixel space [0, 1] under an L∞ or L2 budget (:mod:`.threat`) and
minimises the logit margin of an :class:`~.objective.Objective`. Two kinds:

- a :class:`BoundedAttack` gets clean inputs ``x`` (n, C, H, W) on the model's device, their
  labels/targets ``lab`` (n,) and one ε, and returns ``(fooled (n,) bool, x_adv (n, C, H, W))``
  with ``x_adv`` the adversarial where fooled (the clean input elsewhere); the engine runs it
  at each ε of the grid on the samples it has not fooled yet (and that :meth:`BoundedAttack.select`
  keeps);
- a :class:`MinimumNormAttack` runs once, unbounded, and returns every sample's smallest
  adversarial; the engine runs these first and hands what they found to the bounded attacks
  (:class:`Guide`).

Adding an attack is one class here plus ``@register_attack`` on it: the options' ``attacks``
list, the docs table (tests/attacks/test_adversarial.py compares it) and the engine read the
registry :data:`ATTACKS`. Registration order is the order attacks are listed, reported and (after
the minimum-norm attacks) run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from .objective import Objective
from .threat import dual_norm_of, in_bounds, norm_of, per_sample, project, random_in_ball, random_on_sphere, steepest

__all__ = ["Attack", "BoundedAttack", "MinimumNormAttack", "Guide", "ATTACKS", "register_attack",
           "gradient_attacks", "FGSM", "PGD", "FMN", "Square", "Noise"]

Result = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Guide:
    """What the attacks of one norm share on one unit's samples (all CPU): ``x`` (n, C, H, W)
    the clean inputs, ``eps`` the sorted ε grid, ``first[a]`` (n,) int64 the index of the
    smallest ε at which attack ``a`` fooled each sample (``len(eps)`` = not yet; updated as the
    attacks run), ``grad0`` (n, C, H, W) the margin's gradient at the clean inputs (None without
    usable gradients), and ``min_norm`` (n,) / ``min_adv`` (n, C, H, W) the smallest adversarial
    perturbation norm (inf: none) and adversarial found by the minimum-norm attacks (None when
    none ran)."""

    x: torch.Tensor
    eps: list[float]
    first: dict[str, torch.Tensor]
    grad0: torch.Tensor | None = None
    min_norm: torch.Tensor | None = None
    min_adv: torch.Tensor | None = None

    @property
    def gradient(self) -> list[str]:
        """The gradient attacks among those run."""
        return [a for a in self.first if ATTACKS[a].uses_gradients]

    def within(self, ratio: float, k: int) -> torch.Tensor | None:
        """(n,) bool: the samples whose minimal perturbation found is ≤ ``ratio`` × ε_k, or
        that the minimum-norm attacks failed on; None (every sample) without a minimum-norm
        result or with ``ratio`` ≤ 0."""
        if self.min_norm is None or ratio <= 0:
            return None
        return (~torch.isfinite(self.min_norm)) | (self.min_norm <= ratio * self.eps[k])


class Attack:
    """An attack: ``name`` (the option value and the metrics' ``attack``), ``uses_gradients``
    (skipped when the model's input gradients cannot be used), ``paper`` and ``label`` (how a
    finding names it)."""

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    minimum_norm: ClassVar[bool] = False
    label: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    @classmethod
    def from_options(cls, options: Any) -> "Attack":
        """The attack configured from the check's Options."""
        return cls()


class BoundedAttack(Attack):
    def run(self, obj: Objective, x: torch.Tensor, lab: torch.Tensor, eps: float, norm: str, *,
            gen: torch.Generator) -> Result:
        """The attack at one ε on its own (see the module docstring for shapes)."""
        raise NotImplementedError

    def perturb(self, obj: Objective, x: torch.Tensor, lab: torch.Tensor, eps: float, norm: str, *,
                rows: torch.Tensor, guide: Guide, gen: torch.Generator) -> Result:
        """The attack at one ε on the samples ``rows`` of ``guide`` (``x``, ``lab`` are those
        rows, on the device); by default :meth:`run`."""
        return self.run(obj, x, lab, eps, norm, gen=gen)

    def select(self, k: int, guide: Guide) -> torch.Tensor | None:
        """(n,) bool: the samples worth attacking at ε index ``k`` (besides those not fooled
        yet); None: all of them."""
        return None

    def is_control(self, guide: Guide) -> bool:
        """True when the attack only runs where every gradient attack failed (a control of
        gradient masking, reported as ``gradient+<name>`` rather than as its own curve)."""
        return False


class MinimumNormAttack(Attack):
    minimum_norm = True

    def minimize(self, obj: Objective, x: torch.Tensor, lab: torch.Tensor, norm: str, *, max_eps: float) -> Result:
        """(norm (n,) of the smallest adversarial found, inf where none; that adversarial)."""
        raise NotImplementedError


_ATTACKS: dict[str, type[Attack]] = {}
#: name -> attack class, in registration order
ATTACKS = MappingProxyType(_ATTACKS)


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator adding an attack to :data:`ATTACKS`; a taken name is a ValueError."""
    if not cls.name or cls.name in _ATTACKS:
        raise ValueError(f"attack name {cls.name!r} is empty or already registered")
    _ATTACKS[cls.name] = cls
    return cls


def gradient_attacks() -> list[str]:
    return [a for a, c in ATTACKS.items() if c.uses_gradients]


# ----------------------------------------------------------------------------- the attacks
@register_attack
class FGSM(BoundedAttack):
    """One step of size ε along the steepest descent of the margin at the clean input (sign
    for L∞; the L2 form is FGM)."""

    name, label, paper = "fgsm", "FGSM", "Goodfellow et al. 2015"

    def run(self, obj, x, lab, eps, norm, *, gen):
        _, g = obj(x, lab, grad=True)
        return self.step(obj, x, lab, g, eps, norm)

    def perturb(self, obj, x, lab, eps, norm, *, rows, guide, gen):
        return self.step(obj, x, lab, guide.grad0[rows].to(x.device), eps, norm)

    @staticmethod
    def step(obj: Objective, x: torch.Tensor, lab: torch.Tensor, g: torch.Tensor, eps: float, norm: str) -> Result:
        """The step from ``x`` given the margin's gradient ``g`` there."""
        xa = x + in_bounds(x, -eps * steepest(g, norm))
        m, _ = obj(xa, lab)
        fooled = m < 0
        return fooled, torch.where(fooled.view(-1, 1, 1, 1), xa, x)


@register_attack
class PGD(BoundedAttack):
    """Projected gradient descent on the margin, ``steps`` steps of ``rel_step``·ε/steps from a
    random start; restart 0 warm-starts from the minimum-norm perturbation projected onto the
    ball (steps of ``warm_step``·ε/steps) where there is one; runs at ε only where the minimal
    perturbation found is ≤ ``window``·ε; a sample stops as soon as it is fooled."""

    name, label, paper = "pgd", "PGD", "Madry et al. 2018"

    def __init__(self, steps: int = 10, restarts: int = 1, window: float = 1.5, rel_step: float = 2.5,
                 warm_step: float = 0.25):
        self.steps, self.restarts, self.window = steps, restarts, window
        self.rel_step, self.warm_step = rel_step, warm_step

    @classmethod
    def from_options(cls, o):
        return cls(steps=o.pgd_steps, restarts=o.pgd_restarts, window=o.pgd_window)

    def select(self, k, guide):
        return guide.within(self.window, k)

    def perturb(self, obj, x, lab, eps, norm, *, rows, guide, gen):
        init = None
        if guide.min_adv is not None:
            init = (guide.min_adv[rows] - guide.x[rows]).to(x.device)
            miss = (~torch.isfinite(guide.min_norm[rows])).to(x.device)
            if miss.any():
                init[miss] = random_in_ball(x[miss], eps, norm, gen)
        return self.run(obj, x, lab, eps, norm, gen=gen, init=init)

    def run(self, obj, x, lab, eps, norm, *, gen, init: torch.Tensor | None = None):
        """``init`` (n, C, H, W): restart 0's start (projected onto the ball), or None."""
        n = x.shape[0]
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        adv = x.clone()
        for r in range(max(1, self.restarts)):
            warm = r == 0 and init is not None  # a warm start sits near the boundary: smaller steps
            alpha = (self.warm_step if warm else self.rel_step) * eps / max(self.steps, 1)
            act = (~fooled).nonzero().flatten()
            if len(act) == 0:
                break
            d0 = init[act] if warm else random_in_ball(x[act], eps, norm, gen)
            xs, ls = x[act], lab[act]
            d = in_bounds(xs, project(d0, eps, norm))
            live = torch.arange(len(act), device=x.device)
            for k in range(self.steps + 1):
                xa = xs[live] + d[live]
                m, g = obj(xa, ls[live], grad=k < self.steps)
                hit = m < 0
                if hit.any():
                    where = act[live[hit]]
                    fooled[where] = True
                    adv[where] = xa[hit]
                keep = ~hit
                if k == self.steps or not keep.any():
                    break
                live, g = live[keep], g[keep]
                dn = d[live] - alpha * steepest(g, norm)
                d[live] = in_bounds(xs[live], project(dn, eps, norm))
        return fooled, adv


@register_attack
class FMN(MinimumNormAttack):
    """Fast Minimum-Norm attack: an adaptive ε-ball that shrinks while the sample is
    adversarial and grows (from a linear estimate of the distance to the boundary) while it is
    not, unbounded up to ``max_eps``."""

    name, label, paper = "fmn", "FMN", "Pintor et al. 2021"

    def __init__(self, steps: int = 40, gamma0: float = 0.15, gamma1: float = 0.005, lr0: float = 1.0,
                 lr1: float = 0.01):
        self.steps, self.gamma0, self.gamma1, self.lr0, self.lr1 = steps, gamma0, gamma1, lr0, lr1

    @classmethod
    def from_options(cls, o):
        return cls(steps=o.fmn_steps)

    def minimize(self, obj, x, lab, norm, *, max_eps):
        n, steps = x.shape[0], self.steps
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
            gamma = self.gamma1 + (self.gamma0 - self.gamma1) * cos
            lr = self.lr1 + (self.lr0 - self.lr1) * cos
            gd = dual_norm_of(g, norm)
            found = torch.isfinite(best)
            # not adversarial yet and never was: linear estimate of the distance to the boundary
            guess = dn + m.clamp_min(0) / gd.clamp_min(1e-12)
            guess = torch.where(gd > 0, guess, torch.full_like(guess, float("inf")))
            eps = torch.where(is_adv, torch.minimum(eps, dn) * (1 - gamma),
                              torch.where(found, eps * (1 + gamma), guess))
            eps = torch.minimum(torch.nan_to_num(eps, nan=max_eps), torch.full_like(eps, max_eps))
            step = per_sample(lr * eps, d) * steepest(g, norm)
            d = in_bounds(x, project(d - step, eps, norm))
        return best, adv


@register_attack
class Square(BoundedAttack):
    """Score-based, gradient-free Square attack: random ±ε squares (L∞; vertical-stripe
    init), accepted only when the margin drops, ``queries`` forward passes per sample at most;
    for L2 a simplified window random search on the ε-sphere. ``scope="control"``: only where
    every gradient attack failed (and the minimal perturbation is ≤ ``window``·ε)."""

    name, label, paper = "square", "the gradient-free Square attack", "Andriushchenko et al. 2020"
    uses_gradients = False

    def __init__(self, queries: int = 50, window: float = 1.25, scope: str = "control", p_init: float = 0.3):
        self.queries, self.window, self.scope, self.p_init = queries, window, scope, p_init

    @classmethod
    def from_options(cls, o):
        return cls(queries=o.square_queries, window=o.square_window, scope=o.square_scope)

    def is_control(self, guide):
        return self.scope == "control" and bool(guide.gradient)

    def select(self, k, guide):
        win = guide.within(self.window, k)
        keep = win if win is not None else torch.ones(guide.x.shape[0], dtype=torch.bool)
        if self.is_control(guide):  # only where every gradient attack failed at this ε
            keep = keep & (torch.stack([guide.first[a] for a in guide.gradient]).amin(0) > k)
        return keep

    def run(self, obj, x, lab, eps, norm, *, gen):
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
        for q in range(1, self.queries):
            if len(live) == 0:
                break
            p = self.p_init * 0.5 ** sum(q / self.queries > t for t in (0.05, 0.15, 0.3, 0.5, 0.7, 0.85))
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
                prop = dl + sign * eps * math.sqrt(max(p, 1e-3)) * win
                prop = prop * per_sample(eps / norm_of(prop, "l2").clamp_min(1e-12), prop)
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


@register_attack
class Noise(BoundedAttack):
    """Random noise of norm ε before clipping to [0, 1] (±ε signs for L∞, a random direction
    for L2), ``draws`` draws per sample: the baseline adversarial noise must beat."""

    name, label, paper = "noise", "random noise", "—"
    uses_gradients = False

    def __init__(self, draws: int = 1):
        self.draws = draws

    @classmethod
    def from_options(cls, o):
        return cls(draws=o.noise_draws)

    def run(self, obj, x, lab, eps, norm, *, gen):
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        adv = x.clone()
        for _ in range(max(1, self.draws)):
            live = (~fooled).nonzero().flatten()
            if len(live) == 0:
                break
            xa = x[live] + in_bounds(x[live], random_on_sphere(x[live], eps, norm, gen))
            m, _ = obj(xa, lab[live])
            hit = m < 0
            fooled[live[hit]] = True
            adv[live[hit]] = xa[hit]
        return fooled, adv
