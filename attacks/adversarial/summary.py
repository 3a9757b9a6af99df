"""The numbers of the ``adversarial`` check from its units' records: the units merged, the
curves (robust accuracy and attack success per attack and ε), the metric rows, the findings
(sanity, gradients, Carlini et al. 2019 §5.2 / AutoAttack attack comparisons), the per-sample
table and the published examples. Images are in :mod:`.figures`."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from audit.published import AdversarialExamples
from audit.results import CheckResult, SampleTable, wilson_interval

from .attacks import ATTACKS, gradient_attacks
from .diagnostics import LONGER
from .engine import NormRecord, UnitRecord, merge_norm
from .plan import Plan, Sanity
from .threat import NORM_LABEL, fmt_eps, max_epsilon

__all__ = ["Merged", "merge", "first_of", "curve_names", "curves", "success", "sanity_findings", "unit_findings",
           "norm_metrics", "masking_findings", "diagnostic_findings", "sample_table", "published_examples", "summary_part",
           "robust_column"]


@dataclass
class Merged:
    """Every unit's record as one run over the plan's samples: ``runs`` one merged
    :class:`~.engine.NormRecord` per norm, ``grad_bad`` (n,) bool, ``timings`` seconds per
    ``<attack>_<norm>`` summed over units (compute seconds, not wall time), ``queries``
    forward/backward sample passes of the attacks (``per_attack``: [forward, backward] per
    ``<attack>_<norm>``)."""

    runs: list[NormRecord]
    grad_bad: torch.Tensor
    timings: dict[str, float]
    queries: dict


def merge(records: list[UnitRecord]) -> Merged:
    timings: dict[str, float] = {}
    per_attack: dict[str, list[int]] = {}
    fwd = bwd = 0
    for r in records:
        for key, t in r.timings.items():
            timings[key] = round(timings.get(key, 0.0) + t, 3)
        for key, (f, b) in r.attack_passes.items():
            acc = per_attack.setdefault(key, [0, 0])
            acc[0], acc[1] = acc[0] + f, acc[1] + b
        fwd, bwd = fwd + r.passes[0], bwd + r.passes[1]
    runs = [merge_norm([r.runs[j] for r in records]) for j in range(len(records[0].runs))]
    return Merged(runs=runs, grad_bad=torch.cat([r.grad_bad for r in records]), timings=timings,
                  queries={"forwards": fwd, "backwards": bwd, "per_attack": per_attack})


# ----------------------------------------------------------------------------- curves
def first_of(nr: NormRecord, name: str) -> torch.Tensor:
    """(n,) first fooling ε index of an attack or a combination: ``"worst"`` (every attack),
    ``"gradient"`` (every gradient attack), ``"gradient+<control>"`` (those and a control)."""
    if name == "worst":
        return nr.worst_first()
    if name == "gradient" or name.startswith("gradient+"):
        names = [g for g in gradient_attacks() if g in nr.first] + name.split("+")[1:]
        return torch.stack([nr.first[g] for g in names]).amin(0)
    return nr.first[name]


def curve_names(nr: NormRecord) -> list[str]:
    """The reported curves: each attack not run as a control, then ``gradient`` and
    ``gradient+<control>`` when a control ran, then ``worst``."""
    names = [a for a in nr.first if a not in nr.control]
    if nr.control:
        names += ["gradient"] + [f"gradient+{c}" for c in nr.control]
    return names + ["worst"]


def curves(nr: NormRecord, correct: torch.Tensor) -> dict[str, list[float]]:
    """Robust accuracy per curve and ε: share of all samples correct and not fooled."""
    n = len(correct)
    return {a: [float((correct & (first_of(nr, a) > k)).float().mean()) if n else float("nan") for k in range(nr.K)]
            for a in curve_names(nr)}


def success(nr: NormRecord, name: str, attacked: torch.Tensor) -> list[float]:
    """Attack success rate per ε: share of the attacked samples fooled."""
    first, na = first_of(nr, name), int(attacked.sum())
    return [float((attacked & (first <= k)).sum()) / na if na else float("nan") for k in range(nr.K)]


def robust_column(norm: str, eps: float) -> str:
    """The per-sample outcome column of ``norm`` at ``eps``."""
    return f"robust[norm={norm},epsilon={eps:.4g}]"


# ----------------------------------------------------------------------------- findings
def sanity_findings(res: CheckResult, s: Sanity, plan: Plan) -> None:
    """ε = 0, repeated forward passes (and the EOT setting, ``res.data["eot"]``), probability
    outputs, and unusable input gradients."""
    eot = plan.eot
    res.data["eot"] = eot.as_dict()
    if s.stochastic:
        how = (f"the attacks used Expectation over Transformation (Athalye et al. 2018): gradients averaged over "
               f"{eot.samples} draws, and a sample counts as robust only if all {eot.samples} draws classify it "
               "correctly (option eot_samples)" if eot.enabled else
               "eot_samples = 1, so the attacks used single draws (no EOT, Athalye et al. 2018) and robustness is "
               "likely overestimated")
        res.finding("warn", "gradient_masking.stochastic_outputs",
                    f"Two forward passes of the same {plan.n} inputs differ (largest logit change {s.logit_change:.2g} "
                    f"of the logit scale, {s.flips} predictions changed): {how}. If the randomness is not meant as a "
                    "defence (dropout or batch norm left in train mode), put the model in eval mode.")
    if abs(s.acc0 - s.acc) > 1e-9:
        res.finding("warn", "gradient_masking.eps0_mismatch",
                    f"Robust accuracy at ε=0 is {s.acc0:.1%} but the clean accuracy is {s.acc:.1%}: the model's "
                    "output is not a function of its input alone"
                    + (f" (at ε=0 a sample counts only if all {eot.samples} EOT draws are correct)." if eot.enabled
                       else "."))
    if s.probability_outputs:
        _probability_finding(res, plan)
    if not plan.grad_ok:
        res.finding("warn", "gradient_masking.no_gradients",
                    f"Input gradients cannot be used ({plan.gradient_problem}); the gradient attacks "
                    f"({', '.join(plan.skipped)}) did not run and only the gradient-free ones did, so robustness is "
                    "likely overestimated.")


def _probability_finding(res: CheckResult, plan: Plan) -> None:
    """``gradient_masking.probability_outputs``: info when the log-probabilities are usable
    margins; warn when the model's own float32 softmax underflowed (the runner-up class's
    probability below float32's smallest normal number, 1.18e-38) on attacked samples."""
    ai = plan.attacked.nonzero().flatten()
    probs = plan.clean_probs[ai]
    runner_up = probs.topk(2, dim=1).values[:, 1] if probs.shape[1] > 1 and len(ai) else probs.new_zeros(0)
    n_sat = int((runner_up < torch.finfo(torch.float32).tiny).sum())
    said = ("The model outputs probabilities, not logits. The audit attacks their log, taken in float64 (only exact "
            "zeros are floored, at float32's smallest positive value), so log-probability differences are the "
            "logit differences of the model's softmax")
    if n_sat == 0:
        res.finding("info", "gradient_masking.probability_outputs",
                    said + f"; on all {len(ai)} attacked samples its probabilities are in float32's normal range, so "
                           "the attacks see the same margins and gradients as on its logits.")
        return
    res.finding("warn", "gradient_masking.probability_outputs",
                said + f", except where that softmax underflows in float32: on {n_sat} of the {len(ai)} attacked "
                       "samples every other class's probability is below 1.2e-38 (float32's smallest normal number; "
                       "an exact 0 reads as log 2^-149 ≈ -103.3 whatever the logit gap), and the margin's gradient "
                       "shrinks or vanishes inside the model. Gradient attacks are weak there and robustness may be "
                       "overestimated; export the pre-softmax logits.")


