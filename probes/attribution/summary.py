"""From the work units' records to the ``attribution`` check's metrics and findings: the
maps of the methods that ran, Integrated Gradients' completeness, the randomization test
(Adebayo et al. 2018) and the deletion/insertion test (Petsiuk et al. 2018)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.errors import first_line
from audit.intervals import bootstrap_mean_interval
from audit.results import CheckResult, Metric

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


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM (Wang et al. 2004, ``skimage.metrics.structural_similarity``) of two maps' magnitudes
    (H, W), each scaled to [0, 1] (Adebayo et al. 2018 compare normalized maps)."""
    from skimage.metrics import structural_similarity

    def unit(t):
        t = t.abs().double()
        return ((t - t.min()) / (t.max() - t.min()).clamp_min(1e-12)).cpu().numpy()

    h, w = a.shape[-2:]
    win = min(7, h, w)
    win -= 1 - win % 2  # odd
    return float(structural_similarity(unit(a), unit(b), data_range=1.0, win_size=max(win, 3)))


def randomization(res: CheckResult, methods: list[AttrMethod], base: dict[str, torch.Tensor],
                  steps: list[CascadeMaps], threshold: float, *, seed: int = 0) -> dict:
    """Metrics and findings of the cascading randomization test (Adebayo et al. 2018, "Sanity
    Checks for Saliency Maps"): per method and kept step, per image, the Spearman rank
    correlation of |map| between the trained model's ``base`` maps (n, H, W) and the randomized
    model's, the signed maps' rank correlation, and the SSIM of the normalized magnitudes;
    each image's correlations enter in absolute value (opposite signs do not cancel).
    ``randomization_similarity`` is, over images, the mean of each image's similarity: the mean
    over the cascade of the mean of its three measures (|rank correlation of |map||, |rank
    correlation of the signed maps|, SSIM; the three the paper reports beside HOG), with its
    95% bootstrap interval over images. The verdict reads the interval: ``pass`` when it lies
    at or below ``threshold``, ``fail`` when above, ``inconclusive`` when it straddles it.
    Raises when a step failed for a method that ran (the caller turns that into
    ``attribution.sanity_failed``)."""
    if not methods or not steps:
        return {}
    for st in steps:
        bad = next(((n, e) for n, e in st.failed.items() if n == "*" or n in base), None)
        if bad is not None:
            raise UnitFailed(bad[1])
    curves = {m.name: [] for m in methods}
    per_image = {m.name: {} for m in methods}
    per_image_mean: dict[str, torch.Tensor] = {}
    for m in methods:
        b = base[m.name]
        rows = []
        for st in steps:
            r = st.maps[m.name]
            rho = torch.tensor([abs(spearman(b[i].abs(), r[i].abs())) for i in range(len(r))])
            signed = [abs(spearman(b[i], r[i])) for i in range(len(r))]
            ssim = [_ssim(b[i], r[i]) for i in range(len(r))]
            both = (rho + torch.tensor(signed) + torch.tensor(ssim)) / 3  # (n,): the image's similarity here
            q = {"method": m.name, "layer": st.layer}
            res.metric("randomization_spearman", float(rho.mean()), **q)
            res.metric("randomization_spearman_signed", sum(signed) / len(signed), **q)
            res.metric("randomization_ssim", sum(ssim) / len(ssim), **q)
            curves[m.name].append((st.layer, float(both.mean())))
            per_image[m.name][st.layer] = {"spearman_abs": [round(float(v), 4) for v in rho],
                                           "spearman_signed": [round(v, 4) for v in signed],
                                           "ssim": [round(v, 4) for v in ssim]}
            rows.append(both)
        per_image_mean[m.name] = torch.stack(rows).mean(0)  # (n,): each image's mean over the cascade
    similarity, passed, verdict, interval = {}, {}, {}, {}
    for m in methods:
        v = per_image_mean[m.name]
        sim = float(v.mean())
        lo, hi = bootstrap_mean_interval(v.tolist(), seed=seed)
        lo, hi = (sim, sim) if lo is None else (lo, hi)
        verdict[m.name] = "pass" if hi <= threshold else "fail" if lo > threshold else "inconclusive"
        similarity[m.name], interval[m.name] = sim, (lo, hi)
        passed[m.name] = verdict[m.name] == "pass"
        res.metrics.append(Metric("randomization_similarity", sim, {"method": m.name}, ci_low=lo, ci_high=hi))
        res.metric("passes_randomization", {"pass": 1.0, "fail": 0.0}.get(verdict[m.name]), method=m.name)
        what = (f"similarity (mean of |Spearman| of |map|, |Spearman| of the signed map and SSIM) {sim:.2f} over "
                f"{len(steps)} layers and {len(v)} images, 95% interval "
                f"[{lo:.2f}, {hi:.2f}], threshold {threshold}")
        if verdict[m.name] == "fail":
            sev = "info" if m.reference else "warn"
            ref = " (expected: it is the reference method known to fail this test)" if m.reference else ""
            res.finding(sev, "attribution.fails_randomization",
                        f"{m.title} maps barely change when the model's weights are randomized from the top down "
                        f"({what}): they show the image more than the model{ref}.", method=m.name)
        elif verdict[m.name] == "inconclusive":
            res.finding("info", "attribution.randomization_inconclusive",
                        f"{m.title}: the randomization test cannot tell ({what}: the interval straddles the "
                        "threshold); raise sanity_images.", method=m.name)
    return {"curves": curves, "similarity": similarity, "passed": passed, "verdict": verdict,
            "interval": {k: list(v) for k, v in interval.items()}, "per_image": per_image}


