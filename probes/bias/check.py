"""The ``bias`` check: does a class lean on a concept it should not?

Two independent kinds of evidence, and a finding only when both agree:

1. **Concept sensitivity (TCAV)**, Kim et al. 2018 (:mod:`probes.bias.tcav`, our own
   implementation of the paper's procedure): per class x concept x layer, the share of the
   class's images whose logit rises when the layer's activation moves along the concept's
   activation vector (CAV). One score per run, each run against a fresh random
   counter-example set drawn from the random pool; each CAV held out on a third of its
   examples; random-vs-random CAVs fitted identically give the null distribution; two Welch
   tests: the CAVs' held-out accuracy above the null's (``cav_p_value``, a precondition at
   ``alpha``: a concept the layer does not represent is never significant) and the scores
   different from the null's (``tcav_p_value``, two-sided). Layers: the model's last ``n_layers`` convolutions
   (:mod:`probes.bias.layers`), or ``layers``.
2. **Counterfactual insertion** (:mod:`probes.bias.insertion`): each concept's examples are
   pasted (by a foreground mask: what differs from a plane fitted to the example's border)
   onto correctly classified images of the data, and the share that flips to each class is
   measured against a control: random counter-examples pasted the same way.

Concepts come from the ``concepts`` option (:mod:`probes.bias.concepts`): a directory with one
folder of example images per concept; folders named ``random*`` are pooled as the random
counter-examples (without them, ``random_pool`` images are drawn from the data).

Metrics (qualifiers ``class``, ``concept``, ``layer``): ``tcav_score``, ``tcav_score_random``,
``tcav_p_value``, ``cav_accuracy``, ``cav_accuracy_random``, ``cav_p_value`` (no ``class``),
``flip_rate``, ``flip_rate_control``, ``flip_p_value`` and, when ``class_viz`` ran first,
``viz_concept_score`` (see ``metrics`` below and docs/bias.md). Finding
``bias.concept_dependence`` (class, concept): ``cav_p_value`` below ``alpha`` and TCAV p below ``alpha`` (Bonferroni-corrected
over classes x concepts x layers when ``bonferroni``), mean TCAV score at least
``min_score`` and above the random CAVs' (the direction), and flip rate above the control by at least ``min_flip`` with McNemar p below
``alpha`` (Bonferroni-corrected over classes x concepts).

Classes: ``classes`` when named; all when the model has at most ``max_classes``; beyond, the
classes the data brings up (labels, then the model's top-1 predictions; at most
``max_classes``: :mod:`audit.targets`), so a model with thousands of outputs costs what its
tested classes cost; the Bonferroni corrections count the tested classes.

Work units: ``tcav:i`` for each probed layer (its CAVs, every class's TCAV scores and the
class_viz tie), ``control:0`` and ``paste:j`` for each concept (the predictions on the pasted
images). Every random choice is drawn up front (:mod:`probes.bias.plan`). Reads
``class_viz.images`` (:class:`audit.published.ClassVizImages`) when present.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from audit.check import Check, Unit
from audit.options import opt
from audit.records import record
from audit.registry import register_check
from audit.results import CheckResult
from audit.batching import few_threads_for_small_work

from .figures import add_figures
from .plan import BiasPlan, make_plan
from .summary import dependence_findings, fmt_p, gather
from .tcav import LayerTcav, layer_tcav

__all__ = ["BiasCheck", "PastePreds"]


@record
class PastePreds:
    """The model's predictions (N_base,) int64 on the base images with ``concept`` pasted in
    (``""``: the control, random counter-examples)."""

    concept: str
    pred: torch.Tensor


@register_check("bias")
class BiasCheck(Check):
    reads = ("class_viz.images",)
    description = "concept dependence: TCAV with significance, counterfactual concept insertion, tie to class_viz"
    needs_data = True
    metrics = {
        "tcav_score": "mean TCAV score (Kim et al. 2018) over random counter-example sets, per class, concept, layer",
        "tcav_score_random": "mean TCAV score of the random-vs-random CAVs (the null), per class, concept, layer",
        "tcav_p_value": "two-sided Welch test of the TCAV scores against the random-vs-random CAVs', per class, "
                        "concept, layer; significant only together with cav_p_value < alpha (alone it is not "
                        "calibrated)",
        "cav_accuracy": "mean held-out balanced accuracy of the concept's CAVs (concept vs random examples), "
                        "per concept, layer",
        "cav_accuracy_random": "the same for the random-vs-random CAVs (chance: about 0.5)",
        "cav_p_value": "one-sided Welch test: cav_accuracy above cav_accuracy_random over the runs, per concept, layer",
        "flip_rate": "share of other classes' images assigned to `class` after pasting the concept onto them",
        "flip_rate_control": "the same share after pasting random counter-examples (the control)",
        "flip_p_value": "exact McNemar test of concept vs control flips on the same images (two-sided)",
        "viz_concept_score": "cosine of the class visualization's activation (minus the random mean) with the concept's CAV",
    }
    findings = {
        "bias.concept_dependence": "a class depends on a concept (without hookable layers: on the flip test alone, "
                                   "so worded): significant and strong TCAV score, and pasting the "
                                   "concept flips other classes' images to it",
        "bias.no_concepts": "info: no concept examples were given, so nothing was tested",
        "bias.cav_near_chance": "info: a concept's CAVs at a layer separate held-out examples no better than random "
                                "CAVs (cav_p_value >= alpha): TCAV cannot test it there",
        "bias.no_layer": "info: TCAV not tested: the model's layers cannot be hooked (TorchScript/export); the "
                         "concept-dependence question rests on the counterfactual pastes alone",
    }

    @dataclass
    class Options:
        concepts: str = opt("", doc="folder with one subfolder of example images per concept; random* = "
                                    "counter-examples")
        layers: list[str] = opt(list, doc="layer names (named_modules); empty = the last n_layers convolutions")
        n_layers: int = opt(2, min=1, doc="convolutions probed by default")
        space: Literal["pooled", "flatten"] = opt("pooled", doc="CAV space: spatial mean, or Kim et al.'s C*H*W")
        classes: list[str | int] = opt(list, doc="classes tested (names or indices); empty = all (up to max_classes)")
        max_classes: int = opt(100, min=1, doc="all classes when `classes` is empty and the model has at most this "
                                               "many; beyond, at most this many of the data's labels and top-1 "
                                               "predictions (audit/targets.py)")
        max_per_class: int = opt(50, min=1, doc="images per class for TCAV")
        runs: int = opt(20, min=1, doc="TCAV runs, each against a fresh random set drawn from the random pool")
        random_pool: int = opt(150, min=2, doc="images drawn from the data as random counter-examples when there "
                                               "are no random* folders")
        cav_alpha: float = opt(0.01, min=0, doc="L2 weight of the CAV's logistic regression")
        alpha: float = opt(0.05, min=0, max=1, doc="significance level of the tests")
        bonferroni: bool = opt(True, doc="divide alpha by the number of tests")
        min_score: float = opt(0.7, min=0, max=1, doc="smallest mean TCAV score that counts as strong")
        min_flip: float = opt(0.1, min=0, max=1, doc="smallest flip rate above the control that counts as strong")
        max_base: int = opt(200, min=1, doc="data images the concepts are pasted onto")
        severity: Literal["info", "warn", "fail"] = opt("warn", doc="severity of bias.concept_dependence")
        examples: int = opt(8, min=0, doc="counterfactual pairs shown per concept")

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._plan: BiasPlan | None = None

    @staticmethod
    def _small_work(ctx):
        """Small images run on one CPU intra-op thread (:func:`audit.batching.few_threads_for_small_work`),
        in every step alike: the thread count changes the order of float reductions."""
        _, h, w = ctx.model.spec.input_shape
        return few_threads_for_small_work(ctx.model.device, 64 * h * w, limit=1 << 19)

    # ------------------------------------------------------------------ units
    def units(self, ctx) -> list[Unit]:
        with self._small_work(ctx):
            self._plan = plan = make_plan(ctx, self.options)
        if plan.skip:
            return []
        units = [Unit("tcav", i, ln) for i, ln in enumerate(plan.layers)]
        return units + [Unit("control", 0, "")] + [Unit("paste", j, c) for j, c in enumerate(plan.concepts)]

    def compute(self, unit: Unit, ctx, generator) -> LayerTcav | PastePreds:
        plan, o, model, data = self._plan, self.options, ctx.model, ctx.data
        with self._small_work(ctx):
            if unit.tag == "tcav":
                return layer_tcav(model, unit.payload, concepts=plan.concepts, pool=plan.pool, draws=plan.draws,
                                  splits=plan.splits,
                                  class_x={k: data.x[idx] for k, idx in plan.class_idx.items()}, space=o.space,
                                  cav_alpha=o.cav_alpha, viz=ctx.published.get("class_viz.images"), bar=ctx.bar)
            pasted = plan.pasted(data.x[plan.base_idx], unit.payload)
            return PastePreds(unit.payload, model.logits(pasted, batch_size=ctx.config.batch_size).argmax(1))

    # ------------------------------------------------------------------ summarize
    def summarize(self, records: list, ctx) -> CheckResult:
        plan, res = self._plan, CheckResult(self.name)
        if plan.skip:
            res.finding("info", "bias.no_concepts", plan.skip)
            res.summary = "no concepts given"
            return res
        with self._small_work(ctx):
            return self._summarize(res, plan, records, ctx)

    def _summarize(self, res: CheckResult, plan: BiasPlan, records: list, ctx) -> CheckResult:
        o, names, data = self.options, ctx.model.class_names, ctx.data
        if not plan.layers:
            res.finding("info", "bias.no_layer", "TCAV not tested: the model's layers cannot be hooked (a TorchScript or "
                        "exported graph, or no convolution found; name them with [checks.bias] layers). Whether a "
                        "class's internal representation uses a concept is unknown; only the counterfactual pastes "
                        "were measured, and a concept-dependence finding rests on them alone.")
        layer_recs = [r for r in records if isinstance(r, LayerTcav)]
        pastes = {r.concept: r.pred for r in records if isinstance(r, PastePreds)}
        concepts = list(plan.concepts)
        base, base_y = data.x[plan.base_idx], data.y[plan.base_idx]
        ev = gather(res, names, plan.classes, concepts, plan.layers, layer_recs, pastes.pop(""), pastes, base_y, o)
        dependence_findings(res, ev, names, plan.classes, concepts, plan.layers, o)
        viz = ctx.published.get("class_viz.images")
        add_figures(res, ev, names=names, classes=plan.classes, concepts=plan.concepts, layers=plan.layers, viz=viz,
                    base=base, base_y=base_y, pasted={c: plan.pasted(base, c) for c in concepts},
                    min_score=o.min_score, examples=o.examples)
        self._data(res, plan, ev, names, len(base))
        if ev.leans:
            parts = [f"{names[k]} <- {c} ({f'TCAV {t.mean:.2f}, p {fmt_p(t.p)}, ' if t else 'TCAV not tested, '}flip "
                     f"{f['flip']:.0%} vs {f['control']:.0%})" for k, lst in ev.leans.items() for c, ln, t, f in lst]
            rest = len(plan.classes) - len(ev.leans)
            res.summary = "; ".join(parts) + (f"; {rest} other classes show no dependence" if plan.layers else
                                              f"; {rest} other classes: no flip effect, TCAV not tested")
        elif plan.layers:
            res.summary = (f"no class depends on {', '.join(concepts)} ({len(plan.classes)} classes, "
                           f"{len(plan.layers)} layer(s), {o.runs} TCAV runs)")
        else:
            res.summary = (f"TCAV not tested (no hookable layer); pasting {', '.join(concepts)} turned no class's "
                           f"images significantly ({len(plan.classes)} classes)")
        return res

    def _data(self, res: CheckResult, plan: BiasPlan, ev, names, n_base: int) -> None:
        o = self.options
        res.data["tcav"] = [{"class": names[k], "concept": c, "layer": ln, "scores": [round(v, 4) for v in t.scores],
                             "null": [round(v, 4) for v in t.null], "cav_accuracy": [round(v, 4) for v in t.acc],
                             "cav_accuracy_random": [round(v, 4) for v in t.null_acc], "p_cav": t.p_cav,
                             "p": t.p, "n": t.n}
                            for (k, c, ln), t in ev.tcav.items()]
        res.data["counterfactual"] = [{"class": names[k], "concept": c,
                                       **{a: (round(b, 4) if isinstance(b, float) else b) for a, b in f.items()}}
                                      for (k, c), f in ev.flips.items()]
        res.data["settings"] = {"layers": plan.layers, "space": o.space, "alpha_effective": ev.alpha_eff,
                                "random_sets": {n: len(x) for n, x in plan.randoms.items()}, "runs": o.runs,
                                "concepts": {n: len(x) for n, x in plan.concepts.items()}, "base_images": n_base}
        if plan.random_note:
            res.data["settings"]["note"] = plan.random_note
        if plan.classes_note:
            res.data["settings"]["classes_note"] = plan.classes_note
