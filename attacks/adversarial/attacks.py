"""The attacks of the ``adversarial`` check and their registry, in plain torch (batched,
early-stopping, seeded).

Every attack works in pixel space [0, 1] under an L∞ or L2 budget (:mod:`.threat`) and
minimises the logit margin of an :class:`~.objective.Objective`. Two kinds:

- a :class:`BoundedAttack` gets clean inputs ``x`` (n, C, H, W) on the model's device, their
  labels/targets ``lab`` (n,) and one ε, and returns ``(fooled (n,) bool, x_adv (n, C, H, W))``
  with ``x_adv`` the adversarial where fooled (the clean input elsewhere); the engine runs it
  at each ε of the grid on the samples it has not settled yet (and that
  :meth:`BoundedAttack.select` keeps);
- a :class:`MinimumNormAttack` runs once, unbounded, and returns every sample's smallest
  adversarial (the perturbation histogram and the unbounded-attack test); the engine runs these
  first. No bounded attack depends on what they found.

Here: the base classes, the registry, FGSM, PGD, FMN and random noise; APGD (CE, DLR,
targeted) is in :mod:`.apgd`, Square in :mod:`.square`. Adding an attack is one class plus
``@register_attack`` on it: the options' ``attacks`` list, the docs table
(tests/attacks/test_adversarial.py compares it) and the engine read the registry
:data:`ATTACKS`. Registration order is the order attacks are listed and reported; the engine
runs the minimum-norm attacks first, then the gradient attacks, then the gradient-free ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from audit.fastpath import sync_every

from .objective import Objective
from .threat import dual_norm_of, in_bounds, norm_of, per_sample, project, random_in_ball, random_on_sphere, steepest

__all__ = ["Attack", "BoundedAttack", "MinimumNormAttack", "Guide", "ATTACKS", "register_attack",
           "gradient_attacks", "FGSM", "PGD", "FMN", "Noise"]

Result = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Guide:
    """What the attacks of one norm share on one unit's samples (all CPU): ``x`` (n, C, H, W)
    the clean inputs, ``eps`` the sorted ε grid, ``first[a]`` (n,) int64 the index of the
    smallest ε at which attack ``a`` fooled each sample (``len(eps)`` = not yet; updated as the
    attacks run), ``grad0`` (n, C, H, W) the margin's gradient at the clean inputs (None without
    usable gradients), and ``min_norm`` (n,) / ``min_adv`` (n, C, H, W) the smallest adversarial
    perturbation norm (inf: none) and adversarial found by the minimum-norm attacks (None when
    none ran; the unbounded-attack test reads them, no bounded attack does)."""

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


class Attack:
    """An attack: ``name`` (the option value and the metrics' ``attack``), ``uses_gradients``
    (skipped when the model's input gradients cannot be used), ``paper`` and ``label`` (how a
    finding names it). ``iterative``: an attack whose failure on a sample at ε carries to the
    smaller ε when the budget's ``share_failures`` is on (the engine then runs it from the
    largest ε down); FGSM and noise, cheap and not monotone in ε, run at every ε."""

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    minimum_norm: ClassVar[bool] = False
    iterative: ClassVar[bool] = False
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
        """(n,) bool: the samples to attack at ε index ``k`` (besides those the attack has not
        settled yet); None: all of them."""
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
    """Projected gradient descent on the margin (Madry et al. 2018): ``restarts`` runs from
    uniform random starts in the ε-ball, ``steps`` steps of ``rel_step``·ε/steps along the
    steepest descent (sign for L∞), each projected onto the ball and [0, 1]; a sample leaves
    the batch as soon as it is fooled, and later restarts run only on the samples not fooled."""

    name, label, paper = "pgd", "PGD", "Madry et al. 2018"
    iterative = True

    def __init__(self, steps: int = 10, restarts: int = 1, rel_step: float = 2.5):
        self.steps, self.restarts, self.rel_step = steps, restarts, rel_step

    @classmethod
    def from_options(cls, o):
        r = o.resolved
        return cls(steps=r.pgd_steps, restarts=r.pgd_restarts)

    def run(self, obj, x, lab, eps, norm, *, gen):
        n = x.shape[0]
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        adv = x.clone()
        alpha = self.rel_step * eps / max(self.steps, 1)
        for _ in range(max(1, self.restarts)):
            act = (~fooled).nonzero().flatten()
            if len(act) == 0:
                break
            xs, ls = x[act], lab[act]
            d = in_bounds(xs, project(random_in_ball(xs, eps, norm, gen), eps, norm))
            live = torch.arange(len(act), device=x.device)
            done = torch.zeros(len(act), dtype=torch.bool, device=x.device)  # fooled (rows of act)
            every = sync_every(x.device)  # fooled samples leave the batch every `every` steps only
            for k in range(self.steps + 1):
                if k and k % every == 0:  # the only host-device synchronization of the loop
                    live = live[~done[live]]
                    if len(live) == 0:
                        break
                xa = xs[live] + d[live]
                m, g = obj(xa, ls[live], grad=k < self.steps)
                hit = (m < 0) & ~done[live]
                where = act[live]
                adv[where] = torch.where(per_sample(hit, xa) > 0, xa, adv[where])
                fooled[where] |= hit
                done[live] |= hit
                if k == self.steps:
                    break
                dn = d[live] - alpha * steepest(g, norm)
                d[live] = torch.where(per_sample(hit, dn) > 0, d[live], in_bounds(xs[live], project(dn, eps, norm)))
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
        return cls(steps=o.resolved.fmn_steps)

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
            adv = torch.where(per_sample(better, xa) > 0, xa, adv)  # no boolean indexing: no sync
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
class Noise(BoundedAttack):
    """Random noise of norm ε before clipping to [0, 1] (±ε signs for L∞, a random direction
    for L2), ``draws`` draws per sample: the baseline adversarial noise must beat."""

    name, label, paper = "noise", "random noise", "—"
    uses_gradients = False

    def __init__(self, draws: int = 1):
        self.draws = draws

    @classmethod
    def from_options(cls, o):
        return cls(draws=o.resolved.noise_draws)

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
