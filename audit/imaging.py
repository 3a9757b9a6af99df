"""Image encoding and plotting shared by all checks: tensors to PNG bytes, captioned grids,
matplotlib figures to PNG. One place, imported by every check (DESIGN: shared math lives once).

Figure text comes from users (class names, concept and layer names), so :func:`figure_png`
renders every text of a figure literally (``$`` is never math text: "$5 bill" does not
crash matplotlib's math parser) and shortens every line to :data:`FIGURE_LINE_CHARS`
characters (a 10 KB class name does not make a gigapixel figure); :func:`short` is the one
shortening rule, which figures also use for names (:data:`NAME_CHARS`). Results and the
HTML report keep names whole."""
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


#: a name printed in a figure (tick label, caption) is cut to this many characters
NAME_CHARS = 40
#: no line of figure text is longer than this (titles and captions included)
FIGURE_LINE_CHARS = 100


def short(text: str, limit: int = NAME_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis when longer: how a
    name is printed in a figure."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "\u2026"


def _literal_text(fig) -> None:
    """Every text of ``fig`` literal (never math text) and no line over :data:`FIGURE_LINE_CHARS`."""
    from matplotlib.text import Text
    from matplotlib.ticker import LogFormatter, LogFormatterMathtext

    for ax in fig.axes:  # log axes label their ticks in math text ($10^{0}$): plain numbers instead
        for axis in (ax.xaxis, ax.yaxis):
            if isinstance(axis.get_major_formatter(), LogFormatterMathtext):
                axis.set_major_formatter(LogFormatter(labelOnlyBase=True))
            if isinstance(axis.get_minor_formatter(), LogFormatterMathtext):
                axis.set_minor_formatter(LogFormatter(labelOnlyBase=True))
    for t in fig.findobj(Text):
        t.set_parse_math(False)
        s = t.get_text()
        if any(len(ln) > FIGURE_LINE_CHARS for ln in s.splitlines()):
            t.set_text("\n".join(short(ln, FIGURE_LINE_CHARS) for ln in s.splitlines()))


def figure_png(fig, *, dpi: int = 100, tight_layout: bool = False) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it. Its text is literal and its lines
    shortened first (the module's docstring); ``tight_layout`` lays the subplots out then."""
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        with matplotlib.rc_context({"text.parse_math": False}):  # tick labels made while drawing, too
            _literal_text(fig)
            if tight_layout:
                fig.tight_layout()
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
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
    return figure_png(fig, tight_layout=True)
