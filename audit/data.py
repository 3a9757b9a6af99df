"""Loading evaluation data: an ImageFolder-style directory, a tensor file, or images listed
with labels (:mod:`audit.dataforms`: a labels file or CSV; :mod:`audit.hfdata`: Hugging Face
datasets). Images of another size than the model's are fitted by :mod:`audit.preprocess`.

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
from .dataforms import IMAGE_EXTS, Listing, labels_file_for, list_labelled
from .errors import DataError, first_line
from .files import is_regular, regular_file, shown
from .hfdata import hf_files, list_hf
from .images import first_image_shape, read_images
from .layouts import convert_channels_tensor, finalize_from_data, find_split, to_nchw
from .lazydata import LazyImages, should_be_lazy
from .preprocess import Preprocess, resolve_preprocess

__all__ = ["AuditData", "load_data", "stratified_indices", "convert_channels_tensor"]

IGNORED = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass
class AuditData:
    """Images in [0, 1] with labels. ``ids`` name each sample (relative paths or indices).
    ``x`` is a float32 (N, C, H, W) tensor, or for a set too large for memory a
    :class:`~audit.lazydata.LazyImages` that decodes the images it is indexed with."""

    x: torch.Tensor | LazyImages
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

    @property
    def lazy(self) -> bool:
        """Whether the images are decoded on demand (a set too large to hold as float32)."""
        return isinstance(self.x, LazyImages)

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "AuditData":
        """The samples ``idx``; a lazy set's subset is decoded when it fits in memory
        (:func:`~audit.lazydata.should_be_lazy`), else stays lazy."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        x = self.x[idx] if not self.lazy or not should_be_lazy(len(idx), self.input_shape) else self.x.take(idx)
        return AuditData(x, self.y[idx], self.class_names, [self.ids[i] for i in idx.tolist()],
                         self.source, list(self.notes), dict(self.class_map), self.class_map_how)

    def describe(self) -> dict[str, Any]:
        counts = torch.bincount(self.y, minlength=len(self.class_names)).tolist() if len(self) else []
        d = {"source": self.source, "n": len(self), "input_shape": list(self.input_shape),
             "per_class": dict(zip(self.class_names, counts)), "notes": list(self.notes)}
        if self.lazy:
            d["decoded"] = "on demand"
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