def faithfulness(res: CheckResult, methods: list[AttrMethod], maps: dict[str, torch.Tensor], x: torch.Tensor,
                 target: torch.Tensor, model, *, generator: torch.Generator, steps: int, batch_size: int,
                 random_orders: int = 8, baseline: str = "blur", alpha: float = 0.05) -> dict:
    """Metrics and findings of the deletion/insertion test (Petsiuk et al. 2018) on ``x``
    (n, C, H, W) explaining ``target`` (n,), for each method's ``maps`` (n, H, W) and
    ``random_orders`` random pixel orders drawn from ``generator`` (``method=random``: their
    mean). A method *beats random* on a curve when, paired over images, its AUC is better than
    the same image's mean random AUC by a one-sided Wilcoxon signed-rank test at ``alpha``
    (``scipy.stats.wilcoxon``) and its mean gain exceeds the spread (standard deviation) of
    the random orders' mean AUCs; it is flagged when it beats random on neither curve."""
    from scipy.stats import wilcoxon

    if not methods or len(x) == 0:
        return {}
    low = float(model.spec.bounds[0])

    def run(mp):
        d, i = deletion_insertion(model, x, target, mp, steps=steps, low=low, batch_size=batch_size, baseline=baseline)
        return d, i, auc(d), auc(i)

    curves, aucs, per_image = {}, {}, {}
    rand = [run(torch.rand(len(x), *x.shape[-2:], generator=generator)) for _ in range(max(1, random_orders))]
    rd_img = torch.stack([r[2] for r in rand]).mean(0)  # (n,): each image's mean random AUC
    ri_img = torch.stack([r[3] for r in rand]).mean(0)
    spread = (float(torch.tensor([float(r[2].mean()) for r in rand]).std()) if len(rand) > 1 else 0.0,
              float(torch.tensor([float(r[3].mean()) for r in rand]).std()) if len(rand) > 1 else 0.0)
    curves["random"] = (torch.stack([r[0] for r in rand]).mean((0, 1)).tolist(),
                        torch.stack([r[1] for r in rand]).mean((0, 1)).tolist())
    aucs["random"] = (float(rd_img.mean()), float(ri_img.mean()))
    per_image["random"] = {"deletion_auc": [round(float(v), 4) for v in rd_img],
                           "insertion_auc": [round(float(v), 4) for v in ri_img]}
    res.metric("deletion_auc", aucs["random"][0], method="random", orders=len(rand))
    res.metric("insertion_auc", aucs["random"][1], method="random", orders=len(rand))
    beats, tests = {}, {}

    def one_sided(gain: torch.Tensor) -> float:
        g = gain.double().numpy()
        if len(g) < 2 or (g == 0).all():
            return 1.0
        return float(wilcoxon(g, alternative="greater", zero_method="zsplit").pvalue)

    for m in methods:
        d, i, da, ia = run(maps[m.name])
        curves[m.name] = (d.mean(0).tolist(), i.mean(0).tolist())
        aucs[m.name] = (float(da.mean()), float(ia.mean()))
        per_image[m.name] = {"deletion_auc": [round(float(v), 4) for v in da],
                             "insertion_auc": [round(float(v), 4) for v in ia]}
        res.metric("deletion_auc", aucs[m.name][0], method=m.name)
        res.metric("insertion_auc", aucs[m.name][1], method=m.name)
        gd, gi = rd_img - da, ia - ri_img  # gains over random: positive is better on both curves
        pd, pi = one_sided(gd), one_sided(gi)
        ok_d = pd < alpha and float(gd.mean()) > spread[0]
        ok_i = pi < alpha and float(gi.mean()) > spread[1]
        beats[m.name] = ok_d or ok_i
        tests[m.name] = {"deletion_p": pd, "insertion_p": pi, "deletion_gain": float(gd.mean()),
                         "insertion_gain": float(gi.mean())}
        res.metric("faithfulness_p_value", pd, method=m.name, curve="deletion")
        res.metric("faithfulness_p_value", pi, method=m.name, curve="insertion")
        res.metric("beats_random", float(beats[m.name]), method=m.name)
        if not beats[m.name]:
            res.finding("warn", "attribution.not_better_than_random",
                        f"{m.title}'s pixel order is not shown better than random on {len(x)} images: deletion AUC "
                        f"{aucs[m.name][0]:.3f} vs {aucs['random'][0]:.3f} for {len(rand)} random orders (lower is "
                        f"better; Wilcoxon p = {pd:.2g}, gain {float(gd.mean()):+.3f} vs their spread {spread[0]:.3f}), "
                        f"insertion AUC {aucs[m.name][1]:.3f} vs {aucs['random'][1]:.3f} (higher is better; p = "
                        f"{pi:.2g}, gain {float(gi.mean()):+.3f} vs spread {spread[1]:.3f}).", method=m.name)
    return {"curves": curves, "auc": aucs, "beats": beats, "tests": tests, "per_image": per_image,
            "settings": {"random_orders": len(rand), "baseline": baseline, "steps": steps, "alpha": alpha}}