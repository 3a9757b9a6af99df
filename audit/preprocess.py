"""The evaluation preprocessing that fits an image of another size to the model's input.

Two modes (:data:`MODES`), as the model zoos define them:

- ``stretch``: resize to H x W, ignoring the aspect ratio (the default when neither the model
  nor a flag says otherwise, and what ``--resize`` did before these options existed);
- ``shorter-crop``: resize the shorter side to ``floor(H / crop_pct)`` keeping the aspect
  ratio, then center-crop H x W (torchvision's weights ``transforms()``: ``resize_size`` and
  ``crop_size``, ``crop_pct = crop_size / resize_size``; timm's ``crop_pct``; a Hugging Face
  image processor's ``shortest_edge`` and ``crop_size``). A non-square H x W is resized to
  ``(floor(H / crop_pct), floor(W / crop_pct))`` first, as timm does.

Both use ``torchvision.transforms.v2`` (``Resize`` with antialiasing, ``CenterCrop``) with the
model's interpolation. 8-bit images are resized as PIL images, as torchvision's, timm's and
Hugging Face's own pipelines do; 16-bit and float images and tensor files as float tensors,
where only ``bilinear``, ``bicubic`` and ``nearest`` exist.

Each setting comes from the first source that has it: the flags (``--resize-mode``,
``--crop-pct``, ``--interpolation``), the model's spec (:class:`~audit.model.spec.ModelSpec`
``resize_mode`` / ``crop_pct`` / ``interpolation``, set from torchvision weights, timm or a
Hugging Face processor), the defaults (stretch, :data:`DEFAULT_CROP_PCT`, bilinear).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DataError, UsageError

if TYPE_CHECKING:  # torch and torchvision are imported when an image is resized (the CLI parser imports this)
    import torch

__all__ = ["MODES", "INTERPOLATIONS", "DEFAULT_CROP_PCT", "Preprocess", "resolve_preprocess"]

MODES = ("stretch", "shorter-crop")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
#: the interpolations torchvision resizes float tensors with (the others are PIL's only)
TENSOR_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
#: ``shorter-crop`` without a known fraction: timm's default, torchvision's classic 224 of 256
DEFAULT_CROP_PCT = 0.875


@dataclass(frozen=True)
class Preprocess:
    """How an image whose size differs from the model's input (H, W) is fitted to it.

    ``mode`` in :data:`MODES`; ``crop_pct`` in (0, 1] (used by ``shorter-crop``);
    ``interpolation`` in :data:`INTERPOLATIONS`; ``origin``: where the settings came from, for
    the data note (e.g. ``"the model (weights)"``, ``"--resize-mode"``, ``"--resize"``)."""

    mode: str = "stretch"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    origin: str = "--resize"
    #: where an odd crop margin puts the crop: ``round`` (torchvision's ``CenterCrop``, timm) or
    #: ``floor`` (a transformers image processor's ``center_crop``: ``(h - H) // 2``)
    crop_offset: str = "round"

    def resize_size(self, size: tuple[int, int]) -> tuple[int, int] | int:
        """What ``Resize`` gets for an output of ``size`` (H, W): (H, W) to stretch; the shorter
        side's length (an int) for a square ``shorter-crop``; (H', W') for a non-square one."""
        h, w = (int(v) for v in size)
        if self.mode == "stretch":
            return (h, w)
        scaled = [int(math.floor(v / self.crop_pct + 1e-6)) for v in (h, w)]  # 224 / (224/232) is 232, not 231
        return scaled[0] if h == w else (scaled[0], scaled[1])

    def decode_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The smallest (H, W) the image must keep before resizing (a large photo may be
        reduced in 8-bit down to twice this while it is decoded)."""
        r = self.resize_size(size)
        return (r, r) if isinstance(r, int) else r

    def _transform(self, size: tuple[int, int]):
        from torchvision.transforms import v2

        mode = v2.InterpolationMode(self.interpolation)
        steps = [v2.Resize(self.resize_size(size), interpolation=mode, antialias=True)]
        if self.mode == "shorter-crop":
            crop = [int(size[0]), int(size[1])]
            steps.append(v2.CenterCrop(crop) if self.crop_offset == "round" else _FloorCrop(*crop))
        return v2.Compose(steps)

    def apply_pil(self, im, size: tuple[int, int]):
        """The 8-bit PIL image ``im`` fitted to ``size`` (H, W): a PIL image."""
        return self._transform(size)(im)

    def apply_tensor(self, x: torch.Tensor, size: tuple[int, int], where: str = "") -> torch.Tensor:
        """Float images ``x`` (..., C, h, w) in [0, 1] fitted to ``size`` (H, W), clamped to
        [0, 1] (bicubic overshoots). Raises :class:`DataError` for an interpolation that only
        PIL has (lanczos, box, hamming), naming ``--interpolation bicubic``."""
        if self.interpolation not in TENSOR_INTERPOLATIONS:
            raise DataError(f"{where}{': ' if where else ''}{self.interpolation} interpolation resizes 8-bit image "
                            f"files only, not float or 16-bit images; pass --interpolation bicubic (or bilinear)")
        return self._transform(size)(x.float()).clamp(0, 1)

    def describe(self, size: tuple[int, int]) -> str:
        """What is done to an image, in words, e.g. ``shorter side resized to 256, center-cropped
        to 224x224 (crop_pct 0.875, bilinear)``."""
        h, w = (int(v) for v in size)
        if self.mode == "stretch":
            return f"stretched to {h}x{w} ({self.interpolation}, aspect ratio not kept)"
        r = self.resize_size(size)
        first = f"shorter side resized to {r}" if isinstance(r, int) else f"resized to {r[0]}x{r[1]}"
        floor = ", crop offset rounded down as transformers does" if self.crop_offset == "floor" else ""
        return f"{first}, center-cropped to {h}x{w} (crop_pct {self.crop_pct:.4g}, {self.interpolation}{floor})"

    def note(self, size: tuple[int, int], resized: int, total: int) -> str:
        """The data note: what was applied, where it came from, to how many images."""
        rest = f" (the others were already {int(size[0])}x{int(size[1])})" if resized < total else ""
        return f"preprocessing: {self.describe(size)}, from {self.origin}; applied to {resized} of {total} images{rest}"


class _FloorCrop:
    """A center crop to (H, W) whose offsets are ``(h - H) // 2`` and ``(w - W) // 2``, as
    transformers' image processors take them (torchvision rounds half a pixel up)."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w

    def __call__(self, img):
        from torchvision.transforms.v2 import functional as F

        ih, iw = F.get_size(img)
        return F.crop(img, max(0, (ih - self.h) // 2), max(0, (iw - self.w) // 2), self.h, self.w)


def _check(mode, crop_pct, interpolation, model: bool = False) -> None:
    """Raise :class:`UsageError` for a value out of range: a flag's names the flag; the
    model's (``model``) names the flag that overrides it."""
    def bad(flag: str, value, expected: str, fix: str) -> UsageError:
        if model:
            return UsageError(f"the model's {flag[2:]} {value!r} is not {expected}; pass {flag} {fix}")
        return UsageError(f"{flag} {value!r} is not {expected}")

    if mode is not None and mode not in MODES:
        raise bad("--resize-mode", mode, f"one of {', '.join(MODES)}", "stretch")
    if crop_pct is not None and (isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float))
                                 or not 0 < crop_pct <= 1):
        raise bad("--crop-pct", crop_pct, "a fraction in (0, 1], e.g. 0.875 (224 of 256)", str(DEFAULT_CROP_PCT))
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise bad("--interpolation", interpolation, f"one of {', '.join(INTERPOLATIONS)}", "bilinear")


