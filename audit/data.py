"""Loading evaluation data: an ImageFolder-style directory or a tensor file.

Every check receives :class:`AuditData`: ``x`` float32 (N, C, H, W) in [0, 1] on the CPU,
``y`` int64 labels indexed like the model's outputs, and the class names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .classmap import choose_by_predictions, match_classes
from .errors import DataError, first_line
from .files import is_regular, regular_file, shown
from .layouts import convert_channels_tensor, finalize_from_data, find_split, to_nchw
from .progress import Progress

__all__ = ["AuditData", "load_data", "stratified_indices", "convert_channels_tensor"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass
class AuditData:
    """Images in [0, 1] with labels. ``ids`` name each sample (relative paths or indices)."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    ids: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)
    class_map: dict[str, int] = field(default_factory=dict)  # class folder name -> model index
    class_map_how: str = ""  # how the class map was chosen (the data note that says so)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "AuditData":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return AuditData(self.x[idx], self.y[idx], self.class_names, [self.ids[i] for i in idx.tolist()],
                         self.source, list(self.notes), dict(self.class_map), self.class_map_how)

    def describe(self) -> dict[str, Any]:
        counts = torch.bincount(self.y, minlength=len(self.class_names)).tolist() if len(self) else []
        d = {"source": self.source, "n": len(self), "input_shape": list(self.input_shape),
             "per_class": dict(zip(self.class_names, counts)), "notes": list(self.notes)}
        return {**d, "class_map": dict(self.class_map)} if self.class_map else d


