"""Garbage-in confidence for the ``fooling`` check: how sure is the model on inputs that hold
no object at all? (Nguyen et al. 2015 show that classifiers give near-certain labels to
noise and simple patterns; Hendrycks & Gimpel 2017 use max-softmax as the baseline
out-of-distribution score.) Needs no data.

Input kinds (:data:`KINDS`): ``uniform_noise`` (every value uniform in the bounds),
``gaussian_noise`` (mid-gray plus N(0, 0.25) per value, clamped), ``black``, ``gray``,
``white`` (one constant image each), ``stripes`` (horizontal or vertical two-colour bars,
random period, phase and colours) and ``checkerboard`` (random cell size, phase, colours).
"""
from __future__ import annotations

import statistics

import torch

KINDS = ("uniform_noise", "gaussian_noise", "black", "gray", "white", "stripes", "checkerboard")
_CONSTANT = {"black": 0.0, "gray": 0.5, "white": 1.0}


def _two_colours(n: int, c: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Half black-and-white pairs, half random colours."""
    a = torch.rand(n, c, 1, 1, generator=gen)
    b = torch.rand(n, c, 1, 1, generator=gen)
    bw = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
    return a * (1 - bw), b * (1 - bw) + bw


def garbage_inputs(kind: str, n: int, shape: tuple[int, int, int], gen: torch.Generator,
                   bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``n`` images of ``kind`` (1 for the constant kinds) in ``bounds``, (N, C, H, W) on CPU."""
    c, h, w = shape
    lo, hi = bounds
    if kind in _CONSTANT:
        x = torch.full((1, c, h, w), _CONSTANT[kind])
    elif kind == "uniform_noise":
        x = torch.rand(n, c, h, w, generator=gen)
    elif kind == "gaussian_noise":
        x = (0.5 + 0.25 * torch.randn(n, c, h, w, generator=gen)).clamp(0, 1)
    elif kind in ("stripes", "checkerboard"):
        yy = torch.arange(h).view(1, h, 1)
        xx = torch.arange(w).view(1, 1, w)
        top = max(2, min(h, w) // (2 if kind == "stripes" else 4))
        size = torch.randint(1, top + 1, (n, 1, 1), generator=gen)
        phase = torch.randint(0, 2 * top, (n, 1, 1), generator=gen)
        if kind == "stripes":
            vertical = torch.rand(n, 1, 1, generator=gen) < 0.5
            coord = torch.where(vertical, xx.expand(n, h, w), yy.expand(n, h, w))
            m = ((coord + phase) // size) % 2
        else:
            m = (((yy + phase) // size) + ((xx + phase) // size)) % 2
        a, b = _two_colours(n, c, gen)
        x = torch.where(m.unsqueeze(1).bool(), a, b).expand(n, c, h, w).clone()
    else:
        raise ValueError(f"unknown garbage input kind {kind!r} (known: {', '.join(KINDS)})")
    return lo + (hi - lo) * x


def garbage_plot(rows: list[dict], *, title: str = "Max-softmax confidence on garbage inputs") -> bytes:
    """A box plot of max-softmax confidence per input kind over a table of the shares above
    0.9 and 0.99 and the class the kind is most often given. ``rows``: dicts with ``kind``,
    ``conf`` (list), ``share_90``, ``share_99``, ``top_class``, ``top_share``."""
    from audit.imaging import figure_png, new_figure

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

