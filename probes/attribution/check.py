"""The ``attribution`` check: which pixels drive each decision, and can those maps be trusted?

For a seeded selection of images (per class some correctly classified ones, the most
confident mistakes, and - when the ``adversarial`` check ran before and published
``adversarial.examples`` - adversarial examples next to their originals) every registered
method (:mod:`probes.attribution.methods`, all through captum) explains the model's
predicted class. Two tests say whether a method's maps can be believed
(:mod:`probes.attribution.sanity`):

* model-parameter randomization (Adebayo et al. 2018): ``randomization_spearman`` per method
  and layer, summarized by ``randomization_similarity``;
* deletion / insertion (Petsiuk et al. 2018): ``deletion_auc`` / ``insertion_auc`` per
  method and for a random pixel order (``method=random``).

Work units: each method's maps (``methods:k``), then each kept step of the randomization
cascade (``randomization:j``). Reads ``adversarial.examples``
(:class:`audit.published.AdversarialExamples`; absent is fine). Publishes nothing.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from audit.check import Check, Unit
from audit.errors import ConfigError
from audit.fastpath import FastSettings, fast_metadata
from audit.imaging import short
from audit.options import opt
from audit.registry import register_check
from audit.results import CheckResult

from .engine import CascadeMaps, MethodMaps, cascade_maps, method_maps
from .figures import add_figures
from .methods import METHOD_NAMES, METHODS
from .plan import Plan, make_plan
from .summary import collect_maps, faithfulness, guarded, ig_delta, randomization

__all__ = ["AttributionCheck"]


@register_check("attribution")
class AttributionCheck(Check):
    reads = ("adversarial.examples",)
    progress_unit = "unit"
    description = (f"attribution maps (captum: {', '.join(m.title for m in METHODS)}) "
                   "with randomization and deletion/insertion sanity checks")
    metrics = {
        "randomization_spearman": "mean over images of |Spearman rank correlation| of |map| between the trained model "
                                  "and the model randomized from the top down to `layer` (Adebayo et al. 2018); per "
                                  "`method`, `layer`",
        "randomization_similarity": "mean over images of each image's similarity over the cascade (per layer the mean of "
                                    "|Spearman| of |map|, |Spearman| of the signed map and SSIM), with its 95% bootstrap "
                                    "interval over images; the verdict reads the interval; per `method`",
        "passes_randomization": "1 when the randomization_similarity interval lies at or below the threshold (pass), "
                                "0 above (fail), null when it straddles it (inconclusive); per `method`",
        "randomization_spearman_signed": "mean over images of |Spearman rank correlation| of the signed maps, per "
                                         "method and layer (Adebayo et al. 2018)",
        "randomization_ssim": "mean SSIM of the normalized map magnitudes, per method and layer (Adebayo et al. 2018)",
        "deletion_auc": "area under the target-probability curve as the most attributed pixels are deleted "
                        "(Petsiuk et al. 2018; lower is better); per `method`, `method=random` for a random order",
        "insertion_auc": "area under the target-probability curve as the most attributed pixels are inserted into "
                         "a blurred image (higher is better); per `method`, `method=random`",
        "beats_random": "1 when the method beats the random orders on deletion or insertion (paired Wilcoxon over "
                        "images, gain beyond the random orders' spread), else 0; per `method`",
        "faithfulness_p_value": "one-sided Wilcoxon signed-rank p of the method's AUC gain over the random orders, "
                                "paired over images; per `method`, `curve`",
        "ig_convergence_delta": "mean |completeness error| of Integrated Gradients, relative to |f(x) - f(baseline)| "
                                "of the target logit (Sundararajan et al. 2017)",
        "images": "number of images explained (`group`: correct, mistake, adversarial, all)",
    }
    findings = {
        "attribution.randomization_inconclusive": "info: the randomization_similarity interval straddles the "
                                                  "threshold; more sanity images are needed for a verdict",
        "attribution.fails_randomization": "a method's maps barely change when the model is randomized: they show the "
                                           "image, not the model (info for the reference method guided_backprop)",
        "attribution.not_better_than_random": "a method's pixel order removes/restores the prediction no better than a "
                                              "random order on both deletion and insertion",
        "attribution.model_copied": "hook-based methods ran on a copy with in-place activations made non-inplace "
                                    "and reused activation modules un-shared",
        "attribution.hooks_unsupported": "TorchScript/torch.export model: methods that need module hooks were skipped",
        "attribution.no_conv_layer": "the model has no nn.Conv2d: Grad-CAM was skipped",
        "attribution.gradients_unusable": "the model's input gradients fail, are zero or not finite: only occlusion ran",
        "attribution.method_failed": "a method raised an error; the others still ran",
        "attribution.sanity_failed": "the randomization or the deletion/insertion test raised an error and was skipped",
        "attribution.ig_not_converged": "Integrated Gradients' completeness error is large: raise ig_steps",
        "attribution.oom_retry": "an out-of-memory error halved the internal batch size",
        "attribution.no_images": "no image could be selected",
    }

    @dataclass
    class Options:
        methods: list[str] = opt(lambda: list(METHOD_NAMES),
                                 doc=f"which methods run (report order is the registry's): {', '.join(METHOD_NAMES)}")
        per_class: int = opt(4, min=0, doc="correctly classified images per class")
        mistakes: int = opt(8, min=0, doc="most confident mistakes")
        adversarial: int = opt(2, min=0, doc="adversarial examples shown next to their originals (when published)")
        sanity_images: int = opt(32, min=0, doc="images of the randomization test (the first correct ones; "
                                                "Adebayo et al. 2018 aggregate over many)")
        randomization_layers: int = opt(8, min=0, doc="cascade steps with maps computed (evenly spread; 0: all; "
                                                      "every layer is randomized)")
        faithfulness_images: int = opt(16, min=0, doc="images of the deletion/insertion test")
        random_orders: int = opt(8, min=1, doc="random pixel orders the methods are compared with (paired over "
                                               "images)")
        deletion_baseline: Literal["blur", "mean", "black"] = opt("blur", doc="what a deleted pixel becomes: the "
                                                                           "blurred image (in distribution), the "
                                                                           "mean colour, or black")
        randomization_threshold: float = opt(0.5, min=0, max=1, doc="randomization_similarity above this fails "
                                                                    "the method")
        curve_steps: int = opt(32, min=2, doc="points of the deletion/insertion curves (plus the start)")
        ig_steps: int = opt(16, min=2, doc="Integrated Gradients steps (captum's Gauss-Legendre rule)")
        ig_delta_warn: float = opt(0.1, min=0, doc="relative convergence delta above this raises ig_not_converged")
        smoothgrad_samples: int = opt(50, min=1, doc="SmoothGrad noisy copies (Smilkov et al. 2017: ~50)")
        smoothgrad_noise: float = opt(0.15, min=0, doc="SmoothGrad noise std as a share of the input range")
        occlusion_window: int = opt(0, min=0, doc="occlusion patch side in pixels (0: a quarter of the image side); "
                                                  "stride is half of it")
        memory_budget_mb: float = opt(512.0, min=0, doc="MiB for one IG/SmoothGrad/occlusion pass (on CUDA also "
                                                        "<= half the free memory)")
        internal_batch_size: int = opt(0, min=0, doc="images x steps per pass; 0 chooses it from memory_budget_mb")
        rows_per_image: int = opt(8, min=1, doc="image rows per report picture")

        def __post_init__(self) -> None:
            bad = [m for m in self.methods if m not in METHODS]
            if bad:
                raise ConfigError(f"[checks.attribution] methods: unknown method(s) {bad} "
                                  f"(known: {', '.join(METHOD_NAMES)})")

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._plan: Plan | None = None

    # ------------------------------------------------------------------ units
    def units(self, ctx) -> list[Unit]:
        """``methods:k`` for each usable method, then ``randomization:j`` for each kept
        cascade step (none without a method or a sanity image)."""
        self._plan = plan = make_plan(ctx, self.options)
        if plan is None:
            return []
        units = [Unit("methods", k, m.name) for k, m in enumerate(plan.methods)]
        units += [Unit("randomization", j, step) for j, step in enumerate(plan.cascade_steps)]
        return units

    def compute(self, unit: Unit, ctx, generator) -> MethodMaps | CascadeMaps:
        with warnings.catch_warnings():  # captum warns on every call that it set requires_grad / hooks
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            if unit.tag == "methods":
                return method_maps(self._plan, METHODS.get(unit.payload), ctx.model, ctx.bar,
                                   FastSettings.of(ctx.config))
            return cascade_maps(self._plan, unit.payload, ctx.model)

    # ------------------------------------------------------------------ summarize
    def summarize(self, records: list, ctx) -> CheckResult:
        o, plan, res = self.options, self._plan, CheckResult(self.name)
        if plan is None:
            res.finding("info", "attribution.no_images", "No image could be selected (no data).")
            res.summary = "no images"
            return res
        model, dev = ctx.model, ctx.model.device
        res.data["fast_path"] = fast_metadata(model, FastSettings.of(ctx.config))  # the gradient methods'
        x, target = plan.x, plan.target
        for g in ("correct", "mistake", "adversarial"):
            res.metric("images", sum(1 for v in plan.groups if v.startswith(g)), group=g)
        res.metric("images", len(x), group="all")
        for n in plan.notes:
            res.finding(n.severity, n.code, n.message, **n.extra)
        if plan.layer_name:
            res.data["grad_cam_layer"] = plan.layer_name
            if plan.settings.tokens is not None:
                res.data["grad_cam_tokens"] = plan.settings.tokens.describe()
        n_m = len(plan.methods)
        got = collect_maps(res, plan.methods, records[:n_m])
        methods, maps = got.methods, got.maps
        if got.ig_deltas is not None:
            ig_delta(res, model, x, target, got.ig_deltas, steps=o.ig_steps, warn=o.ig_delta_warn)
        timings = {"maps": round(sum(got.seconds.values()), 3), **{f"maps/{k}": v for k, v in got.seconds.items()}}

        steps = records[n_m:]
        t0 = time.perf_counter()
        n_s = plan.n_sanity
        rand = guarded(res, "randomization", randomization, res, methods, {k: v[:n_s] for k, v in maps.items()},
                       steps, o.randomization_threshold, seed=ctx.seed)
        timings["randomization"] = round(sum(s.seconds for s in steps) + time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        fi = plan.faith_idx
        faith = guarded(res, "deletion/insertion", faithfulness, res, methods, {k: v[fi] for k, v in maps.items()},
                        x[fi].to(dev), target[fi].to(dev), model, generator=ctx.generator, steps=o.curve_steps,
                        batch_size=ctx.config.batch_size, random_orders=o.random_orders, baseline=o.deletion_baseline)
        timings["deletion_insertion"] = round(time.perf_counter() - t0, 3)

        t0 = time.perf_counter()
        self._report(res, plan, methods, maps, rand, faith, model.class_names)
        timings["report"] = round(time.perf_counter() - t0, 3)
        res.data["timings"] = timings
        verdicts = rand.get("verdict", {})
        passed = [m.name for m in methods if verdicts.get(m.name) == "pass"]
        unsure = [m.name for m in methods if verdicts.get(m.name) == "inconclusive"]
        res.summary = (f"{len(x)} images x {len(methods)} methods in {sum(got.seconds.values()):.1f} s; "
                       f"randomization passed: {', '.join(passed) or 'none'}"
                       + (f"; inconclusive: {', '.join(unsure)}" if unsure else ""))
        return res

    def _report(self, res: CheckResult, plan: Plan, methods, maps, rand: dict, faith: dict, names) -> None:
        y, target, conf = plan.y, plan.target, plan.conf
        captions = [f"{g}: {short(names[int(y[i])]) if int(y[i]) >= 0 else '?'} -> {short(names[int(target[i])])} "
                    f"({float(conf[i]):.2f})" for i, g in enumerate(plan.groups)]
        note = ""
        if plan.layer_name and any(m.name == "grad_cam" for m in methods):
            tokens = plan.settings.tokens
            note = f"; Grad-CAM on layer {plan.layer_name}" + (f" ({tokens.describe()})" if tokens is not None else "")
        add_figures(res, x=plan.x, captions=captions, methods=methods, maps=maps, rand=rand, faith=faith,
                    rows_per_image=self.options.rows_per_image, threshold=self.options.randomization_threshold,
                    note=note)
        res.data["images"] = [{"id": plan.ids[i], "group": plan.groups[i], "y": int(y[i]), "pred": int(target[i]),
                               "confidence": round(float(conf[i]), 4)} for i in range(len(plan.x))]
        res.data["internal_batch_size"] = plan.settings.internal_batch_size
        if rand:
            res.data["randomization"] = rand["per_image"]
        if faith:
            res.data["faithfulness"] = {**faith["per_image"], "tests": faith["tests"], "settings": faith["settings"]}
