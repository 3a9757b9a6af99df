"""The ``class_viz`` check's images: the class gallery and the channel gallery (PNG bytes)."""
from __future__ import annotations

import math

import torch

from audit.imaging import image_grid, short

__all__ = ["class_caption", "gallery_png", "channel_caption", "channels_png"]


def class_caption(name: str, seed: int, seeds: int, top3: list[list]) -> str:
    """``class (#seed): top NAME P`` over the runners-up; ``top3``: [[name, p], ...]."""
    head = short(name) if seeds == 1 else f"{short(name)} #{seed}"
    rest = " · ".join(f"{short(a)} {p:.2f}" for a, p in top3[1:])
    return f"{head}: top {short(top3[0][0])} {top3[0][1]:.2f}" + (f"\n{rest}" if rest else "")


def gallery_png(pictures: torch.Tensor, captions: list[str], *, seeds: int, image_hw: tuple[int, int]) -> bytes:
    """One picture per class and seed (``pictures``: (K, C, h, w) in [0, 1]), a row per
    class when ``seeds > 1``; the cell grows with the picture size."""
    disp = max(1, round(160 / max(image_hw)))
    cols = seeds if seeds > 1 else min(8, math.ceil(math.sqrt(len(pictures))))
    return image_grid(list(pictures), captions, cols=cols, cell=max(1.9, min(3.0, max(image_hw) * disp / 60)),
                      title="class visualizations (caption: class, then the model's top-3 on the picture)")


def channel_caption(layer: str, channel: int, activation: float, seen_as: str, p: float) -> str:
    return f"{short(layer)}:{channel} (act {activation:.2g})\nseen as {short(seen_as)} {p:.2f}"


def channels_png(pictures: torch.Tensor, captions: list[str], layer: str) -> bytes:
    """One picture per visualized channel of ``layer``."""
    cols = min(8, max(1, math.ceil(math.sqrt(len(pictures)))))
    return image_grid(list(pictures), captions, cols=cols, cell=2.2, title=f"channel visualizations at {layer}")
