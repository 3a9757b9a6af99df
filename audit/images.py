"""Decoding image files into float tensors for :mod:`audit.data`: the pixel limit checked on
the header, the 8-bit reduction of large photos, gray / RGB / RGBA channels, high bit depth,
and the fitting of other sizes (:mod:`audit.preprocess`).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError, first_line
from .layouts import convert_channels_tensor
from .lazydata import LazyImages, float_bytes, should_be_lazy
from .preprocess import Preprocess
from .progress import Progress

__all__ = ["MAX_IMAGE_PIXELS", "decode_image", "image_channels", "image_tensor", "read_images", "first_image_shape"]


#: the most pixels a data image may have (PIL's own default); over it the image is refused,
#: before it is decoded, with one line naming the file (``AUDIT_MAX_IMAGE_PIXELS`` overrides)
MAX_IMAGE_PIXELS = 89_478_485


#: held while PIL's own pixel limit is lifted to read a header (PIL keeps it in a global)
_PIL_LIMIT = threading.Lock()


def decode_image(path, size: tuple[int, int] | None = None, name: str | None = None):
    """The decoded image of ``path`` (a file, or a function returning its bytes; ``name`` in
    messages, the path by default). Its header is read first: an image of more than
    :data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb, or a photo far larger than any
    model input) is a :class:`DataError` naming the file before any pixel is decoded. With a
    target ``size`` (H, W), an image at least twice as large each way is first reduced by an
    integer factor in its own 8-bit form (PIL's ``reduce``: a box filter; JPEGs decode at the
    reduced size via ``draft``), so decoding a large photo never holds it as float32.
    Raises :class:`DataError` for an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    import io

    limit = int(os.environ.get("AUDIT_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))
    src, path = (io.BytesIO(path()), name) if callable(path) else (path, name or path)
    try:
        with _PIL_LIMIT:  # decode threads (audit.lazydata) must not interleave the save and the restore
            pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the header only; checked below
            try:
                im = Image.open(src)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
        with im:
            if im.width * im.height > limit:
                raise DataError(f"{path} is {im.width}x{im.height} pixels, over the limit of {limit:,} for one image "
                                "(a decompression bomb or an oversized photo); downscale it, or raise "
                                "AUDIT_MAX_IMAGE_PIXELS if it is genuine")
            k = min(im.width // size[1], im.height // size[0]) // 2 if size else 0
            if k >= 2 and im.mode in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"):
                im.draft(im.mode, (im.width // k, im.height // k))  # JPEG: decode smaller; others: no-op
                im.load()
                k = min(im.width // size[1], im.height // size[0]) // 2
                return (im.reduce(k) if k >= 2 else im).copy()
            im.load()
            return im.copy()
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: {first_line(e)}; downscale it, or raise AUDIT_MAX_IMAGE_PIXELS if it is genuine") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path} is not a readable image ({e.__class__.__name__}); remove it or fix it") from None


GRAY_MODES = ("L", "LA", "1", "I", "F") + tuple(m for m in ("I;16", "I;16B", "I;16L", "I;16N"))


def image_channels(im, want: int | None = None) -> int:
    """1 (gray) or 3 (RGB; alpha dropped), or 4 when the model takes 4 and the image has alpha."""
    if want == 4 and (im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)):
        return 4
    return 1 if im.mode in GRAY_MODES else 3


def _gray_float(im) -> np.ndarray:
    """A high-bit-depth gray image (16-bit, int32 or float) scaled to [0, 1]."""
    a = np.asarray(im, dtype=np.float32)
    if im.mode.startswith("I;16") or (im.mode == "I" and a.max() > 255):
        return a / 65535.0
    if im.mode == "F" and a.max() <= 1.0:
        return np.clip(a, 0, 1)
    return np.clip(a / 255.0, 0, 1)


def image_tensor(im, channels: int | None, size: tuple[int, int] | None, path: Path, convert: bool,
               resize: Preprocess | bool | None, hint: str = "") -> torch.Tensor:
    """``im`` as float32 (C, H, W) in [0, 1]; an image of another size than ``size`` is fitted by
    ``resize`` (a :class:`Preprocess`; True: the default stretch) or refused naming --resize."""
    resize = Preprocess() if resize is True else (resize or None)
    c = image_channels(im, channels)
    if channels is not None and c != channels and not convert:
        raise DataError(f"{path} has {c} channel(s) but the model takes {channels}{hint}; "
                        f"pass --convert-channels to convert the images to {channels}")
    if size is not None and (im.height, im.width) != tuple(size) and not resize:
        raise DataError(f"{path} is {im.height}x{im.width} but the model takes {size[0]}x{size[1]}{hint}; "
                        "pass --resize to resize the images to the model's input size (--resize-mode shorter-crop "
                        "to resize the shorter side and center-crop)")
    fit = size is not None and (im.height, im.width) != tuple(size)
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        t = torch.from_numpy(_gray_float(im).copy())[None]  # keep the full bit depth
        t = resize.apply_tensor(t, size, str(path)) if fit else t
    else:
        im = im.convert({1: "L", 3: "RGB", 4: "RGBA"}[c])  # alpha is dropped for a 1- or 3-channel model
        im = resize.apply_pil(im, size) if fit else im  # 8-bit, as the model zoos' own pipelines resize
        arr = np.asarray(im, dtype=np.float32) / 255.0
        t = torch.from_numpy((arr[:, :, None] if arr.ndim == 2 else arr).copy()).permute(2, 0, 1)
    if channels is not None and c != channels:
        t = convert_channels_tensor(t[None], channels)[0]
    return t.contiguous()


def first_image_shape(src) -> tuple[int, int, int]:
    """(C, H, W) of the image at ``src`` (a file, or a function returning its bytes)."""
    im = decode_image(src)
    return (image_channels(im), im.height, im.width)


def read_images(items: list[tuple[str, Any]], input_shape, convert: bool, prep: Preprocess | None,
                progress: bool, hint: str, where: str = "", lazy: bool | None = None):
    """Decode (id, source) ``items`` into one (N, C, H, W) tensor fitted to ``input_shape`` (the
    first image sets it when None), and the notes (the size inferred, the preprocessing done).
    A set over :func:`~audit.lazydata.should_be_lazy`'s limit (or ``lazy=True``) is returned as
    a :class:`~audit.lazydata.LazyImages` instead: only the first image is decoded now."""
    notes: list[str] = []
    channels = int(input_shape[0]) if input_shape else None
    size = (int(input_shape[1]), int(input_shape[2])) if input_shape else None
    fitted = [0]

    def name_of(f, sid):
        return f if isinstance(f, Path) else f"{where} {sid}"

    def load(sid, f, hint):
        im = decode_image(f, prep.decode_size(size) if prep is not None and size else None, name_of(f, sid))
        fitted[0] += (im.height, im.width) != size
        return image_tensor(im, channels, size, name_of(f, sid), convert, prep, hint)

    first = None
    if size is None and items:  # no model to compare with: the first image sets the size
        sid, f = items[0]
        im = decode_image(f, None, name_of(f, sid))
        channels = channels or image_channels(im)
        size = (im.height, im.width)
        notes.append(f"input size {channels}x{size[0]}x{size[1]} inferred from {getattr(f, 'name', sid)}")
        hint = " (taken from the first image)"
        first = image_tensor(im, channels, size, name_of(f, sid), convert, prep, hint)  # at its own size: as load() gives
    if items and should_be_lazy(len(items), (channels, *size), lazy):
        x = LazyImages(len(items), (channels, *size), lambda i: load(*items[i], hint), lambda i: _key(items[i][1]))
        if first is None:
            x[0]  # the first image now: a mismatch is refused at load, not in the middle of a check
        notes.append(f"{len(items):,} images ({float_bytes(len(items), (channels, *size)) / 2**30:.1f} GiB as "
                     "float32) decoded on demand, batch by batch")
        if prep is not None:
            notes.append(f"preprocessing: {prep.describe(size)}, from {prep.origin}; applied as each image is "
                         f"decoded, to those not already {size[0]}x{size[1]}")
        return x, notes
    tensors = []
    bar = Progress(progress).units(len(items), "data: loading images", "image")
    for k, (sid, f) in enumerate(items):
        tensors.append(first if k == 0 and first is not None else load(sid, f, hint))
        bar.update(1)
    if prep is not None and size is not None and (fitted[0] or prep.mode == "shorter-crop"):
        notes.append(prep.note(size, fitted[0], len(items)))
    return torch.stack(tensors), notes


def _key(src) -> bytes:
    """What stands for an image's content in the resume hash: a file's path, size and
    modification time; the encoded bytes of an image held in a dataset."""
    if isinstance(src, Path):
        st = src.stat()
        return f"{src}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape")
    return bytes(src())
