"""Pictures of the ``bias`` check: a class's own visualization next to the concept it leans
on, the TCAV overview per class, and the counterfactual pairs per concept (PNG bytes via
audit.imaging). Images are (C, H, W) or (N, C, H, W) float32 in [0, 1]."""
from __future__ import annotations

import torch

from audit.imaging import figure_png, image_grid, new_figure, short, to_uint8_hwc
from audit.results import CheckResult

from .summary import Evidence, fmt_p

__all__ = ["add_figures", "tcav_png", "safe_name"]


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]


def add_figures(res: CheckResult, ev: Evidence, *, names: list[str], classes: list[int],
                concepts: dict[str, torch.Tensor], layers: list[str], viz, base: torch.Tensor, base_y: torch.Tensor,
                pasted: dict[str, torch.Tensor], min_score: float, examples: int) -> None:
    """``leans_<class>_<concept>.png`` (with ``viz``, :class:`audit.published.ClassVizImages`),
    ``tcav.png`` (when TCAV ran) and ``counterfactual_<concept>.png`` from ``pasted[concept]``
    (N_base, C, H, W), in that order."""
    if viz is not None:  # the class's own picture next to the concept it leans on: the story at a glance
        _leans(res, ev, names, concepts, viz)
    if ev.tcav:
        res.image("tcav.png", tcav_png(names, classes, list(concepts), layers, ev, viz),
                  "Per class: its class visualization (when class_viz ran), TCAV scores per concept and layer "
                  "(bars: mean over runs, whiskers: std; grey tick: random-vs-random mean; * differs from "
                  f"random at p < {ev.alpha_eff:.2g}, in either direction), and the concepts it leans on. A class "
                  f"depends on a concept only when its score is significantly high (>= {min_score:g}) "
                  "and pasting the concept flips other images to it; a significantly low score means the "
                  "concept pushes away from the class.")
    for c in concepts:
        _counterfactual(res, ev, c, names, classes, base, base_y, pasted[c], examples)


def _leans(res: CheckResult, ev: Evidence, names, concepts, viz) -> None:
    vcls = torch.as_tensor(viz.classes)
    for k, lst in ev.leans.items():
        mine = viz.images[vcls == k]
        for c, *_ in lst:
            if not len(mine):
                continue
            ex = concepts[c][:max(1, 6 - len(mine))]
            ims = [*mine, *ex]
            caps = [f"model's picture of {short(names[k])!r}"] * len(mine) + [f"{short(c)!r} example"] * len(ex)
            res.image(f"leans_{safe_name(names[k])}_{safe_name(c)}.png",
                      image_grid(ims, caps, cols=len(ims), cell=2.6),
                      f"Left: what the model draws when asked for {names[k]!r} (class_viz, activation "
                      f"maximization). Right: examples of the concept {c!r} that {names[k]!r} depends on "
                      "(see the finding). Shapes and colours the two share are what the class has learned "
                      "from the concept.")


def _counterfactual(res: CheckResult, ev: Evidence, c: str, names, classes, base, base_y, pasted, examples) -> None:
    pred = ev.preds[c]
    target = next((k for k, lst in ev.leans.items() if any(e[0] == c for e in lst)), None)
    if target is None:
        target = max(classes, key=lambda k: ev.flips[k, c]["flip"])
    sel = ((pred == target) & (base_y != target)).nonzero().flatten()
    rest = ((pred != target) & (base_y != target)).nonzero().flatten()
    sel = torch.cat([sel, rest])[:examples]
    ims, caps = [], []
    for i in sel.tolist():
        ims += [base[i], pasted[i]]
        caps += [f"{names[int(base_y[i])]}", f"+ {c} -> {names[int(pred[i])]}"]
    if ims:
        f = ev.flips[target, c]
        res.image(f"counterfactual_{safe_name(c)}.png", image_grid(ims, caps, cols=8, cell=1.5),
                  f"Counterfactual insertion of {c!r}: each pair is a correctly classified image and the same "
                  f"image with a {c!r} example pasted in, with the model's new prediction. Flip rate to "
                  f"{names[target]!r}: {f['flip']:.0%} (random pastes {f['control']:.0%}).")


