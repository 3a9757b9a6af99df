"""Results of the ``adversarial`` check from the engine's per-sample records: metric rows,
the attack-comparison masking findings, images (curves, minimal-perturbation histogram,
example panels), the published examples and the compact per-sample data."""
from __future__ import annotations

import math
import statistics

import torch

from audit.published import AdversarialExamples

from audit.imaging import figure_png, image_grid, new_figure

from . import adv_core as core
from .adversarial import GRADIENT_ATTACKS, fmt_eps

NORM_LABEL = {"linf": "L∞", "l2": "L2"}
STYLE = {"fgsm": ("C1", "-", 1.2), "pgd": ("C0", "-", 1.2), "fmn": ("C2", "-", 1.2), "square": ("C4", "-", 1.2),
         "noise": ("gray", "--", 1.2), "worst": ("black", "-", 2.4), "gradient": ("C3", ":", 1.2),
         "gradient+square": ("C4", "-.", 1.2)}


def report(eng) -> None:
    res = eng.res
    names = eng.model.class_names
    summary = []
    published = False
    for nr in eng.runs:
        cur = eng.curves(nr)
        nr.curve = cur
        for a, vals in cur.items():
            succ = eng.success(nr, a)
            for k, e in enumerate(nr.eps):
                res.metric("robust_accuracy", vals[k], attack=a, norm=nr.norm, epsilon=e)
                res.metric("attack_success_rate", succ[k], attack=a, norm=nr.norm, epsilon=e)
        if 0.0 not in nr.eps:
            res.metric("robust_accuracy", eng.acc0, attack="worst", norm=nr.norm, epsilon=0.0)
        wf = nr.worst_first()
        for c in torch.unique(eng.y).tolist():
            m = eng.y == c
            for k, e in enumerate(nr.eps):
                res.metric("robust_accuracy", float((eng.correct[m] & (wf[m] > k)).float().mean()), attack="worst",
                           norm=nr.norm, epsilon=e, **{"class": names[c]})
        att = eng.attacked
        mp = nr.min_pert[att]
        med = statistics.median(mp.tolist()) if len(mp) else float("nan")  # mean of the middle two when even
        res.metric("median_min_perturbation", med, norm=nr.norm)
        _masking(eng, nr, cur)
        mid = min(range(nr.K), key=lambda k: abs(nr.eps[k] - nr.eps[-1] / 2))
        summary.append(f"{NORM_LABEL[nr.norm]} ε={fmt_eps(nr.eps[mid], nr.norm)}: robust {cur['worst'][mid]:.1%}, "
                       f"median min pert {fmt_eps(med, nr.norm) if math.isfinite(med) else 'n/a'}")
        res.image(f"curve_{nr.norm}.png", _curve_png(nr, cur, eng.acc),
                  f"{NORM_LABEL[nr.norm]} robust accuracy vs ε: every attack, the per-sample worst case and the "
                  "random-noise baseline (n={})".format(eng.n))
        if len(mp):
            res.image(f"min_perturbation_{nr.norm}.png", _hist_png(nr, mp),
                      f"Smallest {NORM_LABEL[nr.norm]} adversarial perturbation found per sample")
        ex = _examples(eng, nr)
        if ex is not None:
            res.image(f"examples_{nr.norm}.png", ex,
                      f"original | perturbation (amplified) | adversarial, {NORM_LABEL[nr.norm]}; "
                      "true label and confidence → prediction and confidence")
        if not published:
            published = _publish(eng, nr)
        res.data[nr.norm] = {
            "epsilons": nr.eps, "attacks": list(nr.first),
            "first_fooled": {a: t.tolist() for a, t in nr.first.items()},  # index into epsilons; K = never
            "min_perturbation": [round(float(v), 6) if math.isfinite(v) else None for v in nr.min_pert.tolist()],
        }
    res.data["ids"] = eng.ids
    res.data["timings_s"] = eng.timings
    res.data["queries"] = eng.queries
    res.summary = "; ".join(summary) + f"; clean accuracy {eng.acc:.1%} on the {eng.n} attacked samples"