def load_data(path: str | os.PathLike, *, model=None, input_shape: Sequence[int] | None = None,
              class_names: Sequence[str] | None = None, num_classes: int | None = None,
              resize: bool = False, convert_channels: bool = False, samples: int | None = None,
              seed: int = 0, progress: bool = False, class_order: str = "auto", labels_file=None,
              resize_mode: str | None = None, crop_pct: float | None = None,
              interpolation: str | None = None, lazy: bool | None = None) -> AuditData:
    """Load an ImageFolder directory (one subfolder per class; a folder of split folders
    ``train/``, ``val/``, ... loads its ``val/``, :func:`~audit.layouts.find_split`), a
    ``.pt``/``.npz`` tensor file holding ``x`` (N, C, H, W), or channels-last (N, H, W, C), or
    (N, H, W) gray, in [0, 1] (uint8 0..255 is scaled) and ``y``, a folder of images with
    ``labels_file`` or a ``.csv`` of paths and labels (:mod:`audit.dataforms`), or a Hugging
    Face dataset folder or Parquet file(s) (:mod:`audit.hfdata`).

    With ``model`` (an :class:`~audit.model.AuditModel`), its input shape and class names
    are the reference; a mismatch is a :class:`DataError` naming both shapes and the flag
    (``resize`` / ``convert_channels``) that converts. An image of another size is fitted by
    :func:`~audit.preprocess.resolve_preprocess` (``resize_mode``, ``crop_pct``,
    ``interpolation`` over the model's own preprocessing, applied without ``resize`` when the
    model declares one; a data note says what was done). ``samples`` takes a seeded,
    class-stratified subset. ``class_order`` (auto, sorted, numeric): how class folders named
    by number map to outputs (:mod:`audit.classmap`); the map is ``class_map``. ``lazy``:
    decode the images on demand (:mod:`audit.lazydata`); by default when the set would take
    more than 1 GiB as float32 (``AUDIT_LAZY_BYTES``). Raises
    :class:`DataError` (exit code 4) for anything it cannot read: a missing path, a file or a
    folder entry that is not a regular file (a FIFO, a device), a foreign file, a mismatch.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {p} does not exist; check the path given to --data")
    early: list[str] = []
    labelled = labels_file_for(p, labels_file)
    hf = None if labelled else hf_files(p)
    form = list_labelled(*labelled) if labelled else (list_hf(p, hf) if hf is not None else None)
    if p.is_dir() and form is None:
        p, split_note = find_split(p)
        early += [split_note] if split_note else []
    elif form is None:
        regular_file(p, "data file", error=DataError)  # a FIFO or /dev/zero would never end
    listing = _list_folder(p) if p.is_dir() and form is None else None
    tensors = _read_tensor_file(p) if listing is None and form is None else None  # read once
    hint = ""
    if model is not None:
        if not model.ready:  # the model's input size comes from the data (its channel count from a
            # probe when they differ): fix it now, so that the data is checked against the model
            first = listing[1][0][0] if listing else (form.items[0][1] if form else None)
            probed = finalize_from_data(model, first_image_shape(first) if first else _tensor_file_shape(tensors, p))
            early += [probed] if probed else []
        if model.spec.sources.get("input_shape") == "data":
            hint = " (the model's input size was taken from the first image; pass --input-size CxHxW to set it)"
        input_shape = input_shape or model.spec.input_shape
        class_names = class_names or model.spec.class_names
        num_classes = num_classes or model.spec.num_classes
    prep = resolve_preprocess(model.spec if model is not None else None, resize=resize, resize_mode=resize_mode,
                              crop_pct=crop_pct, interpolation=interpolation)
    src = {"flag": "--labels", "sidecar": "sidecar file", "weights": "--weights"}.get(
        model.spec.sources.get("class_names", "") if model is not None else "", "given")
    if listing is not None:
        data = _load_folder(p, listing, input_shape, class_names, num_classes, prep, convert_channels, samples,
                            seed, progress, hint, class_order, model, src, lazy)
    elif form is not None:
        data = _load_listing(form, input_shape, class_names, num_classes, prep, convert_channels, samples, seed,
                             progress, hint, f"the model's class names ({src})", lazy)
    else:
        data = _load_tensor_file(p, tensors, input_shape, class_names, num_classes, prep, convert_channels, lazy)
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


def _tensor_file_shape(tensors, p: Path) -> tuple[int, int, int]:
    x, y, _ = tensors
    return tuple(int(v) for v in to_nchw(x, len(y), None, p)[0].shape[1:])  # type: ignore[return-value]


def _list_folder(p: Path) -> tuple[list[Path], list[tuple[Path, int]]]:
    """Class subfolders and (image file, folder index) pairs; errors for empty or foreign content."""
    subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        loose = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
        hint = (" (the images must sit in one subfolder per class, or pass --data-labels FILE listing each image's "
                "label)") if loose else ""
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


def _load_folder(p: Path, listing, input_shape, class_names, num_classes, prep, convert, samples, seed, progress,
                 hint: str, order: str = "auto", model=None, names_src: str = "given",
                 lazy: bool | None = None) -> AuditData:
    subdirs, files = listing
    folder_names = [shown(d.name) for d in subdirs]
    cm = match_classes(folder_names, list(class_names) if class_names else None, num_classes, order,
                       f"the model's class names ({names_src})")
    index = cm.index
    y_all = torch.tensor([index[ci] for _, ci in files], dtype=torch.long)
    keep = stratified_indices(y_all, samples, seed).tolist() if samples is not None else range(len(files))
    ids = [shown(files[i][0].relative_to(p)) for i in keep]  # a name that is not UTF-8 shows its bytes escaped
    x, notes = read_images([(sid, files[i][0]) for sid, i in zip(ids, keep)], input_shape, convert, prep, progress,
                            hint, lazy=lazy)
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


def _load_listing(form: Listing, input_shape, class_names, num_classes, prep, convert, samples, seed, progress,
                  hint: str, names_src: str, lazy: bool | None = None) -> AuditData:
    """A labels file's, a CSV's or a Hugging Face dataset's images (:mod:`audit.dataforms`)."""
    y, names, class_map, how = form.assign(list(class_names) if class_names else None, num_classes, names_src)
    y_all = torch.tensor(y, dtype=torch.long)
    keep = stratified_indices(y_all, samples, seed).tolist() if samples is not None else list(range(len(y)))
    items = [form.items[i] for i in keep]
    x, notes = read_images(items, input_shape, convert, prep, progress, hint, form.where, lazy)
    n_out = max(num_classes or 0, max(y) + 1, len(names or []))
    names = list(class_names) if class_names else (names or [str(i) for i in range(n_out)])
    how = f"labels read as {how}"
    return AuditData(x, y_all[keep], names, [sid for sid, _ in items], form.source, form.notes + [how] + notes,
                     {str(k): int(v) for k, v in class_map.items()}, how)


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