def unit_findings(res: CheckResult, plan: Plan, m: Merged) -> None:
    """Zero gradients, the unbounded attack's failures, unverified adversarials."""
    ai = plan.attacked.nonzero().flatten()
    share = float(m.grad_bad[ai].float().mean()) if len(ai) and plan.grad_ok else 0.0
    if len(ai) and share > 0.05:
        res.finding("warn", "gradient_masking.zero_gradients",
                    f"The input gradient of the logit margin is zero or non-finite for {share:.0%} of the "
                    f"{len(ai)} attacked samples (shattered gradients: input quantization, non-differentiable "
                    "preprocessing); gradient attacks are blind there.")
    for nr in m.runs:
        if nr.min_norm is not None and len(ai):
            rate = float(torch.isfinite(nr.min_norm[ai]).float().mean())
            if rate < 0.99:
                top = max_epsilon(nr.norm, plan.x.shape[1:])
                res.finding("warn", "gradient_masking.unbounded_attack_fails",
                            f"With ε = {top:.3g} ({nr.norm}; any image is reachable) the gradient attacks "
                            f"fooled only {rate:.1%} of {len(ai)} samples instead of ~100%: the gradients do "
                            "not lead to the decision boundary (masking), or the model ignores its input.")
        dropped, recovered = nr.unverified
        if dropped:
            why = (f"on {plan.eot.samples} fresh draws of the randomized model (every draw classified them "
                   "correctly)" if plan.eot.enabled else "on a second forward pass (numerical noise at the decision "
                   "boundary)")
            res.finding("info", "adversarial.unverified",
                        f"{dropped} {nr.norm} adversarial(s) did not reproduce {why}; a fresh APGD-CE run re-found "
                        f"{recovered} of them with a verified adversarial, the rest count as robust.")


