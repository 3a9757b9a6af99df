"""The images of the ``adversarial`` check, per norm: robust accuracy vs ε
(``curve_<norm>.png``), the minimal-perturbation histogram (``min_perturbation_<norm>.png``)
and the example panels (``examples_<norm>.png``: original | amplified perturbation |
adversarial). They read the merged records and compute no metric."""
from __future__ import annotations

import torch

from audit.imaging import figure_png, image_grid, new_figure, short
from audit.results import CheckResult

from .engine import NormRecord
from .plan import Plan
from .threat import NORM_LABEL, fmt_eps, norm_of

__all__ = ["add_images", "curve_png", "hist_png", "examples_png"]

#: curve -> (colour, line style, width); other attacks get a default
STYLE = {"fgsm": ("C1", "-", 1.2), "pgd": ("C0", "-", 1.2), "fmn": ("C2", "-", 1.2), "square": ("C4", "-", 1.2),
         "apgd_ce": ("C6", "-", 1.2), "apgd_dlr": ("C8", "-", 1.2), "apgd_t": ("C9", "-", 1.2),
         "noise": ("gray", "--", 1.2), "worst": ("black", "-", 2.4), "gradient": ("C3", ":", 1.2),
         "gradient+square": ("C4", "-.", 1.2)}


def add_images(res: CheckResult, plan: Plan, nr: NormRecord, cur: dict[str, list[float]], acc: float,
               examples: int, class_names: list[str]) -> None:
    """The three images of one norm (the histogram only with attacked samples, the examples
    only with adversarials and ``examples`` > 0)."""
    label = NORM_LABEL[nr.norm]
    res.image(f"curve_{nr.norm}.png", curve_png(nr, cur, acc),
              f"{label} robust accuracy vs ε: every attack, the per-sample worst case and the "
              f"random-noise baseline (n={plan.n})")
    mp = nr.min_pert[plan.attacked]
    if len(mp):
        res.image(f"min_perturbation_{nr.norm}.png", hist_png(nr, mp),
                  f"Smallest {label} adversarial perturbation found per sample")
    ex = examples_png(plan, nr, examples, class_names)
    if ex is not None:
        res.image(f"examples_{nr.norm}.png", ex,
                  f"original | perturbation (amplified) | adversarial, {label}; "
                  "true label and confidence → prediction and confidence")


def curve_png(nr: NormRecord, cur: dict[str, list[float]], acc: float) -> bytes:
    """Robust accuracy (y) vs ε (x, log scale; L∞ in 1/255) for every curve, with the clean
    accuracy ``acc`` as a dotted line."""
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


def hist_png(nr: NormRecord, mp: torch.Tensor) -> bytes:
    """Histogram of the finite minimal perturbations ``mp`` (m,) with the ε grid dotted."""
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


def _pick(plan: Plan, nr: NormRecord, n: int) -> list[int]:
    """Up to ``n`` fooled samples, smallest perturbation first, one per class before repeating one."""
    gi = (nr.adv_k < nr.K).nonzero().flatten()
    order = gi[torch.argsort(nr.min_pert[gi])].tolist()
    seen, pick = set(), []
    for i in order:
        if int(plan.y[i]) not in seen:
            pick.append(i)
            seen.add(int(plan.y[i]))
    pick += [i for i in order if i not in pick]
    return pick[:n]


def examples_png(plan: Plan, nr: NormRecord, n: int, class_names: list[str]) -> bytes | None:
    """Rows "original | perturbation (amplified) | adversarial" for up to ``n`` samples,
    captioned with the true class and its confidence → prediction and its confidence; None
    when ``n`` is 0 or nothing was fooled."""
    if n == 0 or not bool((nr.adv_k < nr.K).any()):
        return None
    pick = _pick(plan, nr, n)
    probs_adv = nr.adv_logits[pick].softmax(1)
    imgs, caps = [], []
    for j, i in enumerate(pick):
        x, xa = plan.x[i], nr.adv[i]
        d = xa - x
        amp = 0.5 / max(float(d.abs().max()), 1e-8)
        y = int(plan.y[i])
        pa = int(probs_adv[j].argmax())
        before = f"{short(class_names[y])} {float(plan.clean_probs[i, y]):.1%}"
        after = f"{short(class_names[pa])} {float(probs_adv[j, pa]):.1%}"
        imgs += [x, (0.5 + d * amp).clamp(0, 1), xa]
        caps += [before, f"{NORM_LABEL[nr.norm]} {fmt_eps(float(norm_of(d[None], nr.norm)), nr.norm)} ×{amp:.0f}",
                 f"{before} → {after}"]
    return image_grid(imgs, caps, cols=3, cell=2.1)
