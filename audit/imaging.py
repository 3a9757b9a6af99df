"""Image encoding and plotting shared by all checks: tensors to PNG bytes, captioned grids,
matplotlib figures to PNG. One place, imported by every check (DESIGN: shared math lives once)."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch


def to_uint8_hwc(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W, C) or (H, W) in [0, 1] -> uint8 (H, W, C)."""
    a = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[:, :, None]
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def png_bytes(img: torch.Tensor | np.ndarray, *, scale: int = 1) -> bytes:
    """Encode one image in [0, 1] as PNG (nearest-neighbour upscaled by ``scale``)."""
    from PIL import Image

    a = to_uint8_hwc(img)
    im = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def figure_png(fig, *, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def new_figure(width: float = 6.0, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def image_grid(images: Sequence[torch.Tensor | np.ndarray], captions: Sequence[str], *, cols: int = 6,
               cell: float = 1.9, title: str | None = None) -> bytes:
    """A captioned grid of images as PNG bytes (for galleries and example panels)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * (cell + 0.45)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            a = to_uint8_hwc(images[i])
            ax.imshow(a[:, :, 0] if a.shape[2] == 1 else a, cmap="gray" if a.shape[2] == 1 else None,
                      vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(captions[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_png(fig)
