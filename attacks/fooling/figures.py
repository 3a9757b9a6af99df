"""The ``fooling`` check's images: a gallery per method, the garbage-in confidence plot and
the most confident garbage inputs. Every function returns PNG bytes."""
from __future__ import annotations

import math
import statistics

import torch

from audit.imaging import figure_png, image_grid, new_figure, short

from .search import SearchResult

__all__ = ["pct", "gallery_png", "garbage_plot", "garbage_examples_png"]


def pct(p: float) -> str:
    """A confidence as a percentage, truncated (never rounded up) to the first digit that
    shows how far from 100% it is: 97.3%, 99.96%, >=99.9999%."""
    for d in (1, 2, 3):
        if p < 1 - 10 ** -(d + 2):
            return f"{math.floor(p * 10 ** (d + 2)) / 10**d:.{d}f}%"
    return f"{math.floor(p * 1e6) / 1e4:.4f}%" if p < 1 - 1e-6 else "≥99.9999%"


def gallery_png(r: SearchResult, names: list[str], label: str, shown: list[int], threshold: float) -> bytes:
    """The images ``shown`` (positions in ``r.targets``) captioned with the target, the
    predicted class and its confidence; ``label`` names the method and its cost."""
    fooled = sum(c >= threshold for c in r.best)
    caps = [f"target {short(names[r.targets[i]])}\n→ {short(names[r.pred[i]])} {pct(r.pred_conf[i])}" for i in shown]
    cols = min(10, max(3, math.ceil(math.sqrt(1.5 * len(shown)))))
    return image_grid([r.images[i] for i in shown], caps, cols=cols,
                      title=f"Fooling images ({label}): {fooled}/{len(r.targets)} classes at ≥ {threshold:g}")


def garbage_plot(rows: list[dict], *, title: str = "Max-softmax confidence on garbage inputs") -> bytes:
    """A box plot of max-softmax confidence per input kind over a table of the shares above
    0.9 and 0.99 and the class the kind is most often given. ``rows``: dicts with ``kind``,
    ``conf`` (list), ``share_90``, ``share_99``, ``top_class``, ``top_share``."""
    fig, ax = new_figure(8.0, 4.6)
    kinds = [r["kind"] for r in rows]
    data = [r["conf"] for r in rows]
    ax.boxplot(data, showfliers=False, widths=0.5)
    for i, d in enumerate(data, start=1):
        jitter = [i + 0.12 * ((j * 0.618) % 1 - 0.5) for j in range(len(d))]
        ax.scatter(jitter, d, s=9, alpha=0.6, color="tab:red", zorder=3)
    ax.axhline(0.99, color="gray", ls="--", lw=0.8)
    ax.axhline(0.9, color="gray", ls=":", lw=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("max-softmax confidence")
    ax.set_xticks(range(1, len(kinds) + 1))
    ax.set_xticklabels([])
    ax.set_title(title, fontsize=10)
    cells = [[f"{len(r['conf'])}", f"{statistics.median(r['conf']):.3f}", f"{r['share_90']:.0%}", f"{r['share_99']:.0%}",
              f"{r['top_class']} ({r['top_share']:.0%})"] for r in rows]
    table = ax.table(cellText=list(map(list, zip(*cells))), rowLabels=["n", "median", "≥ 0.9", "≥ 0.99", "top class"],
                     colLabels=kinds, cellLoc="center", bbox=[0.0, -0.6, 1.0, 0.52])
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    return figure_png(fig)


def garbage_examples_png(examples: list[torch.Tensor], captions: list[str]) -> bytes:
    """The most confidently classified input of each garbage kind, captioned."""
    return image_grid(examples, captions, cols=min(4, len(examples)))