def _load_tensor_file(p: Path, tensors, input_shape, class_names, num_classes, prep: Preprocess | None, convert,
                      lazy=None) -> AuditData:
    """The tensor file ``p`` already read (``tensors``: x, y and the dict) as AuditData, fitted to
    ``input_shape`` by ``prep`` (None: a size mismatch is refused naming --resize)."""
    x, y, d = tensors
    x, layout = to_nchw(x, len(y), int(input_shape[0]) if input_shape is not None else None, p)
    if x.shape[0] == 0:
        raise DataError(f"{p} holds no samples; store at least one image in x")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{p}: x has {x.shape[0]} samples but y has {y.shape[0]} labels; store one label per image")
    fits = input_shape is None or tuple(x.shape[1:]) == tuple(int(v) for v in input_shape)
    if x.dtype == torch.uint8 and fits and should_be_lazy(len(x), x.shape[1:], lazy):  # a quarter of float32's size
        return _labelled(p, LazyImages.from_uint8(x.contiguous()), y, d, class_names, num_classes,
                         ([layout] if layout else []) + [f"{len(y):,} images kept as uint8, scaled to [0, 1] batch "
                                                         "by batch"])
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
            if prep is None:
                raise DataError(f"{p}: images are {x.shape[2]}x{x.shape[3]} but the model takes {h}x{w}; "
                                "pass --resize to resize them (--resize-mode shorter-crop to resize the shorter side "
                                "and center-crop)")
            x = prep.apply_tensor(x, (h, w), str(p))
            notes.append(prep.note((h, w), len(x), len(x)))
    return _labelled(p, x.contiguous(), y, d, class_names, num_classes, notes)


def _labelled(p: Path, x, y, d: dict, class_names, num_classes, notes: list[str]) -> AuditData:
    """The tensor file's AuditData: class names from the flag/model or the file, labels checked."""
    names = [str(v) for v in d["class_names"]] if "class_names" in d else None
    names = list(class_names) if class_names else names
    n = len(names) if names else (num_classes or int(y.max()) + 1)
    if y.min() < 0 or y.max() >= n:
        raise DataError(f"{p}: labels range {int(y.min())}..{int(y.max())} outside the model's {n} classes; store y as "
                        f"the model's output indices 0..{n - 1}")
    return AuditData(x, y, names or [str(i) for i in range(n)], [str(i) for i in range(len(y))], shown(p), notes)