def masking_findings(res: CheckResult, nr: NormRecord, cur: dict[str, list[float]], tol: float) -> None:
    """Attack-comparison flags (Carlini et al. 2019 §5.2; AutoAttack): the iterative gradient
    attacks weaker than single-step FGSM on the same samples, a gradient-free attack (or a
    control on what the gradient attacks left) stronger than the best gradient attack, by
    more than ``tol`` of the samples."""
    lab = NORM_LABEL[nr.norm]
    _iterative_weaker(res, nr, tol)
    grad = [a for a in gradient_attacks() if a in cur]
    if not grad:
        return
    free = [a for a in ATTACKS if a in cur and not ATTACKS[a].uses_gradients] + [f"gradient+{c}" for c in nr.control]
    for name in free:
        combo = name.startswith("gradient+")
        ref = cur["gradient"] if combo else [min(cur[a][k] for a in grad) for k in range(nr.K)]
        g, k = max((ref[k] - cur[name][k], k) for k in range(nr.K))
        if g <= tol:
            continue
        attack = name.split("+")[-1]
        where = f"{lab} ε={fmt_eps(nr.eps[k], nr.norm)}"
        if combo:
            msg = (f"{where}: {ATTACKS[attack].label} fooled {g:.1%} of the samples on which every gradient attack "
                   f"failed (robust accuracy {ref[k]:.1%} → {cur[name][k]:.1%})")
        else:
            msg = f"{where}: {ATTACKS[attack].label} leaves {cur[name][k]:.1%} robust, the best gradient attack {ref[k]:.1%}"
        res.finding("warn", "gradient_masking.gradient_free_stronger",
                    msg + "; gradients do not point to the adversarials that exist.", attack=attack, norm=nr.norm)