def _masking(eng, nr, cur) -> None:
    """Attack-comparison flags (Carlini et al. 2019 §5.2; AutoAttack)."""
    res, tol = eng.res, max(eng.o.tolerance, 1.5 / max(eng.n, 1))
    lab = NORM_LABEL[nr.norm]
    if "pgd" in cur and "fgsm" in cur:
        gaps = [(cur["pgd"][k] - cur["fgsm"][k], k) for k in range(nr.K)]
        g, k = max(gaps)
        if g > tol:
            res.finding("warn", "gradient_masking.iterative_weaker",
                        f"{lab} ε={fmt_eps(nr.eps[k], nr.norm)}: PGD leaves {cur['pgd'][k]:.1%} robust but single-step "
                        f"FGSM only {cur['fgsm'][k]:.1%}; an iterative attack weaker than one step means its gradients "
                        "mislead it (masking).")
    grad = [a for a in GRADIENT_ATTACKS if a in cur]
    if grad:
        for free in ("square", "noise", "gradient+square"):
            if free not in cur:
                continue
            ref = cur["gradient"] if free == "gradient+square" else [min(cur[a][k] for a in grad) for k in range(nr.K)]
            gaps = [(ref[k] - cur[free][k], k) for k in range(nr.K)]
            g, k = max(gaps)
            if g > tol:
                if free == "gradient+square":
                    msg = (f"{lab} ε={fmt_eps(nr.eps[k], nr.norm)}: the gradient-free Square attack fooled "
                           f"{g:.1%} of the samples on which every gradient attack failed (robust accuracy "
                           f"{ref[k]:.1%} → {cur[free][k]:.1%})")
                else:
                    what = "the gradient-free Square attack" if free == "square" else "random noise"
                    msg = (f"{lab} ε={fmt_eps(nr.eps[k], nr.norm)}: {what} leaves {cur[free][k]:.1%} robust, the "
                           f"best gradient attack {ref[k]:.1%}")
                res.finding("warn", "gradient_masking.gradient_free_stronger",
                            msg + "; gradients do not point to the adversarials that exist.",
                            attack="square" if "square" in free else free, norm=nr.norm)


def _curve_png(nr, cur, acc) -> bytes:
    fig, ax = new_figure(5.6, 3.8)
    xs = [e * 255 if nr.norm == "linf" else e for e in nr.eps]
    for a, vals in cur.items():
        color, ls, lw = STYLE.get(a, ("C5", "-", 1.2))
        ax.plot(xs, vals, ls, color=color, lw=lw, marker="o", ms=3, label=a)
    ax.axhline(acc, color="gray", lw=0.8, ls=":", label="clean accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("ε (×1/255)" if nr.norm == "linf" else "ε (L2)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{NORM_LABEL[nr.norm]} robust accuracy vs ε", fontsize=10)
    ax.legend(fontsize=7)
    return figure_png(fig)


def _hist_png(nr, mp) -> bytes:
    fig, ax = new_figure(5.0, 3.2)
    fin = mp[torch.isfinite(mp)]
    scale = 255 if nr.norm == "linf" else 1
    if len(fin):
        ax.hist((fin * scale).numpy(), bins=20, color="C2", edgecolor="black")
    for e in nr.eps:
        ax.axvline(e * scale, color="gray", lw=0.5, ls=":")
    ax.set_xlabel("smallest perturbation (×1/255)" if nr.norm == "linf" else "smallest perturbation (L2)")
    ax.set_ylabel("samples")
    ax.set_title(f"{NORM_LABEL[nr.norm]}: {len(fin)} of {len(mp)} fooled; dotted lines: ε grid", fontsize=9)
    return figure_png(fig)


def _examples(eng, nr):
    n = eng.o.examples
    gi = (nr.adv_k < nr.K).nonzero().flatten()
    if n == 0 or len(gi) == 0:
        return None
    # smallest fooling ε first, one per class before repeating a class
    order = gi[torch.argsort(nr.min_pert[gi])]
    seen, pick = set(), []
    for i in order.tolist():
        if int(eng.y[i]) not in seen:
            pick.append(i)
            seen.add(int(eng.y[i]))
    pick += [i for i in order.tolist() if i not in pick]
    pick = pick[:n]
    names = eng.model.class_names
    probs_adv = nr.adv_logits[pick].softmax(1)
    imgs, caps = [], []
    for j, i in enumerate(pick):
        x, xa = eng.x[i], nr.adv[i]
        d = xa - x
        amp = 0.5 / max(float(d.abs().max()), 1e-8)
        y = int(eng.y[i])
        pa = int(probs_adv[j].argmax())
        before = f"{names[y]} {float(eng.clean_probs[i, y]):.1%}"
        after = f"{names[pa]} {float(probs_adv[j, pa]):.1%}"
        imgs += [x, (0.5 + d * amp).clamp(0, 1), xa]
        caps += [before, f"{NORM_LABEL[nr.norm]} {fmt_eps(float(core.norm_of(d[None], nr.norm)), nr.norm)} ×{amp:.0f}",
                 f"{before} → {after}"]
    return image_grid(imgs, caps, cols=3, cell=2.1)


def _publish(eng, nr) -> bool:
    gi = (nr.adv_k < nr.K).nonzero().flatten()
    if len(gi) == 0:
        return False
    eng.ctx.publish("adversarial.examples", AdversarialExamples(
        x=eng.x[gi].clone(), x_adv=nr.adv[gi].clone(), y=eng.y[gi].clone(),
        pred_adv=nr.adv_logits[gi].argmax(1), norm=nr.norm,
        epsilon=torch.tensor([nr.eps[k] for k in nr.adv_k[gi].tolist()]),
        ids=[eng.ids[i] for i in gi.tolist()]))
    return True