def tcav_png(names, classes, concepts: list[str], layers, ev: Evidence, viz) -> bytes:
    """One row per class (flagged first, up to 12): its class visualization, TCAV bars per
    concept and layer, and the concepts it leans on with their numbers."""
    shown = sorted(classes, key=lambda k: (k not in ev.leans, k))[:12]
    rows = len(shown)
    fig, _ = new_figure(10.0, 1.6 * rows + 0.6)
    fig.clf()
    gs = fig.add_gridspec(rows, 3, width_ratios=[1.35, 3.0, 3.0], wspace=0.5, hspace=0.45)
    vcls = torch.as_tensor(viz.classes) if viz is not None else None
    for r, k in enumerate(shown):
        _picture(fig.add_subplot(gs[r, 0]), short(names[k]), viz, vcls, k)
        _bars(fig.add_subplot(gs[r, 1]), ev, k, concepts, layers, first=r == 0, last=r == rows - 1)
        _leans_text(fig.add_subplot(gs[r, 2]), ev, k, concepts)
    return figure_png(fig)


def _picture(ax, title, viz, vcls, k) -> None:
    ax.axis("off")
    if vcls is not None and (vcls == k).any():
        j = int((vcls == k).nonzero()[0])
        a = to_uint8_hwc(viz.images[j])
        ax.imshow(a[:, :, 0] if a.shape[2] == 1 else a, cmap="gray" if a.shape[2] == 1 else None)
    else:
        ax.text(0.5, 0.5, "(no class_viz)", ha="center", va="center", fontsize=7, color="grey")
    ax.set_title(title, fontsize=8, loc="left")


_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]


def _bars(ax, ev: Evidence, k, concepts, layers, *, first: bool, last: bool) -> None:
    bars = [(c, ln) for c in concepts for ln in layers]
    for i, (c, ln) in enumerate(bars):
        t = ev.tcav.get((k, c, ln))
        if t is None:
            continue
        ax.barh(i, t.mean, xerr=t.std, color=_COLORS[concepts.index(c) % len(_COLORS)],
                alpha=1.0 if ev.significant(t) else 0.45, height=0.7)
        null = sum(t.null) / len(t.null)
        ax.plot([null, null], [i - 0.4, i + 0.4], color="grey", lw=2)
        mark = "*" if ev.significant(t) else ("ns" if ev.cav_ok(t) else "CAV at chance,")
        ax.text(min(t.mean + t.std + 0.02, 1.0), i, f"{mark} p={fmt_p(t.p)}", va="center", fontsize=6)
    ax.set_xlim(0, 1.25)
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([short(ln) if len(concepts) == 1 else f"{short(c)} @ {short(ln)}" for c, ln in bars], fontsize=6)
    if first:
        ax.set_title("TCAV score" + (f" for {short(concepts[0])!r}" if len(concepts) == 1 else "") + " per layer", fontsize=7)
    ax.axvline(0.5, color="lightgrey", lw=0.5, ls="--")
    ax.tick_params(axis="x", labelsize=6)
    if last:
        ax.set_xlabel("TCAV score", fontsize=7)


def _leans_text(ax, ev: Evidence, k, concepts) -> None:
    ax.axis("off")
    lines = []
    for c, ln, t, f in ev.leans.get(k, []):
        s = short(c)
        lines.append(f"LEANS ON {s}: TCAV {t.mean:.2f} (p {fmt_p(t.p)})" if t is not None else
                     f"LEANS ON {s}: counterfactual only (TCAV not tested)")
        lines.append(f"  pasting {s} flips {f['flip']:.0%} of others (random {f['control']:.0%})")
        vs = ev.viz.get((k, c, ln))
        if vs is not None:
            lines.append(f"  picture along {s}: cos {vs[0]:.2f}")
            lines.append(f"  (other pictures {vs[1]:.2f}, {s} examples {vs[2]:.2f})")
    if not lines:
        best = max(concepts, key=lambda c: ev.flips[k, c]["flip"]) if concepts else None
        lines.append("no concept dependence" if ev.tcav else "no flip effect (TCAV not tested)")
        if best is not None:
            lines.append(f"  flip by {short(best)}: {ev.flips[k, best]['flip']:.0%} (random {ev.flips[k, best]['control']:.0%})")
    ax.text(0.02, 0.5, "\n".join(lines), va="center", fontsize=7, color="#b00020" if k in ev.leans else "black",
            family="monospace")