def _iterative_weaker(res: CheckResult, nr: NormRecord, tol: float) -> None:
    """``gradient_masking.iterative_weaker``: per ε, over the same samples (every attacked one;
    each attack runs on all of them), the samples FGSM fooled that no iterative gradient attack
    (PGD, APGD-*) did, less those the iterative attacks fooled that FGSM did not, as a share of
    the evaluated samples: the robust-accuracy gap, reported where it exceeds ``tol``."""
    iterative = [a for a in nr.first if ATTACKS[a].iterative and ATTACKS[a].uses_gradients]
    if not iterative or "fgsm" not in nr.first or not len(nr.first["fgsm"]):
        return
    it = torch.stack([nr.first[a] for a in iterative]).amin(0)
    fg, n = nr.first["fgsm"], len(nr.first["fgsm"])
    rows = []
    for k in range(nr.K):
        only_fgsm, only_it = int(((fg <= k) & (it > k)).sum()), int(((it <= k) & (fg > k)).sum())
        rows.append(((only_fgsm - only_it) / n, k, only_fgsm, only_it))
    gap, k, only_fgsm, only_it = max(rows)
    if gap > tol:
        names = "/".join(ATTACKS[a].label for a in iterative)
        res.finding("warn", "gradient_masking.iterative_weaker",
                    f"{NORM_LABEL[nr.norm]} ε={fmt_eps(nr.eps[k], nr.norm)}, on the same {n} samples: single-step FGSM "
                    f"fooled {only_fgsm} that {names} did not, and {names} only {only_it} that FGSM did not (robust "
                    f"accuracy {gap:.1%} higher under the iterative attacks); an iterative attack weaker than one step "
                    "means its gradients mislead it (masking).")


def diagnostic_findings(res: CheckResult, nr: NormRecord, n: int, tol: float) -> None:
    """The diagnostics' flags (:mod:`.diagnostics`, Carlini et al. 2019 §5): an independent
    per-ε APGD-CE whose success falls as ε grows (``gradient_masking.success_not_monotone``),
    and a longer APGD-CE that fools probe samples the ensemble left robust
    (``adversarial.not_converged``), each beyond ``tol`` of the ``n`` probe samples and at
    least 2 samples; ``res.data["diagnostics"][norm]`` holds the counts either way."""
    if nr.independent is None:
        return
    lab = NORM_LABEL[nr.norm]
    succ = nr.independent.sum(0).tolist()
    tried, found = nr.longer_tried.sum(0).tolist(), nr.longer_fooled.sum(0).tolist()
    res.data.setdefault("diagnostics", {})[nr.norm] = {
        "probe_samples": n, "epsilons": nr.eps, "independent_fooled": succ,
        "longer_tried": tried, "longer_fooled": found}
    if n == 0:
        return
    need = max(2, tol * n)
    drop, i, j = max(((succ[i] - succ[j], i, j) for i in range(nr.K) for j in range(i + 1, nr.K)), default=(0, 0, 0))
    if drop >= need:
        res.finding("warn", "gradient_masking.success_not_monotone",
                    f"{lab}: APGD-CE run independently at each ε on the same {n} probe samples fooled {succ[i]} at "
                    f"ε={fmt_eps(nr.eps[i], nr.norm)} but only {succ[j]} at the larger ε={fmt_eps(nr.eps[j], nr.norm)}; "
                    "a larger ball contains every smaller one, so the attack is missing adversarials that exist "
                    "(gradient masking, or too few iterations).", norm=nr.norm)
    missed = int(nr.longer_fooled.any(1).sum())  # samples, not (sample, ε) pairs
    if missed >= need:
        k = max(range(nr.K), key=lambda q: found[q])
        res.finding("warn", "adversarial.not_converged",
                    f"{lab}: APGD-CE with {LONGER}× the budget's iterations fooled {found[k]} of the "
                    f"{tried[k]} probe samples the whole ensemble left robust at ε={fmt_eps(nr.eps[k], nr.norm)} "
                    f"({missed} distinct samples over all ε): the ensemble has not converged on this model and its robust accuracy "
                    "is overestimated; use budget = \"thorough\" or more apgd_steps.", norm=nr.norm)


