"""``[checks.adversarial]``: the options of the ``adversarial`` check (docs/adversarial.md).

Types and bounds are validated when the config is read (:mod:`audit.options`); the rules
that involve several values (known attack and norm names, ε lists) are in ``__post_init__``.
Every ε is at most :data:`L2_MAX` when the config is read (L∞ at most 1); an L2 ε beyond
√(C·H·W) is refused once the input shape is known, before any check runs
(:meth:`.check.AdversarialCheck.preflight`, :func:`.threat.epsilon_grid`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from audit.errors import ConfigError
from audit.options import opt

from .apgd import APGD  # noqa: F401  (registers APGD-CE, APGD-DLR, APGD-T)
from .square import Square  # noqa: F401  (registers Square)
from .attacks import ATTACKS
from .budget import Budget, resolve, SETTINGS
from .threat import NORMS, Norm

__all__ = ["AdversarialOptions"]

_WHERE = "[checks.adversarial]"
#: the largest L2 ε accepted at config read: √(3·4096·4096) ≈ 7095 covers a 4096×4096 RGB image
L2_MAX = 7_100


@dataclass
class AdversarialOptions:
    norms: list[Norm] = opt(lambda: ["linf", "l2"], doc="threat models: linf, l2 (in [0, 1] pixel space)")
    epsilons: dict[str, list[float]] = opt(dict, max=L2_MAX, doc="{linf = [...], l2 = [...]}; a norm left out "
                                                                     "gets the default grid (linf <= 1, l2 <= √(C·H·W))")
    budget: Literal["fast", "standard", "thorough"] = opt(
        "standard", doc='attack settings: "standard" AutoAttack-grade (Croce & Hein 2020), "fast" for CI on CPU, '
                        '"thorough" more restarts and queries; the options below left unset take the budget\'s value')
    attacks: list[str] | None = opt(None, doc=f"subset of {', '.join(ATTACKS)} (unset: the budget's)")
    targeted: str = opt("", doc='"" untargeted; "least_likely"; or a class name / index')
    max_samples: int | None = opt(None, min=0, doc="class-stratified subset attacked (0 = all; unset: the budget's, "
                                                   "sized for the interval it gives)")
    pgd_steps: int | None = opt(None, min=1, doc="PGD iterations per restart")
    pgd_restarts: int | None = opt(None, min=1, doc="PGD random starts")
    apgd_steps: int | None = opt(None, min=1, doc="APGD iterations per restart (and per target for APGD-T)")
    apgd_restarts: int | None = opt(None, min=1, doc="APGD random starts")
    apgd_targets: int | None = opt(None, min=1, doc="APGD-T target classes: the top ones after the label "
                                                    "(at most the number of classes - 1)")
    fmn_steps: int | None = opt(None, min=1, doc="FMN iterations")
    square_queries: int | None = opt(None, min=1, doc="Square queries per sample and ε (after the initial one)")
    noise_draws: int | None = opt(None, min=1, doc="random noise draws per sample and ε")
    share_failures: bool | None = opt(None, doc="an iterative attack that fails on a sample at ε is not run on it "
                                                "at smaller ε (counted as failed there too)")
    eot_samples: int = opt(20, min=1, doc="model draws per evaluation when the outputs are random (EOT, Athalye et "
                                          "al. 2018): gradients averaged, robust only if correct on every draw; "
                                          "1 = no EOT")
    probe_samples: int = opt(16, min=0, doc="attacked samples the diagnostics run on (independent per-ε APGD, "
                                           "a longer APGD for convergence); 0 = none")
    channels_last: bool = opt(True, doc="attack a convolutional model with its weights in channels-last layout "
                                        "(faster; same outputs up to rounding, checked on a probe batch)")
    compile: Literal["auto", "on", "off"] = opt("auto", doc='torch.compile the network for the forward passes without '
                                                           'gradients: "auto" when Square has ≥ 1,000 queries on images of ≥ 32×32 '
                                                           'pixels')
    examples: int = opt(6, min=0, doc="example panels shown")
    tolerance: float = opt(0.02, min=0, max=1, doc="robust-accuracy gap beyond which a masking comparison is reported")
    precision: Literal["fp32", "bf16"] | None = opt(None, doc='"bf16": attacks under bf16 autocast, each adversarial '
                                                                'confirmed in fp32 (unset: [audit] precision)')

    def __post_init__(self) -> None:
        if not self.norms:
            raise ConfigError(f"{_WHERE} norms must be a non-empty list of {', '.join(NORMS)}")
        for n in self.norms:
            if n not in NORMS:
                raise ConfigError(f"{_WHERE} unknown norm {n!r} (known: {', '.join(NORMS)})")
        if self.attacks is not None and not self.attacks:
            raise ConfigError(f"{_WHERE} attacks must be a non-empty list of {', '.join(ATTACKS)}")
        for a in self.attacks or ():
            if a not in ATTACKS:
                raise ConfigError(f"{_WHERE} unknown attack {a!r} (known: {', '.join(ATTACKS)})")
        for n, eps in self.epsilons.items():
            self._check_epsilons(n, eps)

    @property
    def resolved(self) -> Budget:
        """The attack settings: the budget's, with the options set here replacing them."""
        return resolve(self.budget, {k: getattr(self, k) for k in SETTINGS})

    @staticmethod
    def _check_epsilons(n: str, eps: list[float]) -> None:
        if n not in NORMS:
            raise ConfigError(f"{_WHERE} epsilons: unknown norm {n!r} (known: {', '.join(NORMS)})")
        if not isinstance(eps, list) or not eps:
            raise ConfigError(f"{_WHERE} epsilons.{n} must be a non-empty list of numbers")
        for e in eps:
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
                raise ConfigError(f"{_WHERE} epsilons.{n}: {e!r} is not a finite number")
            if e < 0:
                raise ConfigError(f"{_WHERE} epsilons.{n}: {e} is negative; ε is a perturbation size ≥ 0")
            if n == "linf" and e > 1:
                raise ConfigError(f"{_WHERE} epsilons.linf: {e} is beyond the input range [0, 1] (write 8/255 as 0.0314)")