def stratified_indices(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded subset of ``n`` indices with each class represented in proportion
    (at least one per present class while ``n`` allows), sorted."""
    if n >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(y)
    perms = {int(c): (y == c).nonzero().flatten()[torch.randperm(int((y == c).sum()), generator=g)] for c in classes}
    # largest-remainder allocation of n over classes
    sizes = np.array([len(perms[int(c)]) for c in classes], dtype=float)
    quota = sizes / sizes.sum() * n
    take = np.minimum(np.floor(quota).astype(int), sizes.astype(int))
    if n >= len(classes):
        take = np.maximum(take, 1)
    order = np.argsort(-(quota - np.floor(quota)))
    i = 0
    while take.sum() < n:
        c = order[i % len(order)]
        if take[c] < sizes[c]:
            take[c] += 1
        i += 1
    while take.sum() > n:
        c = int(np.argmax(take))
        take[c] -= 1
    chosen = torch.cat([perms[int(c)][:k] for c, k in zip(classes, take.tolist())])
    return torch.sort(chosen).values


#: the most pixels a data image may have (PIL's own default); over it the image is refused,
#: before it is decoded, with one line naming the file (``AUDIT_MAX_IMAGE_PIXELS`` overrides)
MAX_IMAGE_PIXELS = 89_478_485


def _decode_image(path: Path, size: tuple[int, int] | None = None):
    """The decoded image of ``path``. Its header is read first: an image of more than
    :data:`MAX_IMAGE_PIXELS` pixels (a decompression bomb, or a photo far larger than any
    model input) is a :class:`DataError` naming the file before any pixel is decoded. With a
    target ``size`` (H, W), an image at least twice as large each way is first reduced by an
    integer factor in its own 8-bit form (PIL's ``reduce``: a box filter; JPEGs decode at the
    reduced size via ``draft``), so decoding a large photo never holds it as float32.
    Raises :class:`DataError` for an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    limit = int(os.environ.get("AUDIT_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))
    try:
        pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the header only; checked just below
        try:
            im = Image.open(path)
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


def _image_channels(im, want: int | None = None) -> int:
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


def _to_tensor(im, channels: int | None, size: tuple[int, int] | None, path: Path, convert: bool,
               resize: bool, hint: str = "") -> torch.Tensor:
    c = _image_channels(im, channels)
    if channels is not None and c != channels and not convert:
        raise DataError(f"{path} has {c} channel(s) but the model takes {channels}{hint}; "
                        f"pass --convert-channels to convert the images to {channels}")
    if size is not None and (im.height, im.width) != tuple(size) and not resize:
        raise DataError(f"{path} is {im.height}x{im.width} but the model takes {size[0]}x{size[1]}{hint}; "
                        "pass --resize to resize the images to the model's input size")
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        t = torch.from_numpy(_gray_float(im).copy())[None]  # keep the full bit depth
    else:
        im = im.convert({1: "L", 3: "RGB", 4: "RGBA"}[c])  # alpha is dropped for a 1- or 3-channel model
        arr = np.asarray(im, dtype=np.float32) / 255.0
        t = torch.from_numpy((arr[:, :, None] if arr.ndim == 2 else arr).copy()).permute(2, 0, 1)
    if channels is not None and c != channels:
        t = convert_channels_tensor(t[None], channels)[0]
    if size is not None and tuple(t.shape[1:]) != tuple(size):
        t = torch.nn.functional.interpolate(t[None], size=tuple(size), mode="bilinear", align_corners=False,
                                            antialias=True)[0].clamp(0, 1)
    return t.contiguous()


def load_data(path: str | os.PathLike, *, model=None, input_shape: Sequence[int] | None = None,
              class_names: Sequence[str] | None = None, num_classes: int | None = None,
              resize: bool = False, convert_channels: bool = False, samples: int | None = None,
              seed: int = 0, progress: bool = False, class_order: str = "auto") -> AuditData:
    """Load an ImageFolder directory (one subfolder per class; a folder of split folders
    ``train/``, ``val/``, ... loads its ``val/``, :func:`~audit.layouts.find_split`) or a
    ``.pt``/``.npz`` tensor file holding ``x`` (N, C, H, W), or channels-last (N, H, W, C), or
    (N, H, W) gray, in [0, 1] (uint8 0..255 is scaled) and ``y``.

    With ``model`` (an :class:`~audit.model.AuditModel`), its input shape and class names
    are the reference; a mismatch is a :class:`DataError` naming both shapes and the flag
    (``resize`` / ``convert_channels``) that converts. ``samples`` takes a seeded,
    class-stratified subset. ``class_order`` (auto, sorted, numeric): how class folders named
    by number map to outputs (:mod:`audit.classmap`); the map is ``class_map``. Raises
    :class:`DataError` (exit code 4) for anything it cannot read: a missing path, a file or a
    folder entry that is not a regular file (a FIFO, a device), a foreign file, a mismatch.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist; check the path given to --data")
    early: list[str] = []
    if p.is_dir():
        p, split_note = find_split(p)
        early += [split_note] if split_note else []
    else:
        regular_file(p, "data file", error=DataError)  # a FIFO or /dev/zero would never end
    listing = _list_folder(p) if p.is_dir() else None
    hint = ""
    if model is not None:
        if not model.ready:  # the model's input size comes from the data (its channel count from a
            # probe when they differ): fix it now, so that the data is checked against the model
            probed = finalize_from_data(model, _first_image_shape(listing[1][0][0]) if listing else _tensor_file_shape(p))
            early += [probed] if probed else []
        if model.spec.sources.get("input_shape") == "data":
            hint = " (the model's input size was taken from the first image; pass --input-size CxHxW to set it)"
        input_shape = input_shape or model.spec.input_shape
        class_names = class_names or model.spec.class_names
        num_classes = num_classes or model.spec.num_classes
    if listing is not None:
        src = {"flag": "--labels", "sidecar": "sidecar file", "weights": "--weights"}.get(
            model.spec.sources.get("class_names", "") if model is not None else "", "given")
        data = _load_folder(p, listing, input_shape, class_names, num_classes, resize, convert_channels, samples,
                            seed, progress, hint, class_order, model, src)
    else:
        data = _load_tensor_file(p, input_shape, class_names, num_classes, resize, convert_channels)
        if samples is not None:
            data = data.subset(stratified_indices(data.y, samples, seed))
    renamed = any(k.isdigit() and int(k) != v for k, v in data.class_map.items())  # ImageFolder's order of numbers
    if model is not None and model.spec.class_names is None and len(data.class_names) == model.spec.num_classes \
            and (renamed or not all(n.isdigit() for n in data.class_names)):
        model.spec.set("class_names", list(data.class_names), "data")
    data.notes[:0] = early
    if samples is not None:
        data.notes.append(f"class-stratified subset of {len(data)} samples (seed {seed})")
    return data


def _first_image_shape(path: Path) -> tuple[int, int, int]:
    im = _decode_image(path)
    return (_image_channels(im), im.height, im.width)


def _tensor_file_shape(p: Path) -> tuple[int, int, int]:
    x, y, _ = _read_tensor_file(p)
    return tuple(int(v) for v in to_nchw(x, len(y), None, p)[0].shape[1:])  # type: ignore[return-value]


def _list_folder(p: Path) -> tuple[list[Path], list[tuple[Path, int]]]:
    """Class subfolders and (image file, folder index) pairs; errors for empty or foreign content."""
    subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        loose = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
        hint = " (the images must sit in one subfolder per class)" if loose else ""
        raise DataError(f"data folder {p} has no class subfolders{hint}; put the images in one subfolder per class "
                        f"({p}/<class>/<image>)")
    files: list[tuple[Path, int]] = []
    for ci, d in enumerate(subdirs):
        for f in sorted(d.rglob("*")):
            if f.is_dir() or f.name.startswith(".") or f.name.lower() in IGNORED:
                continue
            if not is_regular(f):  # reading a FIFO or a device would hang
                raise DataError(f"{f} is not a regular file (a FIFO, device, socket or broken link); "
                                "remove it from the data folder")
            if f.suffix.lower() not in IMAGE_EXTS:
                raise DataError(f"{f} is not an image ({', '.join(IMAGE_EXTS)}); remove it from the data folder")
            files.append((f, ci))
    if not files:
        raise DataError(f"data folder {p} has class subfolders but no images in them; put the images "
                        f"({', '.join(IMAGE_EXTS)}) in them")
    return subdirs, files


def _load_folder(p: Path, listing, input_shape, class_names, num_classes, resize, convert, samples, seed, progress,
                 hint: str, order: str = "auto", model=None, names_src: str = "given") -> AuditData:
    subdirs, files = listing
    folder_names = [shown(d.name) for d in subdirs]
    cm = match_classes(folder_names, list(class_names) if class_names else None, num_classes, order,
                       f"the model's class names ({names_src})")
    index = cm.index
    y_all = torch.tensor([index[ci] for _, ci in files], dtype=torch.long)
    keep = stratified_indices(y_all, samples, seed).tolist() if samples is not None else range(len(files))
    notes: list[str] = []
    channels = int(input_shape[0]) if input_shape else None
    size = (int(input_shape[1]), int(input_shape[2])) if input_shape else None
    tensors, ids = [], []
    bar = Progress(progress).units(len(keep), "data: loading images", "image")
    for i in keep:
        f, _ = files[i]
        im = _decode_image(f, size if resize else None)
        if size is None:  # no model to compare with: the first image sets the size
            channels = channels or _image_channels(im)
            size = (im.height, im.width)
            notes.append(f"input size {channels}x{size[0]}x{size[1]} inferred from {f.name}")
            hint = " (taken from the first image)"
        tensors.append(_to_tensor(im, channels, size, f, convert, resize, hint))
        ids.append(shown(f.relative_to(p)))  # a name that is not UTF-8 shows its bytes escaped
        bar.update(1)
    x = torch.stack(tensors)
    folder_idx = torch.tensor([files[i][1] for i in keep], dtype=torch.long)
    if cm.other is not None and model is not None and model.ready:
        cm, note = choose_by_predictions(model, x, folder_idx, cm, folder_names)
    else:
        note = f"class folders -> outputs: {cm.how}" + ("; ImageFolder's sorted-string order differs (no model "
                                                        "to check against): --class-order sorted forces it"
                                                        if cm.other is not None else "")
    notes.append(note)
    n_out = max(num_classes or 0, max(cm.index) + 1)
    names = list(class_names) if class_names else (cm.names or [str(i) for i in range(n_out)])
    return AuditData(x, torch.tensor(cm.index)[folder_idx], names, ids, shown(p), notes, cm.as_dict(folder_names),
                     note)


def _read_tensor_file(p: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    import warnings

    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:  # never pickles: object arrays are refused
                d = {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            raise DataError(f"{p} is not a readable .npz file of numeric arrays ({first_line(e, 160)}); save it with "
                            "numpy.savez(path, x=images, y=labels), numeric arrays only") from None
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                d = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{p} is not a tensor file this tool reads (.pt with x and y, or .npz: "
                            f"{first_line(e, 160)}); save it with torch.save({{'x': images, 'y': labels}}, path) "
                            "or numpy.savez(path, x=images, y=labels)") from None
    if not isinstance(d, dict) or "x" not in d or "y" not in d:
        raise DataError(f"{p} holds no dict with 'x' and 'y'; save it as {{'x': images (N, C, H, W) in [0, 1], "
                        "'y': N labels}} (torch.save or numpy.savez)")
    x = torch.as_tensor(np.asarray(d["x"]) if not isinstance(d["x"], torch.Tensor) else d["x"])
    y = torch.as_tensor(np.asarray(d["y"]) if not isinstance(d["y"], torch.Tensor) else d["y"]).flatten()
    if y.is_floating_point() or y.is_complex():
        bad = ~torch.isfinite(y) | (y != y.round()) if y.is_floating_point() else torch.ones_like(y, dtype=torch.bool)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise DataError(f"{p}: y holds {y.dtype} labels, {y[i].item()!r} at index {i} is not a class index; "
                            "store y as integers 0..K-1")
    y = y.long()
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{p}: x has shape {list(x.shape)}, no images; store x as (N, C, H, W) with N > 0")
    return x, y, d


def _load_tensor_file(p: Path, input_shape, class_names, num_classes, resize, convert) -> AuditData:
    x, y, d = _read_tensor_file(p)
    x, layout = to_nchw(x, len(y), int(input_shape[0]) if input_shape is not None else None, p)
    if x.shape[0] == 0:
        raise DataError(f"{p} holds no samples; store at least one image in x")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{p}: x has {x.shape[0]} samples but y has {y.shape[0]} labels; store one label per image")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(f"{p}: x must be finite and in [0, 1] (found {float(x.min()):.3g}..{float(x.max()):.3g}); "
                        "store x scaled to [0, 1] (or as uint8 0..255), before any normalization")
    notes = [layout] if layout else []
    if input_shape is not None:
        c, h, w = (int(v) for v in input_shape)
        if x.shape[1] != c:
            if not convert and x.shape[1] in (1, 3, 4) and c in (1, 3, 4):
                raise DataError(f"{p}: images have {x.shape[1]} channel(s) but the model takes {c}; "
                                f"pass --convert-channels to convert them")
            x = convert_channels_tensor(x, c)
            notes.append(f"converted to {c} channel(s)")
        if tuple(x.shape[2:]) != (h, w):
            if not resize:
                raise DataError(f"{p}: images are {x.shape[2]}x{x.shape[3]} but the model takes {h}x{w}; "
                                "pass --resize to resize them")
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
            notes.append(f"resized to {h}x{w}")
    names = [str(v) for v in d["class_names"]] if "class_names" in d else None
    names = list(class_names) if class_names else names
    n = len(names) if names else (num_classes or int(y.max()) + 1)
    if y.min() < 0 or y.max() >= n:
        raise DataError(f"{p}: labels range {int(y.min())}..{int(y.max())} outside the model's {n} classes; store y as "
                        f"the model's output indices 0..{n - 1}")
    return AuditData(x.contiguous(), y, names or [str(i) for i in range(n)], [str(i) for i in range(len(y))], shown(p), notes)
