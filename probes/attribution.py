"""The ``attribution`` check: which pixels drive each decision, and can those maps be trusted?

For a seeded selection of images (per class some correctly classified ones, the most
confident mistakes, and - when the ``adversarial`` check ran before and published
``adversarial.examples`` - adversarial examples next to their originals) every method of
:data:`probes.attr_methods.METHODS` (captum: Saliency, Integrated Gradients, SmoothGrad,
Grad-CAM, Occlusion, Guided Backprop) explains the model's predicted class. Two tests say
whether a method's maps can be believed (:mod:`probes.attr_sanity`):

* model-parameter randomization (Adebayo et al. 2018): ``randomization_spearman`` per method
  and layer, summarized by ``randomization_similarity``;
* deletion / insertion (Petsiuk et al. 2018): ``deletion_auc`` / ``insertion_auc`` per
  method and for a random pixel order (``method=random``).

Reads ``adversarial.examples`` (a dict with ``x``, ``x_adv``, ``y``, optional ``pred_adv``;
absent is fine). Publishes nothing.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

from audit.registry import Check, register_check
from audit.results import CheckResult

from .attr_methods import (HOOK, METHOD_NAMES, METHODS, PERTURBATION, AttrMethod, AttrSettings,
                           choose_internal_batch, hook_safe_copy, last_conv)
from .attr_report import curves_png, maps_png, randomization_png, table_png
from .attr_sanity import auc, cascade, deletion_insertion, layer_groups, spearman

UNHOOKABLE_FORMATS = ("torchscript", "export")


@register_check("attribution")
class AttributionCheck(Check):
    reads = ("adversarial.examples",)
    shardable = True  # work units: each method's maps, then each step of the randomization cascade
    description = ("attribution maps (captum: saliency, IG, SmoothGrad, Grad-CAM, occlusion, guided backprop) "
                   "with randomization and deletion/insertion sanity checks")
    metrics = {
        "randomization_spearman": "mean Spearman rank correlation of |map| between the trained model and the model "
                                  "randomized from the top down to `layer` (Adebayo et al. 2018); per `method`, `layer`",
        "randomization_similarity": "mean of randomization_spearman over the whole cascade; above the threshold the "
                                    "method fails the randomization test; per `method`",
        "passes_randomization": "1 when the method's maps change with the model's parameters, else 0; per `method`",
        "deletion_auc": "area under the target-probability curve as the most attributed pixels are deleted "
                        "(Petsiuk et al. 2018; lower is better); per `method`, `method=random` for a random order",
        "insertion_auc": "area under the target-probability curve as the most attributed pixels are inserted into "
                         "a blurred image (higher is better); per `method`, `method=random`",
        "beats_random": "1 when the method beats the random order on deletion or insertion, else 0; per `method`",
        "ig_convergence_delta": "mean |completeness error| of Integrated Gradients, relative to |f(x) - f(baseline)| "
                                "of the target logit (Sundararajan et al. 2017)",
        "images": "number of images explained (`group`: correct, mistake, adversarial, all)",
    }
    findings = {
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
        methods: list = field(default_factory=lambda: list(METHOD_NAMES))  #: which methods run, in report order
        per_class: int = 4  #: correctly classified images per class
        mistakes: int = 8  #: most confident mistakes
        adversarial: int = 2  #: adversarial examples shown next to their originals (when published)
        sanity_images: int = 4  #: images of the randomization test (the first correct ones, across classes)
        randomization_layers: int = 8  #: cascade steps with maps computed (evenly spread; every layer is randomized)
        faithfulness_images: int = 8  #: images of the deletion/insertion test
        randomization_threshold: float = 0.5  #: randomization_similarity above this fails the method
        curve_steps: int = 10  #: points of the deletion/insertion curves
        ig_steps: int = 16  #: captum's default Gauss-Legendre rule converges in few steps
        ig_delta_warn: float = 0.1  #: relative convergence delta above this raises ig_not_converged
        smoothgrad_samples: int = 8
        smoothgrad_noise: float = 0.15  #: noise std as a share of the input range
        occlusion_window: int = 0  #: patch side in pixels (0: a quarter of the image side); stride is half of it
        memory_budget_mb: float = 512.0  #: memory for one IG/SmoothGrad pass (on CUDA also <= half the free memory)
        internal_batch_size: int = 0  #: images x steps per pass; 0 chooses it from memory_budget_mb
        rows_per_image: int = 8  #: image rows per report picture

        def __post_init__(self) -> None:
            bad = [m for m in self.methods if m not in METHOD_NAMES]
            if bad:
                raise ValueError(f"unknown method(s) {bad} (known: {', '.join(METHOD_NAMES)})")
            if self.curve_steps < 2 or self.ig_steps < 2 or self.smoothgrad_samples < 1:
                raise ValueError("curve_steps and ig_steps must be >= 2, smoothgrad_samples >= 1")

    # ------------------------------------------------------------------ run
    def run(self, ctx) -> CheckResult:
        with warnings.catch_warnings():  # captum warns on every call that it set requires_grad / hooks
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            return self._run(ctx)

    def _run(self, ctx) -> CheckResult:
        o = self.options
        res = CheckResult(self.name)
        model = ctx.model
        dev = model.device
        names = model.class_names
        sel = select_images(ctx, per_class=o.per_class, mistakes=o.mistakes, adversarial=o.adversarial)
        if sel is None:
            res.finding("info", "attribution.no_images", "No image could be selected (no data).")
            res.summary = "no images"
            return res
        x, y, groups, ids = sel
        with torch.no_grad():
            probs = model.logits(x, batch_size=ctx.config.batch_size).softmax(1)
        conf, target = probs.max(1)
        for g in ("correct", "mistake", "adversarial"):
            res.metric("images", sum(1 for v in groups if v.startswith(g)), group=g)
        res.metric("images", len(x), group="all")

        methods, hook_model, layer_name = self._usable_methods(ctx, res, x[:2].to(dev), target[:2].to(dev))
        settings = AttrSettings(ig_steps=o.ig_steps, smoothgrad_samples=o.smoothgrad_samples,
                                smoothgrad_noise=o.smoothgrad_noise, occlusion_window=o.occlusion_window,
                                bounds=tuple(model.spec.bounds), seed=int(torch.randint(0, 2**31 - 1, (1,),
                                                                                         generator=ctx.generator)))
        # chosen from free memory; rank 0's choice for every rank, since it decides the noise draws
        settings.internal_batch_size = ctx.agree("internal_batch_size", o.internal_batch_size or choose_internal_batch(
            model, x[:1].to(dev), o.memory_budget_mb))
        chunk = max(1, min(ctx.config.batch_size, 32, settings.internal_batch_size // 2))

        # the randomization test's images: the first correct ones (they are interleaved across classes)
        correct_idx = [i for i, g in enumerate(groups) if g == "correct"]
        s_idx = correct_idx[:o.sanity_images] or list(range(min(len(x), o.sanity_images)))
        n_s = len(s_idx)  # == s_idx is range(n_s): the selection starts with the correct images
        # ---- maps of every selected image; the sanity images form the first batch, so their
        # maps are exactly what the randomization test recomputes on the randomized copies
        bounds = [0] + list(range(n_s, len(x), chunk)) if n_s else list(range(0, len(x), chunk))
        spans = [(a, b) for a, b in zip(bounds, bounds[1:] + [len(x)]) if b > a]
        maps, timing, deltas = {}, {}, None

        def one_method(k: int, _unit_gen) -> dict:
            """Work unit: one method's maps of every selected image (deterministic in the settings)."""
            m = methods[k]
            net = hook_model if m.kind == HOOK else model
            settings.layer = net.get_submodule(layer_name) if layer_name else None
            settings.oom_retries = []
            t0 = time.perf_counter()
            try:
                outs, extras = [], []
                for i, j in ctx.bar(spans, desc=m.name, unit="batch"):
                    a, ex = m.fn(net, x[i:j].to(dev), target[i:j].to(dev), settings)
                    outs.append(a.cpu())
                    extras.append({key: v.cpu() if torch.is_tensor(v) else v for key, v in ex.items()})
            except Exception as e:  # noqa: BLE001 - one method failing must not sink the others
                return {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            return {"maps": torch.nan_to_num(torch.cat(outs)), "extras": extras, "oom": list(settings.oom_retries),
                    "seconds": round(time.perf_counter() - t0, 3)}

        oom: list[int] = []
        for m, rec in zip(list(methods), ctx.map_units(len(methods), one_method, tag="methods", unit="method",
                                                      keep=lambda r: "failed" not in r)):
            if "failed" in rec:
                res.finding("warn", "attribution.method_failed", f"{m.title} failed and was skipped: {rec['failed']}",
                            method=m.name)
                methods.remove(m)
                continue
            maps[m.name] = rec["maps"]
            timing[m.name] = rec["seconds"]
            oom += rec["oom"]
            if m.name == "integrated_gradients":
                deltas = torch.cat([ex["convergence_delta"] for ex in rec["extras"]])
        settings.oom_retries = oom
        if settings.oom_retries:
            res.finding("info", "attribution.oom_retry", f"Out of memory: the internal batch size was halved "
                        f"{len(settings.oom_retries)} time(s), down to {min(settings.oom_retries)}.")
        if deltas is not None:
            self._ig_delta(res, model, x, target, deltas)

        # ---- sanity: cascading parameter randomization
        phase = {"maps": round(sum(timing.values()), 3)}
        t0 = time.perf_counter()
        rand = self._guarded(res, "randomization", self._randomization, ctx, res, methods,
                             {k: v[:n_s] for k, v in maps.items()}, hook_model, layer_name, settings,
                             x[:n_s].to(dev), target[:n_s].to(dev), model)

        phase["randomization"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        # ---- faithfulness: deletion / insertion
        f_idx = [i for i, g in enumerate(groups) if g in ("correct", "mistake")][:o.faithfulness_images]
        faith = self._guarded(res, "deletion/insertion", self._faithfulness, ctx, res, methods,
                              {k: v[f_idx] for k, v in maps.items()}, x[f_idx].to(dev), target[f_idx].to(dev), model)

        phase["deletion_insertion"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        # ---- report
        captions = [f"{g}: {names[int(y[i])] if int(y[i]) >= 0 else '?'} -> {names[int(target[i])]} "
                    f"({float(conf[i]):.2f})" for i, g in enumerate(groups)]
        titles = [m.title for m in methods]
        for part, start in enumerate(range(0, len(x), o.rows_per_image)):
            rows = list(range(start, min(len(x), start + o.rows_per_image)))
            res.image(f"maps_{part + 1:02d}.png",
                      maps_png(x[rows], [maps[m.name][rows] for m in methods], [captions[i] for i in rows], titles),
                      f"attribution maps, images {rows[0] + 1}-{rows[-1] + 1} of {len(x)} "
                      "(caption: group: true -> predicted (confidence); maps explain the predicted class)")
        if rand:
            res.image("randomization.png", randomization_png(rand["curves"], o.randomization_threshold),
                      "cascading parameter randomization (Adebayo et al. 2018): mean |Spearman| of the maps "
                      "vs the trained model's, layers randomized from the top down")
        if faith:
            res.image("deletion_insertion.png", curves_png(faith["curves"]),
                      "deletion (lower is better) and insertion (higher is better) curves (Petsiuk et al. 2018)")
        table = [(m.title, rand.get("similarity", {}).get(m.name), rand.get("passed", {}).get(m.name),
                  faith.get("auc", {}).get(m.name), faith.get("beats", {}).get(m.name)) for m in methods]
        if table:
            res.image("summary_table.png", table_png(table, faith.get("auc", {}).get("random")),
                      "which methods passed the randomization and faithfulness tests")

        res.data["images"] = [{"id": ids[i], "group": groups[i], "y": int(y[i]), "pred": int(target[i]),
                               "confidence": round(float(conf[i]), 4)} for i in range(len(x))]
        phase["report"] = round(time.perf_counter() - t0, 3)
        res.data["timing_s"] = timing
        res.data["phase_s"] = phase
        res.data["internal_batch_size"] = settings.internal_batch_size
        if rand:
            res.data["randomization"] = rand["per_image"]
        if faith:
            res.data["faithfulness"] = faith["per_image"]
        passed = [m.name for m in methods if rand.get("passed", {}).get(m.name)]
        res.summary = (f"{len(x)} images x {len(methods)} methods in {sum(timing.values()):.1f} s; "
                       f"randomization passed: {', '.join(passed) or 'none'}")
        return res

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _guarded(res, what, fn, *args) -> dict:
        """Run one quality test; an exception becomes a finding and the maps are still reported."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            res.finding("warn", "attribution.sanity_failed", f"The {what} test failed and was skipped: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", test=what)
            return {}

    def _usable_methods(self, ctx, res, x2, t2) -> tuple[list[AttrMethod], torch.nn.Module | None, str | None]:
        model = ctx.model
        chosen = [m for m in METHODS if m.name in self.options.methods]
        fmt = model.info.get("format")
        hook_model, layer_name = model, None
        hooked = [m for m in chosen if m.kind == HOOK]
        if hooked and fmt in UNHOOKABLE_FORMATS:
            res.finding("info", "attribution.hooks_unsupported",
                        f"The model is a {fmt} program without Python modules to hook: "
                        f"{', '.join(m.title for m in hooked)} skipped (gradient and perturbation methods ran).",
                        methods=[m.name for m in hooked])
            chosen = [m for m in chosen if m.kind != HOOK]
        elif hooked:
            try:
                hook_model, changes = hook_safe_copy(model, x2)
            except Exception as e:  # noqa: BLE001 - a module refusing Python hooks
                res.finding("info", "attribution.hooks_unsupported",
                            f"Module hooks fail on this model ({type(e).__name__}): "
                            f"{', '.join(m.title for m in hooked)} skipped.", methods=[m.name for m in hooked])
                chosen = [m for m in chosen if m.kind != HOOK]
                changes = []
            if changes:
                res.finding("info", "attribution.model_copied",
                            "Hook-based methods (" + ", ".join(m.title for m in hooked) + ") ran on a copy of the "
                            "model: " + "; ".join(changes) + ".", changes=changes)
            if any(m.needs_conv for m in chosen):
                lc = last_conv(hook_model)
                if lc is None:
                    res.finding("info", "attribution.no_conv_layer", "The model has no nn.Conv2d layer: Grad-CAM skipped.")
                    chosen = [m for m in chosen if not m.needs_conv]
                else:
                    layer_name = lc[0]
                    res.data["grad_cam_layer"] = lc[0]
        if any(m.kind != PERTURBATION for m in chosen):
            why = _gradient_problem(model, x2, t2)
            if why:
                res.finding("warn", "attribution.gradients_unusable",
                            f"The model's input gradients are unusable ({why}): only occlusion ran.")
                chosen = [m for m in chosen if m.kind == PERTURBATION]
        return chosen, hook_model, layer_name

    def _ig_delta(self, res, model, x, target, deltas) -> None:
        with torch.no_grad():
            fx = model.logits(x).gather(1, target[:, None])[:, 0]
            fb = model.logits(torch.zeros_like(x) + model.spec.bounds[0]).gather(1, target[:, None])[:, 0]
        rel = float((deltas / ((fx - fb).abs() + 1e-6)).mean())
        res.metric("ig_convergence_delta", rel, method="integrated_gradients", steps=self.options.ig_steps)
        if rel > self.options.ig_delta_warn:
            res.finding("warn", "attribution.ig_not_converged",
                        f"Integrated Gradients' completeness error is {rel:.1%} of f(x) - f(baseline) at "
                        f"{self.options.ig_steps} steps (threshold {self.options.ig_delta_warn:.0%}): raise ig_steps.")

    def _randomization(self, ctx, res, methods, base, hook_model, layer_name, settings, xs, ts, model) -> dict:
        o = self.options
        if not methods or len(xs) == 0:
            return {}

        def maps_of(net):
            out = {}
            for m in methods:
                settings.layer = net.get_submodule(layer_name) if layer_name else None
                out[m.name] = m.fn(net, xs, ts, settings)[0].cpu()
            return out

        # the randomized copy is made from the hook-safe model: hook methods need it, the others don't mind
        src = hook_model if any(m.kind == HOOK for m in methods) else model
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
        curves = {m.name: [] for m in methods}
        per_image = {m.name: {} for m in methods}
        layers = []
        steps = len(layer_groups(src))
        keep = sorted(_checkpoints(steps, o.randomization_layers))

        def step_maps(j: int, _unit_gen) -> dict:
            """Work unit: the maps at the ``j``-th kept cascade step. The cascade is replayed
            from its seed up to that step (re-drawing weights is cheap next to the maps), so
            any rank computes exactly the sequential cascade's model."""
            for k, (layer, rnet) in enumerate(cascade(src, torch.Generator().manual_seed(seed))):
                if k == keep[j]:
                    return {"layer": layer, "maps": maps_of(rnet)}
            raise AssertionError("cascade step out of range")

        for rec in ctx.map_units(len(keep), step_maps, tag="randomization", desc="randomization", unit="layer"):
            layer, r = rec["layer"], rec["maps"]
            layer = layer[4:] if layer.startswith("net.") else layer
            layers.append(layer)
            for m in methods:
                rho = [spearman(base[m.name][i].abs(), r[m.name][i].abs()) for i in range(len(xs))]
                mean = sum(rho) / len(rho)
                res.metric("randomization_spearman", mean, method=m.name, layer=layer)
                curves[m.name].append((layer, mean))
                per_image[m.name][layer] = [round(v, 4) for v in rho]
        similarity, passed = {}, {}
        for m in methods:
            sim = sum(abs(v) for _, v in curves[m.name]) / max(1, len(curves[m.name]))
            similarity[m.name] = sim
            passed[m.name] = sim <= o.randomization_threshold
            res.metric("randomization_similarity", sim, method=m.name)
            res.metric("passes_randomization", float(passed[m.name]), method=m.name)
            if not passed[m.name]:
                sev = "info" if m.reference else "warn"
                ref = " (expected: it is the reference method known to fail this test)" if m.reference else ""
                res.finding(sev, "attribution.fails_randomization",
                            f"{m.title} maps barely change when the model's weights are randomized from the top down "
                            f"(mean |Spearman| {sim:.2f} over {len(layers)} layers > {o.randomization_threshold}): "
                            f"they show the image more than the model{ref}.", method=m.name)
        return {"curves": curves, "similarity": similarity, "passed": passed, "per_image": per_image}

    def _faithfulness(self, ctx, res, methods, maps, xf, tf, model) -> dict:
        o = self.options
        if not methods or len(xf) == 0:
            return {}
        f_maps = {m.name: maps[m.name] for m in methods}
        f_maps["random"] = torch.rand(len(xf), *xf.shape[-2:], generator=ctx.generator)
        curves, aucs, per_image = {}, {}, {}
        low = float(model.spec.bounds[0])
        for name, mp in f_maps.items():
            d, i = deletion_insertion(model, xf, tf, mp, steps=o.curve_steps, low=low,
                                      batch_size=ctx.config.batch_size)
            da, ia = auc(d), auc(i)
            curves[name] = (d.mean(0).tolist(), i.mean(0).tolist())
            aucs[name] = (float(da.mean()), float(ia.mean()))
            per_image[name] = {"deletion_auc": [round(float(v), 4) for v in da],
                               "insertion_auc": [round(float(v), 4) for v in ia]}
            res.metric("deletion_auc", aucs[name][0], method=name)
            res.metric("insertion_auc", aucs[name][1], method=name)
        rd, ri = aucs["random"]
        beats = {}
        for m in methods:
            d, i = aucs[m.name]
            beats[m.name] = d < rd or i > ri
            res.metric("beats_random", float(beats[m.name]), method=m.name)
            if not beats[m.name]:
                res.finding("warn", "attribution.not_better_than_random",
                            f"{m.title}'s pixel order is no better than a random one: deletion AUC {d:.3f} vs "
                            f"{rd:.3f} random (lower is better), insertion AUC {i:.3f} vs {ri:.3f} (higher is better).",
                            method=m.name)
        return {"curves": curves, "auc": aucs, "beats": beats, "per_image": per_image}


def _checkpoints(steps: int, most: int) -> set[int]:
    """At most ``most`` cascade steps, evenly spread, always the first (top layer) and the last."""
    if most <= 0 or steps <= most:
        return set(range(steps))
    if most == 1:
        return {0}
    return {round(i * (steps - 1) / (most - 1)) for i in range(most)}


def _gradient_problem(model, x2, t2) -> str | None:
    """Why the input gradients cannot be used, or None when they can."""
    try:
        xg = x2.clone().requires_grad_(True)
        out = model(xg).gather(1, t2[:, None]).sum()
        (grad,) = torch.autograd.grad(out, xg)
    except Exception as e:  # noqa: BLE001 - e.g. a model run under no_grad, non-differentiable ops
        return f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}"
    if not torch.isfinite(grad).all():
        return "they are not finite"
    if float(grad.abs().max()) == 0.0:
        return "they are all zero"
    return None


def select_images(ctx, *, per_class: int, mistakes: int, adversarial: int):
    """``(x, y, groups, ids)``: per class up to ``per_class`` correctly classified images
    (seeded, interleaved across classes so that any prefix covers many classes), the
    ``mistakes`` most confident mistakes, and up to ``adversarial`` published adversarial
    examples each preceded by its original. None when there is nothing to explain."""
    data = ctx.data
    if data is None or len(data) == 0:
        return None
    g = ctx.generator
    preds, conf = ctx.preds, ctx.probs.max(1).values
    k = ctx.model.num_classes
    by_class = []
    for c in range(k):
        idx = ((data.y == c) & (preds == c)).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)][:per_class]
        by_class.append(idx.tolist())
    chosen = [cl[j] for j in range(per_class) for cl in by_class if j < len(cl)]
    groups = ["correct"] * len(chosen)
    wrong = (preds != data.y).nonzero()[:, 0]
    wrong = wrong[torch.argsort(conf[wrong], descending=True, stable=True)][:mistakes].tolist()
    chosen += wrong
    groups += ["mistake"] * len(wrong)
    xs, ys, ids = [data.x[chosen]], [data.y[chosen]], [str(data.ids[i]) for i in chosen]
    adv = ctx.published.get("adversarial.examples")
    if adversarial > 0 and adv is not None and len(adv.x) > 0:
        xa, xo = adv.x_adv.float().cpu(), adv.x.float().cpu()
        ya = adv.y.long().cpu()
        if xo.shape[1:] == data.x.shape[1:] and xa.shape == xo.shape:
            pick = torch.randperm(len(xo), generator=g)[:adversarial].tolist()
            aids = adv.ids
            for j in pick:
                name = str(aids[j]) if isinstance(aids, (list, tuple)) and len(aids) == len(xo) else f"adv{j}"
                xs += [xo[j:j + 1], xa[j:j + 1]]
                ys += [ya[j:j + 1], ya[j:j + 1]]
                groups += ["adversarial-original", "adversarial"]
                ids += [name, f"{name} (adversarial, {adv.norm})"]
    x = torch.cat(xs)
    if len(x) == 0:
        return None
    y = torch.cat(ys)
    return x, y, groups, ids