# ----------------------------------------------------------------------------- metrics
def norm_metrics(res: CheckResult, plan: Plan, s: Sanity, nr: NormRecord, class_names: list[str]
                 ) -> tuple[dict[str, list[float]], float]:
    """The metric rows of one norm; returns its curves and the median minimal perturbation
    (the usual median: the mean of the two middle values for an even count; inf/NaN when the
    upper middle value is a sample never fooled, written null)."""
    cur = curves(nr, plan.correct)
    n, na = plan.n, int(plan.attacked.sum())  # rates with their 95% Wilson interval (CheckResult.rate)
    for a in cur:
        first = first_of(nr, a)
        for k, e in enumerate(nr.eps):
            res.rate("robust_accuracy", int((plan.correct & (first > k)).sum()), n, attack=a, norm=nr.norm, epsilon=e)
            res.rate("attack_success_rate", int((plan.attacked & (first <= k)).sum()), na, attack=a, norm=nr.norm,
                     epsilon=e)
    if 0.0 not in nr.eps:
        res.rate("robust_accuracy", round(s.acc0 * n), n, attack="worst", norm=nr.norm, epsilon=0.0)
    wf = nr.worst_first()
    for c in torch.unique(plan.y).tolist():
        m = plan.y == c
        for k, e in enumerate(nr.eps):
            res.rate("robust_accuracy", int((plan.correct[m] & (wf[m] > k)).sum()), int(m.sum()), attack="worst",
                     norm=nr.norm, epsilon=e, **{"class": class_names[c]})
    mp = nr.min_pert[plan.attacked]
    med = statistics.median(mp.tolist()) if len(mp) else float("nan")
    res.metric("median_min_perturbation", med, norm=nr.norm)
    return cur, med


def summary_part(nr: NormRecord, cur: dict[str, list[float]], med: float) -> str:
    """``"L∞ ε=8/255: robust 8.3% [3.3–19.6] of 48, median min pert 4.96/255"`` at the ε nearest
    half the largest: the worst-case robust accuracy with its 95% Wilson interval (in %) and
    the number of evaluated samples it is a share of."""
    mid = min(range(nr.K), key=lambda k: abs(nr.eps[k] - nr.eps[-1] / 2))
    n, rob = len(nr.adv_k), cur["worst"][mid]
    lo, hi = wilson_interval(round(rob * n), n) if math.isfinite(rob) else (None, None)
    ci = f" [{100 * lo:.1f}\u2013{100 * hi:.1f}]" if lo is not None else ""
    return (f"{NORM_LABEL[nr.norm]} ε={fmt_eps(nr.eps[mid], nr.norm)}: robust {rob:.1%}{ci} of {n}, "
            f"median min pert {fmt_eps(med, nr.norm) if math.isfinite(med) else 'n/a'}")


# ----------------------------------------------------------------------------- per sample
def sample_table(plan: Plan, runs: list[NormRecord]) -> SampleTable:
    """Per evaluated sample: ``label``, and per norm ``robust[norm=..,epsilon=..]`` (correct and
    not fooled by any attack at that ε) and ``min_perturbation[norm=..]`` (null: never fooled)."""
    cols: dict[str, list] = {"label": plan.y.tolist()}
    for nr in runs:
        wf = nr.worst_first()
        for k, e in enumerate(nr.eps):
            cols[robust_column(nr.norm, e)] = (plan.correct & (wf > k)).tolist()
        cols[f"min_perturbation[norm={nr.norm}]"] = [round(v, 6) if math.isfinite(v) else None
                                                     for v in nr.min_pert.tolist()]
    return SampleTable(plan.ids, cols)


def published_examples(plan: Plan, runs: list[NormRecord]) -> AdversarialExamples | None:
    """``adversarial.examples`` for the first norm that fooled anything, or None."""
    for nr in runs:
        gi = (nr.adv_k < nr.K).nonzero().flatten()
        if len(gi):
            return AdversarialExamples(x=plan.x[gi].clone(), x_adv=nr.adv[gi].clone(), y=plan.y[gi].clone(),
                                       pred_adv=nr.adv_logits[gi].argmax(1), norm=nr.norm,
                                       epsilon=torch.tensor([nr.eps[k] for k in nr.adv_k[gi].tolist()]),
                                       ids=[plan.ids[i] for i in gi.tolist()])
    return None