def resolve_preprocess(spec=None, *, resize: bool = False, resize_mode: str | None = None,
                       crop_pct: float | None = None, interpolation: str | None = None) -> Preprocess | None:
    """The :class:`Preprocess` for images of another size than the model's input, or None when
    such an image is refused (no ``resize``, no flag, and a ``spec`` (a ModelSpec or None) that
    declares no ``resize_mode``). A flag (``resize_mode``, ``crop_pct``, ``interpolation``)
    beats the spec, which beats the defaults; ``crop_pct`` alone means ``shorter-crop``.
    Raises :class:`UsageError` for a value out of :data:`MODES` / (0, 1] /
    :data:`INTERPOLATIONS`, or ``crop_pct`` with ``resize_mode="stretch"``."""
    _check(resize_mode, crop_pct, interpolation)
    if resize_mode == "stretch" and crop_pct is not None:
        raise UsageError("--crop-pct applies to --resize-mode shorter-crop; drop --crop-pct or pass "
                         "--resize-mode shorter-crop")
    s_mode, s_pct, s_interp = (getattr(spec, k, None) for k in ("resize_mode", "crop_pct", "interpolation"))
    flags = [f for f, v in (("--resize-mode", resize_mode), ("--crop-pct", crop_pct),
                            ("--interpolation", interpolation)) if v is not None]
    if not (resize or flags or s_mode):
        return None
    mode = resize_mode or ("shorter-crop" if crop_pct is not None else None) or s_mode or "stretch"
    pct = crop_pct if crop_pct is not None else (s_pct if s_pct is not None else DEFAULT_CROP_PCT)
    interp = interpolation or s_interp or "bilinear"
    _check(mode, pct, interp, model=True)  # the flags were checked above: what is left is the model's
    sources = getattr(spec, "sources", {})
    declared = any(v is not None for v in (s_mode, s_pct, s_interp))
    src = sources.get("resize_mode") or sources.get("crop_pct") or sources.get("interpolation")
    model = f"the model ({src})" if src else "the model"
    origin = " and ".join(flags) + (f", the rest from {model}" if declared else "") if flags else (
        model if declared else "--resize (the model declares no preprocessing: the default stretch)")
    if mode == "shorter-crop" and crop_pct is None and s_pct is None:
        origin += f"; crop_pct is the default {DEFAULT_CROP_PCT}"
    hf = "hf config" in (sources.get("resize_mode"), sources.get("crop_pct")) and resize_mode is None \
        and crop_pct is None  # the processor's own crop, not one the flags made
    return Preprocess(mode, float(pct) if mode == "shorter-crop" else 1.0, interp, origin,
                      "floor" if hf else "round")
