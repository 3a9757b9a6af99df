"""Pictures of the ``attribution`` check: maps blended over the images, the randomization
curves, the deletion/insertion curves and the pass/fail table (PNG bytes via audit.imaging).
Images are (N, C, H, W) in [0, 1], maps (N, H, W)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from audit.imaging import figure_png, new_figure
from audit.results import CheckResult

__all__ = ["add_figures", "maps_png", "randomization_png", "curves_png", "table_png", "heat", "blend"]


def add_figures(res: CheckResult, *, x: torch.Tensor, captions: list[str], methods: list, maps: dict[str, torch.Tensor],
                rand: dict, faith: dict, rows_per_image: int, threshold: float, note: str = "") -> None:
    """The check's pictures: ``maps_NN.png`` (``rows_per_image`` images each), then
    ``randomization.png``, ``deletion_insertion.png`` and ``summary_table.png`` when the tests
    ran (``rand``/``faith``: what :mod:`.summary` returned); ``note`` ends the maps' captions
    (e.g. Grad-CAM's layer)."""
    titles = [m.title for m in methods]
    for part, start in enumerate(range(0, len(x), rows_per_image)):
        rows = list(range(start, min(len(x), start + rows_per_image)))
        res.image(f"maps_{part + 1:02d}.png",
                  maps_png(x[rows], [maps[m.name][rows] for m in methods], [captions[i] for i in rows], titles),
                  f"attribution maps, images {rows[0] + 1}-{rows[-1] + 1} of {len(x)} "
                  "(caption: group: true -> predicted (confidence); maps explain the predicted class)" + note)
    if rand:
        res.image("randomization.png", randomization_png(rand["curves"], threshold),
                  "cascading parameter randomization (Adebayo et al. 2018): similarity of the maps to the trained "
                  "model's (mean of |Spearman| of |map|, |Spearman| of the signed map and SSIM), layers randomized "
                  "from the top down")
    if faith:
        res.image("deletion_insertion.png", curves_png(faith["curves"]),
                  "deletion (lower is better) and insertion (higher is better) curves (Petsiuk et al. 2018)")
    table = [(m.title, _with_interval(rand, m.name), rand.get("verdict", {}).get(m.name),
              faith.get("auc", {}).get(m.name), faith.get("beats", {}).get(m.name)) for m in methods]
    if table:
        res.image("summary_table.png", table_png(table, faith.get("auc", {}).get("random")),
                  "which methods passed the randomization and faithfulness tests")


def _with_interval(rand: dict, name: str) -> str | None:
    sim = rand.get("similarity", {}).get(name)
    if sim is None:
        return None
    lo, hi = rand.get("interval", {}).get(name, (None, None))
    return f"{sim:.2f}" + (f" [{lo:.2f}-{hi:.2f}]" if lo is not None else "")


def heat(m: torch.Tensor) -> np.ndarray:
    """|map| scaled to [0, 1] by its 99th percentile, (H, W)."""
    a = m.detach().abs().float()
    hi = float(torch.quantile(a.flatten(), 0.99)) if a.numel() > 1 else float(a.max())
    return (a / hi).clamp(0, 1).numpy() if hi > 0 else np.zeros(tuple(a.shape), dtype=np.float32)


def blend(img: torch.Tensor, m: torch.Tensor, alpha: float = 0.6) -> np.ndarray:
    """The map in the 'inferno' colormap laid over a dimmed gray version of the image, (H, W, 3)."""
    from matplotlib import colormaps

    h = heat(m)
    color = colormaps["inferno"](h)[..., :3]
    gray = img.detach().float().mean(0).numpy()[..., None].repeat(3, 2)
    return (1 - alpha) * gray + alpha * color


def maps_png(x: torch.Tensor, maps: Sequence[torch.Tensor], captions: Sequence[str], titles: Sequence[str]) -> bytes:
    """One row per image: the image, then each method's map blended over it. Drawn as one
    mosaic in a single axes (a grid of many axes is slow to render)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n, cols = len(x), 1 + len(maps)
    h, w = x.shape[-2:]
    pad = max(2, h // 16)
    cap = max(10, h // 3)  # room for the caption above each row
    H, W = n * (h + pad + cap) + cap, cols * (w + pad)
    mosaic = np.ones((H, W, 3), dtype=np.float32)
    for i in range(n):
        top = cap + i * (h + pad + cap) + cap
        img = x[i].detach().float().clamp(0, 1)
        img = img.permute(1, 2, 0).numpy()
        mosaic[top:top + h, 0:w] = img if img.shape[2] == 3 else img.repeat(3, 2)
        for j, mp in enumerate(maps):
            left = (j + 1) * (w + pad)
            mosaic[top:top + h, left:left + w] = blend(x[i], mp[i])
    scale = 1.7 / max(w + pad, 1)  # inches per pixel: a cell is about 1.7 inches wide
    fig = plt.figure(figsize=(W * scale, H * scale))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.axis("off")
    for j, t in enumerate(["image"] + list(titles)):
        ax.text(j * (w + pad) + w / 2, cap * 0.6, t, ha="center", va="center", fontsize=9, weight="bold")
    for i in range(n):
        ax.text(0, cap + i * (h + pad + cap) + cap * 0.55, captions[i], ha="left", va="center", fontsize=8)
    return figure_png(fig)


def randomization_png(curves: dict[str, list[tuple[str, float]]], threshold: float) -> bytes:
    """The similarity per cascade step (1 at 'trained'), one line per method."""
    fig, ax = new_figure(7, 4)
    labels = None
    for name, pts in curves.items():
        labels = ["trained"] + [layer for layer, _ in pts]
        ax.plot(range(len(labels)), [1.0] + [abs(v) for _, v in pts], marker="o", label=name)
    if labels:
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold (mean over steps) {threshold}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("similarity to the trained-model map")
    ax.set_xlabel("randomized down to layer (cascading from the top)")
    ax.legend(fontsize=7)
    return figure_png(fig)


def curves_png(curves: dict[str, tuple[list[float], list[float]]]) -> bytes:
    """Mean target-class probability vs fraction of pixels deleted / inserted."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, k, title in ((axes[0], 0, "deletion (lower is better)"), (axes[1], 1, "insertion (higher is better)")):
        for name, c in curves.items():
            ys = c[k]
            xs = np.linspace(0, 1, len(ys))
            ax.plot(xs, ys, label=name, ls="--" if name == "random" else "-", color="gray" if name == "random" else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(-0.02, 1.02)
    axes[1].legend(fontsize=7)
    return figure_png(fig, tight_layout=True)


def table_png(rows: Sequence[tuple], random_auc: tuple[float, float] | None) -> bytes:
    """A small table: method, randomization similarity (with its interval) and verdict (pass,
    FAIL, inconclusive), AUCs, beats random."""
    def f(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)

    cells = []
    for title, sim, verdict, aucs, beats in rows:
        cells.append([title, sim or "-", {"pass": "pass", "fail": "FAIL"}.get(verdict, verdict or "-"),
                      f(aucs[0] if aucs else None, "{:.3f}"), f(aucs[1] if aucs else None, "{:.3f}"),
                      "-" if beats is None else ("yes" if beats else "NO")])
    if random_auc:
        cells.append(["random order", "-", "-", f(random_auc[0], "{:.3f}"), f(random_auc[1], "{:.3f}"), "-"])
    fig, ax = new_figure(8, 0.45 * (len(cells) + 1) + 0.3)
    ax.axis("off")
    t = ax.table(cellText=cells, colLabels=["method", "rand. similarity", "randomization", "deletion AUC",
                                            "insertion AUC", "beats random"], loc="center", cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(8)
    t.auto_set_column_width(col=list(range(6)))
    for (r, c), cell in t.get_celld().items():
        if cell.get_text().get_text() in ("FAIL", "NO"):
            cell.set_facecolor("#f4c7c3")
        elif cell.get_text().get_text() in ("pass", "yes"):
            cell.set_facecolor("#cde8cd")
    return figure_png(fig)
