"""The ``adversarial`` check: how little perturbation flips the model's decisions?

For each norm (L∞, L2 in [0, 1] pixel space) and each ε, the registered attacks
(:data:`.attacks.ATTACKS`: FGSM, PGD, FMN minimum-norm, random noise, APGD-CE/-DLR/-T, Square)
that the ``budget`` (:mod:`.budget`: fast, standard = AutoAttack-grade, thorough) selects try to
change the decision of every correctly classified sample, sharing work across ε (:mod:`.engine`).

Lifecycle (:class:`audit.check.Check`): :meth:`AdversarialCheck.units` decides the plan once
(:func:`.plan.prepare`: samples, ε grids, the attacks that can run given
``ctx.gradient_problem``, the ε = 0 sanity test) and cuts the evaluated samples into units of
``batch_size`` (tag ``"samples"``); :meth:`~AdversarialCheck.compute` runs every attack on one
unit (:class:`.engine.Engine`) and returns its :class:`.engine.UnitRecord`;
:meth:`~AdversarialCheck.summarize` merges them into metrics, findings (:mod:`.summary`),
images (:mod:`.figures`), the per-sample table and ``adversarial.examples``.

Metrics (rows qualified by ``attack``, ``norm``, ``epsilon``): ``robust_accuracy`` (share of
all evaluated samples correctly classified and not fooled; ``attack="worst"`` is the
per-sample worst case over every attack, also per ``class``; at ``epsilon=0`` a fresh forward
pass), ``attack_success_rate`` (share of the attacked samples fooled),
``median_min_perturbation`` (``norm``; FMN, Pintor et al. 2021, refined by the bounded
attacks) and ``samples``. Findings ``gradient_masking.*`` follow Carlini et al. 2019 ("On
Evaluating Adversarial Robustness"), Athalye et al. 2018 ("Obfuscated Gradients") and
AutoAttack's flags; see docs/adversarial.md.

``res.samples``: per evaluated sample, ``robust[norm=<norm>,epsilon=<ε:.4g>]`` (True: correct
and not fooled by any attack at ε). Published: ``adversarial.examples``
(:class:`audit.published.AdversarialExamples`) for the first norm that fooled anything.
"""
from __future__ import annotations

import time

import torch

from audit.check import Check, Unit
from audit.distributed import chunks
from audit.fastpath import FastSettings, fast_metadata
from audit.published import AdversarialExamples
from audit.registry import register_check
from audit.results import CheckResult

from .attacks import ATTACKS
from .engine import Engine, UnitRecord
from .figures import add_images
from .options import AdversarialOptions
from .plan import Plan, Sanity, prepare
from .threat import epsilon_grid
from .summary import (diagnostic_findings, masking_findings, merge, norm_metrics, published_examples, sample_table, sanity_findings,
                      summary_part, unit_findings)

__all__ = ["AdversarialCheck"]


