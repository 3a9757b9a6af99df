"""The attack budgets of the ``adversarial`` check (``[checks.adversarial] budget``, ``--budget``).

A budget is a full set of attack settings; an option set explicitly in ``[checks.adversarial]``
overrides the budget's value for that setting only (:func:`resolve`).

- ``standard`` (the default): AutoAttack's standard version (Croce & Hein 2020, "Reliable
  evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks"):
  APGD-CE and APGD-T (targeted DLR over the top 9 other classes) at 100 iterations, one
  restart each, FAB-T left out, Square at 5,000 queries on every sample still robust after
  the gradient attacks; plus FGSM, PGD (two random starts), FMN (minimal perturbations) and
  random noise. 100 samples: the 95 % Wilson interval of a robust accuracy is then at most
  ±9.6 points (at 50 %).
- ``fast``: for CI on CPU: FGSM, APGD-CE at 20 iterations, FMN at 20, Square at 50 queries
  and noise; no APGD-T, no PGD; 48 samples (interval up to ±13.5 points) (what it costs and what it may miss: docs/adversarial.md).
- ``thorough``: AutoAttack-plus-like: APGD-DLR too, five restarts of every APGD and PGD run,
  10,000 Square queries, 200 samples (±6.8 points), and every ε attacked on its own (``share_failures`` off).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = ["Budget", "BUDGETS", "BUDGET_NAMES", "SETTINGS", "resolve"]


@dataclass(frozen=True)
class Budget:
    """Concrete attack settings (see the options of the same names in docs/adversarial.md).
    ``share_failures``: an attack that fails on a sample at ε (PGD, APGD, Square) is not run on
    it at a smaller ε, where it counts as failed too (ε are then attacked from the largest
    down)."""

    attacks: tuple[str, ...]
    max_samples: int
    pgd_steps: int
    pgd_restarts: int
    apgd_steps: int
    apgd_restarts: int
    apgd_targets: int
    fmn_steps: int
    square_queries: int
    noise_draws: int
    share_failures: bool

    def as_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


_ENSEMBLE = ("fgsm", "pgd", "fmn", "noise", "apgd_ce", "apgd_t", "square")

BUDGETS: dict[str, Budget] = {
    "fast": Budget(attacks=("fgsm", "fmn", "noise", "apgd_ce", "square"), max_samples=48, pgd_steps=10, pgd_restarts=1,
                   apgd_steps=20, apgd_restarts=1, apgd_targets=1, fmn_steps=20, square_queries=50, noise_draws=1,
                   share_failures=True),
    "standard": Budget(attacks=_ENSEMBLE, max_samples=100, pgd_steps=10, pgd_restarts=2, apgd_steps=100, apgd_restarts=1,
                       apgd_targets=9, fmn_steps=40, square_queries=5000, noise_draws=1, share_failures=True),
    "thorough": Budget(attacks=_ENSEMBLE[:5] + ("apgd_dlr",) + _ENSEMBLE[5:], max_samples=200,
                       pgd_steps=20, pgd_restarts=5,
                       apgd_steps=100, apgd_restarts=5, apgd_targets=9, fmn_steps=100, square_queries=10000,
                       noise_draws=5, share_failures=False),
}
BUDGET_NAMES = tuple(BUDGETS)
#: the settings an option of the same name overrides
SETTINGS = tuple(f.name for f in fields(Budget))


def resolve(budget: str, overrides: dict[str, Any]) -> Budget:
    """The budget ``budget`` with the settings in ``overrides`` (name -> value; None: the
    budget's) replaced."""
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    return replace(BUDGETS[budget], **given)
