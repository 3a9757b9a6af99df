"""Counterfactual concept insertion, the second kind of evidence of the ``bias`` check:
paste a concept's examples (by a foreground mask) onto correctly classified images and count
how many the model now assigns to each class, against a control that pastes random
counter-examples the same way, with an exact McNemar test on the paired outcomes.

Images are (N, C, H, W) float32 in [0, 1]; masks (N, 1, H, W) in [0, 1].
"""
from __future__ import annotations

import torch

__all__ = ["foreground_mask", "usable_exemplars", "pick_exemplars", "paste_at", "paste", "mcnemar_p", "flip_rates"]


def foreground_mask(img: torch.Tensor, *, lo: float = 0.12, hi: float = 0.25, border: int = 2) -> torch.Tensor:
    """Soft mask (N, 1, H, W) of what differs from each image's background, the background
    being a plane (per channel: a + b x + c y) fitted to the border pixels; specks thinner
    than 3 pixels are removed (a morphological opening) and the edge is softened. Suits
    concept examples shown on a plain or graded background."""
    n, c, h, w = img.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ring = torch.zeros(h, w, dtype=torch.bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    design = torch.stack([torch.ones(h, w), xx, yy], -1)           # (H, W, 3)
    pinv = torch.linalg.pinv(design[ring])                         # (3, B)
    coef = torch.einsum("kb,ncb->nck", pinv, img[:, :, ring])      # (N, C, 3)
    bg = torch.einsum("hwk,nck->nchw", design, coef)
    dist = (img - bg).abs().amax(1, keepdim=True)
    m = ((dist - lo) / (hi - lo)).clamp(0, 1)
    pool = torch.nn.functional.max_pool2d
    m = pool(-pool(-m, 3, stride=1, padding=1), 3, stride=1, padding=1)  # opening: erode, then dilate
    return torch.nn.functional.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)


def usable_exemplars(exemplars: torch.Tensor, *, min_area: float = 0.005, max_area: float = 0.4) -> torch.Tensor:
    """The exemplars whose foreground mask covers a sensible share of the image (a mask over
    most of the image means the background was not found; an empty one, nothing to paste).
    All of them when none qualifies."""
    area = foreground_mask(exemplars).mean((1, 2, 3))
    ok = (area >= min_area) & (area <= max_area)
    return exemplars[ok] if ok.any() else exemplars


def paste(base: torch.Tensor, exemplars: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random usable exemplar (by its :func:`foreground_mask`) onto each base image,
    at the same position. Returns (pasted images, the foreground masks used)."""
    ex = usable_exemplars(exemplars)
    return paste_at(base, ex[pick_exemplars(ex, len(base), generator)])


def pick_exemplars(usable: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Which of the ``usable`` exemplars goes onto each of ``n`` base images: (n,) int64 drawn
    from ``generator`` (the draw :func:`paste` makes)."""
    return torch.randint(0, len(usable), (n,), generator=generator)


def paste_at(base: torch.Tensor, ex: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste ``ex[i]`` (by its :func:`foreground_mask`) onto ``base[i]`` at the same position.
    Returns (pasted images, the masks used)."""
    m = foreground_mask(ex)
    return (base * (1 - m) + ex * m).clamp(0, 1), m


def mcnemar_p(only_concept: int, only_control: int) -> float:
    """Exact two-sided McNemar test: of the images where exactly one of the two pastes flipped
    the prediction, is the concept's share different from one half?"""
    from scipy import stats

    n = only_concept + only_control
    return 1.0 if n == 0 else float(stats.binomtest(only_concept, n, 0.5).pvalue)


def flip_rates(pred: torch.Tensor, ctrl_pred: torch.Tensor, base_y: torch.Tensor, k: int) -> dict:
    """Flip rate to class ``k`` among base images of other classes after pasting the concept
    (``pred``, (N,) int64) and the control (``ctrl_pred``); ``n`` such images and the exact
    McNemar p of the paired flips; ``flipped``/``control_flipped`` the counts. Rates are NaN
    when no image of another class was pasted."""
    other = base_y != k
    n = int(other.sum())
    a, b = pred[other] == k, ctrl_pred[other] == k
    fr = float(a.float().mean()) if n else float("nan")
    fc = float(b.float().mean()) if n else float("nan")
    return {"flip": fr, "control": fc, "n": n, "flipped": int(a.sum()), "control_flipped": int(b.sum()),
            "p": mcnemar_p(int((a & ~b).sum()), int((b & ~a).sum()))}