@register_check("adversarial")
class AdversarialCheck(Check):
    publishes = {"adversarial.examples": AdversarialExamples}
    progress_unit = "chunk"
    description = (f"robust accuracy vs ε (L∞, L2) under {', '.join(c.__name__ for c in ATTACKS.values())}; "
                   "minimal perturbations; examples; gradient-masking sanity checks")
    metrics = {
        "robust_accuracy": "share of all samples correct and not fooled (attack × norm × epsilon; attack=worst is "
                           "the per-sample worst case, also per class)",
        "attack_success_rate": "share of correctly classified samples the attack fooled (attack × norm × epsilon)",
        "median_min_perturbation": "median smallest adversarial perturbation found, per norm (FMN, Pintor et al. 2021)",
        "samples": "number of evaluated samples",
    }
    findings = {
        "gradient_masking.probability_outputs": "the model outputs probabilities (info); warn when its own float32 softmax "
                                                "underflows to 0 for some attacked samples, so no output carries their margin",
        "gradient_masking.stochastic_outputs": "repeated forward passes of the same input give different outputs",
        "gradient_masking.no_gradients": "input gradients cannot be used; only gradient-free attacks ran",
        "gradient_masking.zero_gradients": "input gradients are zero or non-finite for a notable share of samples",
        "gradient_masking.iterative_weaker": "the iterative gradient attacks (PGD, APGD) leave more samples robust than "
                                            "single-step FGSM on the same samples at the same ε",
        "gradient_masking.gradient_free_stronger": "the gradient-free attack or random noise beats the gradient attacks",
        "gradient_masking.unbounded_attack_fails": "an attack with ε covering the whole input range does not reach ~100% success",
        "gradient_masking.eps0_mismatch": "robust accuracy at ε=0 differs from the clean accuracy",
        "gradient_masking.success_not_monotone": "an attack run independently at each ε succeeds less often at a larger ε "
                                                 "than at a smaller one (on the probe samples)",
        "adversarial.not_converged": "a longer attack fools probe samples the whole ensemble left robust",
        "adversarial.unverified": "adversarials that did not reproduce on a second forward pass were dropped",
    }
    Options = AdversarialOptions

    def __init__(self, options: AdversarialOptions | None = None) -> None:
        super().__init__(options)
        #: set by units(): what every unit attacks, the sanity test, and when units() started
        self._plan: Plan | None = None
        self._sanity: Sanity | None = None
        self._started = 0.0
        self._setup_s = 0.0

    @classmethod
    def preflight(cls, options: AdversarialOptions, input_shape) -> None:
        """Every given ε within the input range of ``input_shape`` (ConfigError otherwise)."""
        if input_shape:
            for norm in options.norms:
                epsilon_grid(norm, options.epsilons.get(norm), tuple(input_shape))

    def units(self, ctx) -> list[Unit]:
        """The plan (:func:`.plan.prepare`), then one unit per ``batch_size`` evaluated samples."""
        self._started = time.perf_counter()
        self._plan, self._sanity = prepare(self.options, ctx)
        self._setup_s = round(time.perf_counter() - self._started, 3)
        parts = chunks(self._plan.n, ctx.config.batch_size) or [torch.arange(0)]
        return [Unit("samples", k, rows) for k, rows in enumerate(parts)]

    def compute(self, unit: Unit, ctx, generator: torch.Generator) -> UnitRecord:
        """Every attack on the unit's samples (``unit.payload``: their indices in the plan)."""
        engine = Engine(self._plan.take(unit.payload), self.options, ctx.model, generator,
                        batch_size=ctx.config.batch_size, bar=ctx.bar, fast=self._fast(ctx))
        return engine.run()

    def _fast(self, ctx) -> FastSettings:
        """The fast path's settings: ``[audit]``'s, with this check's ``precision`` and
        ``channels_last`` options when set."""
        o, cfg = self.options, ctx.config
        return FastSettings(precision=o.precision or cfg.precision, compile=cfg.compile, channels_last=o.channels_last)

    def summarize(self, records: list[UnitRecord], ctx) -> CheckResult:
        plan, sanity, o = self._plan, self._sanity, self.options
        t_summary = time.perf_counter()
        res = CheckResult(self.name)
        fast = self._fast(ctx)
        res.data["precision"] = fast.precision
        res.data["fast_path"] = fast_metadata(ctx.model, fast)
        res.data["budget"] = {"name": o.budget, **o.resolved.as_dict()}
        res.metric("samples", plan.n)
        sanity_findings(res, sanity, plan)
        merged = merge(records)
        n_probe = 0 if plan.probe is None else int((plan.probe & plan.attacked).sum())
        unit_findings(res, plan, merged)
        parts = []
        examples = published_examples(plan, merged.runs)
        for nr in merged.runs:
            cur, med = norm_metrics(res, plan, sanity, nr, ctx.model.class_names)
            masking_findings(res, nr, cur, max(o.tolerance, 1.5 / max(plan.n, 1)))
            diagnostic_findings(res, nr, n_probe, o.tolerance)
            parts.append(summary_part(nr, cur, med))
            add_images(res, plan, nr, cur, sanity.acc, o.examples, ctx.model.class_names)
            res.data[nr.norm] = {"epsilons": nr.eps, "attacks": list(nr.first)}
        if examples is not None:
            ctx.publish("adversarial.examples", examples)
        res.samples = sample_table(plan, merged.runs)
        res.data["queries"] = merged.queries
        res.data["layout"] = records[0].layout if records else ""
        res.data["compiled"] = records[0].compiled if records else ""
        res.summary = ("; ".join(parts) + f"; clean accuracy {sanity.acc:.1%} on the {plan.n} attacked samples"
                       f" (budget {o.budget})")
        now = time.perf_counter()
        res.data["timings"] = {"setup": self._setup_s, **merged.timings,
                               "attacks_total": round(t_summary - self._started, 3),
                               "summary": round(now - t_summary, 3), "total": round(now - self._started, 3)}
        return res
