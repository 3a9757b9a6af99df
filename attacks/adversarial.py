"""The ``adversarial`` check: how little perturbation flips the model's decisions?

For each norm (L∞, L2 in [0, 1] pixel space) and each ε, five attacks from
:mod:`attacks.adv_core` (FGSM, PGD, FMN minimum-norm, Square, random noise) try to change
the decision of every correctly classified sample. Sharing work (the issue's efficiency
rules): ε are sorted and an attack at a larger ε only runs on samples it has not fooled at a
smaller one (a fooled sample's adversarial stays valid inside every larger ball, so every
curve is non-increasing); the minimum-norm attack runs first, once, and seeds the rest
(a sample whose minimal perturbation is ≤ ε is fooled at ε; PGD starts from that
perturbation projected onto the ball, and runs only where the minimal perturbation found
is within ``pgd_window`` × ε); fooled samples leave the batch at once.

Metrics (rows qualified by ``attack``, ``norm``, ``epsilon``):

- ``robust_accuracy``: share of all evaluated samples that are correctly classified and not
  fooled by the attack at that ε (clean errors count as not robust). ``attack="worst"`` is
  the per-sample worst case over every attack (the number to gate on); with ``class`` it is
  restricted to that class. ``attack="worst", epsilon=0`` is the accuracy of a fresh forward
  pass on the clean inputs;
- ``attack_success_rate``: share of the correctly classified (attacked) samples fooled;
- ``median_min_perturbation`` (``norm``): median over attacked samples of the smallest
  adversarial perturbation found by any attack (FMN, Pintor et al. 2021, refined by the
  bounded attacks); infinite (null) when fewer than half were fooled;
- ``samples``: number of evaluated samples.

Findings ``gradient_masking.*`` follow Carlini et al. 2019 ("On Evaluating Adversarial
Robustness"), Athalye et al. 2018 ("Obfuscated Gradients") and AutoAttack's flags; see
docs/adversarial.md. An adversarial outside its ε-ball or outside [0, 1] is a bug in this
code and raises.

Published for later checks: ``adversarial.examples`` = ``{"x": (M,C,H,W) clean CPU tensor,
"x_adv": (M,C,H,W) adversarials, "y": (M,) labels, "pred_adv": (M,) predictions on x_adv,
"norm": "linf" | "l2", "epsilon": (M,) the smallest ε of the grid at which each was fooled,
"ids": sample ids}``, for the first norm that fooled anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from audit.errors import ConfigError
from audit.published import AdversarialExamples
from audit.registry import Check, register_check
from audit.results import CheckResult

from . import adv_core as core

ATTACKS = ("fgsm", "pgd", "fmn", "square", "noise")
GRADIENT_ATTACKS = ("fgsm", "pgd", "fmn")
LINF_DEFAULT = (0.5, 1, 2, 4, 8, 12, 16)  # in 1/255


def default_epsilons(norm: str, input_shape) -> list[float]:
    """L∞: 0.5/255 … 16/255. L2: the same grid scaled by √(C·H·W)·0.29 (CIFAR's common
    pair L∞ 8/255 ↔ L2 0.5 at 3×32×32), rounded to 3 significant digits."""
    linf = [v / 255 for v in LINF_DEFAULT]
    if norm == "linf":
        return linf
    dim = math.prod(input_shape)
    return [float(f"{v * math.sqrt(dim) * 0.2875:.3g}") for v in linf]


def max_epsilon(norm: str, input_shape) -> float:
    """The ε that covers the whole input range: any image is within it."""
    return 1.0 if norm == "linf" else math.sqrt(math.prod(input_shape))


def fmt_eps(e: float, norm: str) -> str:
    if norm == "linf":
        v = e * 255
        return f"{v:g}/255" if abs(v - round(v * 2) / 2) < 1e-6 else f"{v:.2f}/255"
    return f"{e:.3g}"


@register_check("adversarial")
class AdversarialCheck(Check):
    shardable = True  # work units: chunks of batch_size samples
    publishes = {"adversarial.examples": AdversarialExamples}
    description = ("robust accuracy vs ε (L∞, L2) under FGSM, PGD, FMN, Square and noise; minimal perturbations; "
                   "examples; gradient-masking sanity checks")
    metrics = {
        "robust_accuracy": "share of all samples correct and not fooled (attack × norm × epsilon; attack=worst is "
                           "the per-sample worst case, also per class)",
        "attack_success_rate": "share of correctly classified samples the attack fooled (attack × norm × epsilon)",
        "median_min_perturbation": "median smallest adversarial perturbation found, per norm (FMN, Pintor et al. 2021)",
        "samples": "number of evaluated samples",
    }
    findings = {
        "gradient_masking.probability_outputs": "the model outputs probabilities: gradients through softmax saturate",
        "gradient_masking.stochastic_outputs": "repeated forward passes of the same input give different outputs",
        "gradient_masking.no_gradients": "input gradients cannot be computed; only gradient-free attacks ran",
        "gradient_masking.zero_gradients": "input gradients are zero or non-finite for a notable share of samples",
        "gradient_masking.iterative_weaker": "PGD is weaker than single-step FGSM at the same ε",
        "gradient_masking.gradient_free_stronger": "the gradient-free attack or random noise beats the gradient attacks",
        "gradient_masking.unbounded_attack_fails": "an attack with ε covering the whole input range does not reach ~100% success",
        "gradient_masking.eps0_mismatch": "robust accuracy at ε=0 differs from the clean accuracy",
        "adversarial.unverified": "adversarials that did not reproduce on a second forward pass were dropped",
    }

    @dataclass
    class Options:
        norms: list = field(default_factory=lambda: ["linf", "l2"])  #: threat models: linf, l2
        epsilons: dict = field(default_factory=dict)  #: {linf = [...], l2 = [...]}; missing norms get defaults
        attacks: list = field(default_factory=lambda: list(ATTACKS))  #: subset of fgsm, pgd, fmn, square, noise
        targeted: str = ""  #: "" untargeted; "least_likely"; or a class name / index
        max_samples: int = 48  #: stratified subset attacked (0 = all)
        pgd_steps: int = 10
        pgd_restarts: int = 1
        pgd_window: float = 1.5  #: PGD at ε only where the min perturbation found is ≤ window·ε (0: everywhere)
        fmn_steps: int = 40
        square_queries: int = 50
        square_window: float = 1.25  #: as pgd_window, for Square (samples the gradient attacks failed on always run)
        square_scope: str = "control"  #: "control": only where the gradient attacks failed; "all": its own curve
        noise_draws: int = 1
        examples: int = 6  #: example panels shown
        tolerance: float = 0.02  #: robust-accuracy gap beyond which a masking comparison is reported
        precision: str = "fp32"  #: "fp32", or "bf16": attacks under bf16 autocast, each adversarial confirmed in fp32

        def __post_init__(self) -> None:
            if not isinstance(self.norms, list) or not self.norms:
                raise ConfigError("[checks.adversarial] norms must be a non-empty list of linf, l2")
            for n in self.norms:
                if n not in core.NORMS:
                    raise ConfigError(f"[checks.adversarial] unknown norm {n!r} (known: {', '.join(core.NORMS)})")
            if not isinstance(self.attacks, list) or not self.attacks:
                raise ConfigError(f"[checks.adversarial] attacks must be a non-empty list of {', '.join(ATTACKS)}")
            for a in self.attacks:
                if a not in ATTACKS:
                    raise ConfigError(f"[checks.adversarial] unknown attack {a!r} (known: {', '.join(ATTACKS)})")
            for n, eps in self.epsilons.items():
                if n not in core.NORMS:
                    raise ConfigError(f"[checks.adversarial] epsilons: unknown norm {n!r} (known: {', '.join(core.NORMS)})")
                if not isinstance(eps, list) or not eps:
                    raise ConfigError(f"[checks.adversarial] epsilons.{n} must be a non-empty list of numbers")
                for e in eps:
                    if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
                        raise ConfigError(f"[checks.adversarial] epsilons.{n}: {e!r} is not a finite number")
                    if e < 0:
                        raise ConfigError(f"[checks.adversarial] epsilons.{n}: {e} is negative; ε is a perturbation size ≥ 0")
                    if n == "linf" and e > 1:
                        raise ConfigError(f"[checks.adversarial] epsilons.linf: {e} is beyond the input range [0, 1] "
                                          "(write 8/255 as 0.0314)")
            if self.precision not in ("fp32", "bf16"):
                raise ConfigError(f"[checks.adversarial] precision must be 'fp32' or 'bf16', got {self.precision!r}")
            if self.square_scope not in ("control", "all"):
                raise ConfigError(f"[checks.adversarial] square_scope must be 'control' or 'all', got {self.square_scope!r}")
            for k in ("pgd_steps", "pgd_restarts", "fmn_steps", "square_queries", "noise_draws"):
                if getattr(self, k) < 1:
                    raise ConfigError(f"[checks.adversarial] {k} must be ≥ 1, got {getattr(self, k)}")
            for k in ("max_samples", "examples", "pgd_window", "square_window", "tolerance"):
                if getattr(self, k) < 0:
                    raise ConfigError(f"[checks.adversarial] {k} must be ≥ 0, got {getattr(self, k)}")

    # ------------------------------------------------------------------ run
    def run(self, ctx) -> CheckResult:
        from .adv_engine import Engine

        res = CheckResult(self.name)
        eng = Engine(self.options, ctx, res)
        eng.run()
        return res
