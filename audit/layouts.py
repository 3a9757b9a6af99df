"""How data is laid out: array axes, split folders, channel counts.

- :func:`to_nchw`: a tensor file's ``x`` as (N, C, H, W), from channels-first, channels-last
  (N, H, W, C), gray (N, H, W) or a single image (H, W, C) / (C, H, W); anything else is refused
  naming the layouts that load.
- :func:`find_split`: a folder holding split folders (``train/``, ``val/``, ``test/``, ...) each of
  class folders is one level too high: the evaluation split is used, with a note.
- :func:`finalize_from_data`: a model whose input size comes from the data is probed with the
  data's shape and, when that fails, with the other channel counts: the model's count wins.
- :func:`convert_channels_tensor`: gray, RGB and RGBA converted into each other.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import DataError, InputShapeError, UsageError, first_line

CHANNELS = (1, 3, 4)
#: evaluation split folder names, in order of preference (case-insensitive)
EVAL_SPLITS = ("val", "validation", "valid", "test")
TRAIN_SPLITS = ("train", "training")
_LAYOUTS = "(N, C, H, W), (N, H, W, C), or (N, H, W) for gray images, C in 1, 3, 4"


def to_nchw(x: torch.Tensor, n_labels: int, channels: int | None, p: Path) -> tuple[torch.Tensor, str | None]:
    """``x`` as (N, C, H, W) and a note naming the layout when it was not that; ``channels``:
    the model's channel count when known (it settles a channels-last array). Raises
    :class:`DataError` naming the layouts that load."""
    shape = list(x.shape)
    if x.ndim == 3 and n_labels == 1 and x.shape[0] != 1:  # one image, with one label
        if x.shape[0] in CHANNELS and x.shape[0] != x.shape[2]:
            return x[None], f"x is one (C, H, W) image {shape}"
        if x.shape[2] in CHANNELS:
            return x.permute(2, 0, 1)[None].contiguous(), f"x is one channels-last (H, W, C) image {shape}: transposed"
    if x.ndim == 3:
        return x[:, None], None  # (N, H, W): gray
    if x.ndim != 4:
        raise DataError(f"{p}: x has shape {shape}; store the images as {_LAYOUTS}")
    a, c = int(x.shape[1]), int(x.shape[3])
    first = a == channels if channels else a in CHANNELS
    last = c == channels if channels else c in CHANNELS
    if first or (a in CHANNELS and not last):
        return x, None
    if last or c in CHANNELS:
        return (x.permute(0, 3, 1, 2).contiguous(),
                f"x is stored channels-last (N, H, W, C) {shape}: transposed to (N, C, H, W)")
    raise DataError(f"{p}: x has shape {shape}, which is neither (N, C, H, W) nor (N, H, W, C) with C in 1, 3, 4; "
                    f"store the images as {_LAYOUTS}")


def find_split(p: Path) -> tuple[Path, str | None]:
    """The folder to load for ``--data p``: ``p`` itself, or, when every subfolder of ``p`` is a
    split folder (train, val, ...) holding class folders, its evaluation split (val, validation,
    valid, test, in that order) and a note. Raises :class:`DataError` when only a training split
    is there, or the split folders hold images but no class folders."""
    subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = {d.name.lower(): d for d in subdirs}
    if not subdirs or not all(n in EVAL_SPLITS + TRAIN_SPLITS for n in names):
        return p, None
    listed = ", ".join(f"{d.name}/" for d in subdirs)
    if not any(c.is_dir() and not c.name.startswith(".") for d in subdirs for c in d.iterdir()):
        _no_classes(p, subdirs, listed)
    for s in EVAL_SPLITS:
        if s in names:
            d = names[s]
            others = [o for o in subdirs if o is not d]
            alt = f"; pass --data {others[0]} for another" if others else ""
            return d, f"{p} holds split folders ({listed}): the {d.name}/ split is evaluated{alt}"
    d = subdirs[0]
    raise DataError(f"data folder {p} holds only the training split folder {listed} and no val/ or test/; "
                    f"pass --data {d} to audit on it (accuracy on training data is optimistic)")


def _no_classes(p: Path, subdirs: list[Path], listed: str):
    d = next((s for n in EVAL_SPLITS for s in subdirs if s.name.lower() == n), subdirs[0])
    raise DataError(f"data folder {p} holds split folders ({listed}) with no class folders in them; put each "
                    f"split's images in one subfolder per class ({d}/<class>/) and pass --data {d}")


def _reset_shape(model) -> None:
    model.spec.input_shape = None
    model.spec.sources.pop("input_shape", None)


def _first_conv_channels(model) -> int | None:
    """The input channels of the network's first 4-D weight (a convolution), when it is 1, 3 or 4."""
    try:
        for t in model.net.parameters():
            if t.ndim == 4:
                return int(t.shape[1]) if int(t.shape[1]) in CHANNELS else None
    except Exception:  # noqa: BLE001 - a network without parameters(): probing alone decides
        pass
    return None


def finalize_from_data(model, shape: tuple[int, int, int]) -> str | None:
    """Finalize ``model`` (input size unknown) with the data's ``shape`` (C, H, W); when the
    model fails on it, the other channel counts (the first convolution's first) with the same
    H x W are probed, and the one that runs is the model's (source ``probe``); the note says so.
    Raises the data shape's :class:`UsageError`, naming ``--input-size`` and
    ``--convert-channels``, when no channel count runs; a refusal that is not about the input
    shape (batch dependence, NaN outputs, a class count that does not fit) propagates as it is,
    since no channel count would lift it."""
    try:
        model.finalize(tuple(shape), "data")
        return None
    except InputShapeError as e:  # another channel count may run; any other refusal is the model's own
        err = e
    c, h, w = (int(v) for v in shape)
    guess = _first_conv_channels(model)
    for c2 in ([guess] if guess and guess != c else []) + [k for k in (3, 1, 4) if k not in (c, guess)]:
        _reset_shape(model)
        try:
            model.finalize((c2, h, w), "probe")
        except InputShapeError:
            continue
        return f"the model takes {c2} channel(s), found by probing it (the data has {c})"
    _reset_shape(model)
    raise UsageError(f"{first_line(err)} (it fails on {', '.join(map(str, CHANNELS))} channels at {h}x{w} too); "
                     "pass --input-size CxHxW with the model's input shape, with --resize / --convert-channels "
                     "to fit the images to it") from None


def convert_channels_tensor(x: torch.Tensor, c: int) -> torch.Tensor:
    """(N, C, H, W) to ``c`` channels: gray -> RGB by repetition; RGB -> gray by ITU-R 601 luma;
    RGBA -> RGB / gray drops the alpha; gray / RGB -> RGBA adds an opaque alpha."""
    have = int(x.shape[1])
    if have == c:
        return x
    if have not in CHANNELS or c not in CHANNELS:
        raise DataError(f"cannot convert {have} channels to {c}: --convert-channels converts between 1 (gray), "
                        "3 (RGB) and 4 (RGBA) channels; store the images with the model's channel count")
    if have == 4:
        return convert_channels_tensor(x[:, :3], c)
    if c == 4:
        return torch.cat([convert_channels_tensor(x, 3), torch.ones_like(x[:, :1])], 1)
    if c == 3:
        return x.repeat(1, 3, 1, 1)
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)
