"""Two of Carlini et al. 2019's checks ("On Evaluating Adversarial Robustness", §5) that the
ensemble cannot make by itself, run on a small subset of the attacked samples (the plan's
``probe`` samples) after the ensemble, per norm:

- **Success must rise with ε, measured independently.** The ensemble shares work across ε
  (an adversarial found at ε counts at every larger ε; with ``share_failures`` a failure
  counts at every smaller one), so its curve is monotone by construction and cannot show the
  red flag. Here APGD-CE runs at every ε *on its own*, from a fresh random start, on every
  probe sample (``independent`` (n, K) bool: fooled at ε index k). A success rate that falls
  as ε grows means the attack is not finding what exists (gradient masking or a bug).
- **More iterations must not change the result much** (a convergence probe). APGD-CE with
  ``LONGER``× the budget's iterations (one start) runs on the probe samples the ensemble
  left robust, from the largest ε down (a sample it cannot fool at ε is not tried at smaller
  ε). ``longer_tried`` / ``longer_fooled`` (n, K) bool: which probe samples it ran on at
  each ε, and which it fooled there. Samples it fools are adversarials the ensemble missed:
  the robust accuracy is overestimated and the budget is too small for this model.

The probes' adversarials are checked for validity like every other (the engine's record
asserts) but are not merged into the worst case: they are evidence about the ensemble, and
the findings (``gradient_masking.success_not_monotone``, ``adversarial.not_converged``)
say what they found. Cost: K × (probe samples) × ``min(apgd_steps, 20)`` gradient steps for
the first, at most (robust probe samples) × ``LONGER`` × ``apgd_steps`` for the second.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .apgd import APGDCE
from .objective import Objective

if TYPE_CHECKING:  # pragma: no cover
    from .engine import NormRecord
    from .plan import Plan

__all__ = ["diagnose", "independent_success", "longer_attack", "apgd_runner", "LONGER", "INDEPENDENT_STEPS"]

#: the convergence probe's iterations, as a multiple of the budget's ``apgd_steps``
LONGER = 4
#: the most iterations of each independent per-ε run
INDEPENDENT_STEPS = 20

Runner = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


def independent_success(rows: torch.Tensor, eps: list[float], attack: Runner) -> torch.Tensor:
    """(len(rows), K) bool: whether ``attack(rows, ε)`` (fooled (m,) bool on the CPU, x_adv)
    fools each of the samples ``rows`` at each ε, every ε on its own."""
    out = torch.zeros(len(rows), len(eps), dtype=torch.bool)
    if len(rows) == 0:
        return out
    for k, e in enumerate(eps):
        out[:, k] = attack(rows, e)[0]
    return out


def longer_attack(rows: torch.Tensor, robust: torch.Tensor, eps: list[float], attack: Runner
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(tried, fooled), each (len(rows), K) bool: ``attack`` on each sample of ``rows`` at each
    ε where ``robust`` (len(rows), K) bool says the ensemble left it robust, from the largest
    ε down; a sample it fails on at ε is not tried at smaller ε."""
    K = len(eps)
    tried = torch.zeros(len(rows), K, dtype=torch.bool)
    fooled = torch.zeros(len(rows), K, dtype=torch.bool)
    failed = torch.zeros(len(rows), dtype=torch.bool)
    for k in reversed(range(K)):
        todo = (robust[:, k] & ~failed).nonzero().flatten()
        if len(todo) == 0:
            continue
        f = attack(rows[todo], eps[k])[0]
        tried[todo, k] = True
        fooled[todo[f], k] = True
        failed[todo[~f]] = True
    return tried, fooled


def apgd_runner(obj: Objective, on_device: Callable, norm: str, steps: int, restarts: int, gen: torch.Generator,
                record: Callable[[torch.Tensor, torch.Tensor, float, torch.Tensor], torch.Tensor]) -> Runner:
    """An APGD-CE :data:`Runner` over plan rows: ``restarts`` starts of ``steps`` iterations;
    ``record(rows, fooled, ε, x_adv)`` validates the adversarials and returns the confirmed
    ``fooled`` (the engine's fp32 confirmation and ball asserts)."""

    attack = APGDCE(steps=steps, restarts=restarts)

    def run(rows: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        fooled, adv = attack.run(obj, *on_device(rows), eps, norm, gen=gen)
        return record(rows, fooled.cpu(), eps, adv), adv

    return run


def diagnose(nr: "NormRecord", plan: "Plan", obj: Objective, on_device: Callable, record: Callable,
             apgd_steps: int, gen: torch.Generator) -> None:
    """Both probes on ``plan``'s probe samples (attacked ones) for the norm of ``nr``, filling
    ``nr.independent``, ``nr.longer_tried``, ``nr.longer_fooled`` ((n, K) bool; left None when
    there is no probe or no usable gradient). ``on_device(rows)`` gives (x, lab) on the model's
    device; ``record`` as in :func:`apgd_runner`."""
    if plan.probe is None or not plan.grad_ok:
        return
    n, K = plan.n, nr.K
    nr.independent, nr.longer_tried, nr.longer_fooled = (torch.zeros(n, K, dtype=torch.bool) for _ in range(3))
    rows = (plan.probe & plan.attacked).nonzero().flatten()
    if len(rows) == 0:
        return
    quick = apgd_runner(obj, on_device, nr.norm, min(apgd_steps, INDEPENDENT_STEPS), 1, gen, record)
    nr.independent[rows] = independent_success(rows, nr.eps, quick)
    robust = torch.stack([nr.worst_first()[rows] > k for k in range(K)], 1)
    longer = apgd_runner(obj, on_device, nr.norm, LONGER * apgd_steps, 1, gen, record)
    nr.longer_tried[rows], nr.longer_fooled[rows] = longer_attack(rows, robust, nr.eps, longer)
