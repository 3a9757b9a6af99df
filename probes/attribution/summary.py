"""From the work units' records to the ``attribution`` check's metrics and findings: the
maps of the methods that ran, Integrated Gradients' completeness, the randomization test
(Adebayo et al. 2018) and the deletion/insertion test (Petsiuk et al. 2018)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.errors import first_line
from audit.results import CheckResult

from .engine import CascadeMaps, MethodMaps
from .methods import AttrMethod
from .sanity import auc, deletion_insertion, spearman

__all__ = ["Maps", "collect_maps", "ig_delta", "randomization", "faithfulness", "guarded", "UnitFailed"]


@dataclass
class Maps:
    """The methods whose maps were computed (report order), their maps (N, H, W), seconds per
    method, Integrated Gradients' convergence deltas (N,) or None, the halved batch sizes."""

    methods: list[AttrMethod]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    ig_deltas: torch.Tensor | None = None
    oom: list[int] = field(default_factory=list)


def collect_maps(res: CheckResult, methods: list[AttrMethod], records: list[MethodMaps]) -> Maps:
    """The maps of the methods that did not fail; ``attribution.method_failed`` for the others."""
    out = Maps(methods=[])
    for m, rec in zip(methods, records):
        if rec.failed:
            res.finding("warn", "attribution.method_failed", f"{m.title} failed and was skipped: {rec.failed}",
                        method=m.name)
            continue
        out.methods.append(m)
        out.maps[m.name] = rec.maps
        out.seconds[m.name] = rec.seconds
        out.oom += rec.oom
        if m.name == "integrated_gradients":
            out.ig_deltas = rec.extras["convergence_delta"]
    if out.oom:
        res.finding("info", "attribution.oom_retry", f"Out of memory: the internal batch size was halved "
                    f"{len(out.oom)} time(s), down to {min(out.oom)}.")
    return out


def ig_delta(res: CheckResult, model, x: torch.Tensor, target: torch.Tensor, deltas: torch.Tensor, *,
             steps: int, warn: float) -> None:
    """``ig_convergence_delta``: the completeness error of Integrated Gradients pooled over the
    images, Σ|error| / Σ|f(x) - f(baseline)| of the target logit (Sundararajan et al. 2017), so
    that one image with f(x) ≈ f(baseline) cannot blow it up as a mean of per-image ratios
    does; ``attribution.ig_not_converged`` above ``warn``."""
    with torch.no_grad():
        fx = model.logits(x).gather(1, target[:, None])[:, 0]
        fb = model.logits(torch.zeros_like(x) + model.spec.bounds[0]).gather(1, target[:, None])[:, 0]
    rel = float(deltas.abs().sum() / (fx - fb).abs().sum().clamp_min(1e-6))
    res.metric("ig_convergence_delta", rel, method="integrated_gradients", steps=steps)
    if rel > warn:
        res.finding("warn", "attribution.ig_not_converged",
                    f"Integrated Gradients' completeness error is {rel:.1%} of f(x) - f(baseline) at "
                    f"{steps} steps (threshold {warn:.0%}): raise ig_steps.")


def guarded(res: CheckResult, what: str, fn, *args, **kw) -> dict:
    """``fn(*args, **kw)``; an exception becomes ``attribution.sanity_failed`` and ``{}``, so the
    maps are still reported."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001
        why = str(e) if isinstance(e, UnitFailed) else first_line(e, 200, with_type=True)
        res.finding("warn", "attribution.sanity_failed", f"The {what} test failed and was skipped: {why}", test=what)
        return {}


class UnitFailed(Exception):
    """A work unit of a quality test failed; the message is the unit's one-line error."""


def randomization(res: CheckResult, methods: list[AttrMethod], base: dict[str, torch.Tensor],
                  steps: list[CascadeMaps], threshold: float) -> dict:
    """Metrics and findings of the cascading randomization test: per method and kept step
    the mean Spearman correlation of |map| between the trained model's ``base`` maps
    (n, H, W) and the randomized model's; ``randomization_similarity`` is the mean |rho|
    over the cascade, above ``threshold`` the method fails. Raises when a step failed for a
    method that ran (the caller turns that into ``attribution.sanity_failed``)."""
    if not methods or not steps:
        return {}
    for st in steps:
        bad = next(((n, e) for n, e in st.failed.items() if n == "*" or n in base), None)
        if bad is not None:
            raise UnitFailed(bad[1])
    curves = {m.name: [] for m in methods}
    per_image = {m.name: {} for m in methods}
    for st in steps:
        for m in methods:
            r = st.maps[m.name]
            rho = [spearman(base[m.name][i].abs(), r[i].abs()) for i in range(len(r))]
            mean = sum(rho) / len(rho)
            res.metric("randomization_spearman", mean, method=m.name, layer=st.layer)
            curves[m.name].append((st.layer, mean))
            per_image[m.name][st.layer] = [round(v, 4) for v in rho]
    similarity, passed = {}, {}
    for m in methods:
        sim = sum(abs(v) for _, v in curves[m.name]) / max(1, len(curves[m.name]))
        similarity[m.name] = sim
        passed[m.name] = sim <= threshold
        res.metric("randomization_similarity", sim, method=m.name)
        res.metric("passes_randomization", float(passed[m.name]), method=m.name)
        if not passed[m.name]:
            sev = "info" if m.reference else "warn"
            ref = " (expected: it is the reference method known to fail this test)" if m.reference else ""
            res.finding(sev, "attribution.fails_randomization",
                        f"{m.title} maps barely change when the model's weights are randomized from the top down "
                        f"(mean |Spearman| {sim:.2f} over {len(steps)} layers > {threshold}): "
                        f"they show the image more than the model{ref}.", method=m.name)
    return {"curves": curves, "similarity": similarity, "passed": passed, "per_image": per_image}


def faithfulness(res: CheckResult, methods: list[AttrMethod], maps: dict[str, torch.Tensor], x: torch.Tensor,
                 target: torch.Tensor, model, *, generator: torch.Generator, steps: int, batch_size: int) -> dict:
    """Metrics and findings of the deletion/insertion test on ``x`` (n, C, H, W) explaining
    ``target`` (n,), for each method's ``maps`` (n, H, W) and a random pixel order drawn from
    ``generator`` (``method=random``); a method is flagged when it beats the random order on
    neither curve."""
    if not methods or len(x) == 0:
        return {}
    f_maps = {m.name: maps[m.name] for m in methods}
    f_maps["random"] = torch.rand(len(x), *x.shape[-2:], generator=generator)
    curves, aucs, per_image = {}, {}, {}
    low = float(model.spec.bounds[0])
    for name, mp in f_maps.items():
        d, i = deletion_insertion(model, x, target, mp, steps=steps, low=low, batch_size=batch_size)
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
