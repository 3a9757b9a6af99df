"""What a model expects and returns (:class:`ModelSpec`), and where each part comes from.

Precedence, highest first: explicit options (``flag``) > the JSON sidecar next to the
model file (``sidecar``) > torchvision weight metadata (``weights``) > the model's own
metadata, set by its loader (the input signature of a ``torch.export`` archive or ONNX graph:
``export`` / ``onnx``; timm's pretrained config: ``timm config``; a transformers image
processor and ``id2label``: ``hf config``) > what the data shows (``data``, set by
:meth:`AuditModel.finalize`). :func:`resolve_spec` applies the first three.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from ..files import MiB, regular_file

SIDECAR_KEYS = {"arch", "num_classes", "input_size", "mean", "std", "class_names", "weights",
                "description", "training", "resize_mode", "crop_pct", "interpolation"}


@dataclass
class ModelSpec:
    """What the model expects and returns.

    ``input_shape``: (C, H, W) of one image, C in 1, 3, 4; ``num_classes``: width of the
    logits; ``class_names``: one name per output; ``mean`` / ``std``: per-channel (or one
    shared) normalization the network expects, applied to pixels in ``bounds``; ``bounds``:
    the pixel range the audit works in, (0.0, 1.0). Evaluation preprocessing the model was
    made for: ``resize_mode`` (``stretch`` to the input size, or ``shorter-crop``: resize the
    shorter side to H / ``crop_pct`` then center-crop H x W), ``crop_pct`` in (0, 1], and
    ``interpolation`` (``bilinear``, ``bicubic``, ``nearest``, ``lanczos``, ``box``, ``hamming``).
    ``sources`` says where each field came
    from (``flag``, ``sidecar``, ``weights``, ``weights file``, ``export``, ``onnx``, ``timm config``,
    ``hf config``, ``output``, ``data``).
    """

    input_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    bounds: tuple[float, float] = (0.0, 1.0)
    resize_mode: str | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: Any, source: str) -> None:
        """Set a field unless a higher-priority source already set it (``None`` sets nothing)."""
        if value is None or getattr(self, name) is not None:
            return
        setattr(self, name, value)
        self.sources[name] = source

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (``input_shape`` a list)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        return d


@dataclass
class ResolvedSpec:
    """What :func:`resolve_spec` found: the spec so far, the architecture name (for a
    state_dict), the torchvision weights name and its resolved ``WeightsEnum`` member."""

    spec: ModelSpec
    arch: str | None = None
    weights: str | None = None
    tv_weights: Any = None


# ----------------------------------------------------------------------------- parsing
def parse_input_size(text: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """``"3x224x224"`` (or ``224`` / ``"224x224"``, which mean 3 channels; ``,`` and ``×``
    also separate) -> (C, H, W) ints; None -> None. Raises :class:`UsageError` unless it is
    CxHxW with C in 1, 3, 4 and every size >= 1."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        parts = [int(v) for v in text]
    else:
        try:
            parts = [int(v) for v in re.split(r"[x,× ]+", str(text).strip().lower()) if v]
        except ValueError:
            raise UsageError(f"--input-size {text!r} is not CxHxW; pass it as e.g. --input-size 3x224x224") from None
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    elif len(parts) == 2:
        parts = [3, *parts]
    if len(parts) != 3 or min(parts) < 1 or parts[0] not in (1, 3, 4):
        raise UsageError(f"--input-size {text!r} is not CxHxW with C in 1, 3, 4; pass it as e.g. --input-size 3x224x224")
    return tuple(parts)  # type: ignore[return-value]


def parse_floats(text: str | Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"`` (or a sequence) -> a tuple of floats; None -> None. Raises
    :class:`UsageError` (naming the option ``what``) unless they are finite numbers."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in (re.split(r"[, ]+", text.strip()) if isinstance(text, str) else text) if v != ""]
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a list of numbers; pass comma-separated numbers, e.g. "
                         "0.485,0.456,0.406") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{what} {text!r} is not finite; pass finite numbers, e.g. 0.485,0.456,0.406")
    return tuple(vals)


def read_labels(path: str | os.PathLike) -> list[str]:
    """Class names from a UTF-8 text file (a byte-order mark is dropped), one a line; blank
    lines are ignored. Raises :class:`UsageError` when the file is missing, not a regular file,
    over 64 MiB, not UTF-8 (e.g. Latin-1), empty, or names a class twice."""
    p = regular_file(path, "labels file", max_bytes=64 * MiB)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(f"labels file {p} is not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not names:
        raise UsageError(f"labels file {p} is empty; put one class name a line in it, in output order")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"labels file {p} names class {dup!r} twice; give each output its own name, one a line")
    return names


# ----------------------------------------------------------------------------- sidecar
def find_sidecar(path: Path | None) -> Path | None:
    """The sidecar of model file ``path``: ``model.pt.json``, else ``model.json``; None when neither exists."""
    if path is None:
        return None
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file() and cand != path:
            return cand
    return None


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's JSON object (keys in :data:`SIDECAR_KEYS`). Raises :class:`UsageError`
    for a path that is not a regular file (or over 16 MiB), invalid JSON, a non-object, or an
    unknown key."""
    try:
        d = json.loads(regular_file(path, "model sidecar", max_bytes=16 * MiB).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"model sidecar {path} is not valid JSON ({e}); fix it, or remove it (a sidecar is "
                         "optional)") from None
    if not isinstance(d, dict):
        raise UsageError(f"model sidecar {path} holds a JSON {type(d).__name__}, not an object; put the keys in one "
                         "JSON object ({\"input_size\": \"3x224x224\", ...}), or remove the file")
    unknown = sorted(set(d) - SIDECAR_KEYS)
    if unknown:
        raise UsageError(f"model sidecar {path}: unknown key {unknown[0]!r}; remove it or use a known key "
                         f"({', '.join(sorted(SIDECAR_KEYS))})")
    return d


# ----------------------------------------------------------------------------- torchvision weights
def torchvision_weights(name: str) -> tuple[Any, str | None]:
    """The torchvision ``WeightsEnum`` member named ``name`` (e.g. ``ResNet50_Weights.IMAGENET1K_V2``)
    and the name of the architecture it belongs to (None if torchvision lists none). Raises
    :class:`UsageError` for an unknown name. Reads no file and downloads nothing."""
    import torchvision

    try:
        w = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise UsageError(f"--weights {name!r} is not a torchvision weights name; pass one such as "
                         "ResNet50_Weights.IMAGENET1K_V2 (torchvision.models.get_model_weights(arch) lists an "
                         "architecture's)") from None
    arch = next((m for m in torchvision.models.list_models(module=torchvision.models)
                 if torchvision.models.get_model_weights(m) is type(w)), None)
    return w, arch


# ----------------------------------------------------------------------------- resolution steps
def apply_flags(spec: ModelSpec, *, input_size=None, mean=None, std=None, labels=None, class_names=None,
                num_classes: int | None = None) -> None:
    """Set what the options give (source ``flag``); parsing errors raise :class:`UsageError`."""
    spec.set("input_shape", parse_input_size(input_size), "flag")
    spec.set("mean", parse_floats(mean, "--mean"), "flag")
    spec.set("std", parse_floats(std, "--std"), "flag")
    if labels is not None:
        spec.set("class_names", read_labels(labels), "flag")
    spec.set("class_names", list(class_names) if class_names is not None else None, "flag")
    spec.set("num_classes", num_classes, "flag")


def apply_sidecar(spec: ModelSpec, side: dict[str, Any]) -> None:
    """Fill what the options left open from a sidecar's contents (source ``sidecar``)."""
    spec.set("input_shape", parse_input_size(side.get("input_size")), "sidecar")
    spec.set("mean", parse_floats(side.get("mean"), "sidecar mean"), "sidecar")
    spec.set("std", parse_floats(side.get("std"), "sidecar std"), "sidecar")
    spec.set("class_names", side.get("class_names"), "sidecar")
    spec.set("num_classes", side.get("num_classes"), "sidecar")
    for key in ("resize_mode", "crop_pct", "interpolation"):  # checked where they are used (audit.preprocess)
        spec.set(key, side.get(key), "sidecar")


def apply_weights_meta(spec: ModelSpec, tv_weights: Any) -> None:
    """Fill what is still open from torchvision weights' transforms and metadata (source
    ``weights``): crop size (3, H, W), mean, std, the evaluation preprocessing (``Resize`` of
    the shorter side to ``resize_size`` then ``CenterCrop`` of ``crop_size``: ``shorter-crop``,
    ``crop_pct = crop_size / resize_size``, its ``interpolation``), and the category names
    unless a fine-tuned head (a different ``num_classes``) has its own."""
    tr = tv_weights.transforms()
    crop = getattr(tr, "crop_size", None)
    if crop:
        spec.set("input_shape", (3, int(crop[0]), int(crop[-1])), "weights")
    resize = getattr(tr, "resize_size", None)
    if crop and resize:
        spec.set("resize_mode", "shorter-crop", "weights")
        spec.set("crop_pct", min(1.0, int(crop[0]) / int(resize[0])), "weights")
    interp = getattr(getattr(tr, "interpolation", None), "value", None)
    spec.set("interpolation", interp, "weights")
    spec.set("mean", tuple(getattr(tr, "mean", ()) or ()) or None, "weights")
    spec.set("std", tuple(getattr(tr, "std", ()) or ()) or None, "weights")
    cats = tv_weights.meta.get("categories")
    if cats and (spec.num_classes is None or spec.num_classes == len(cats)):
        spec.set("class_names", list(cats), "weights")


def _sidecar_path(sidecar: str | os.PathLike | bool | None, model_path: Path | None) -> Path | None:
    if isinstance(sidecar, (str, os.PathLike)):
        return Path(sidecar)
    return find_sidecar(model_path) if sidecar else None


def resolve_spec(model_path: Path | None, *, arch: str | None = None, weights: str | None = None,
                 sidecar: str | os.PathLike | bool | None = True, **flags: Any) -> ResolvedSpec:
    """Apply options (``flags``: ``input_size``, ``mean``, ``std``, ``labels``, ``class_names``,
    ``num_classes``), then the sidecar (an explicit path, or found next to ``model_path``
    when ``sidecar`` is true; it may also name ``arch`` and ``weights``), then torchvision
    weight metadata; ``num_classes`` defaults to the number of class names. Raises
    :class:`UsageError` for a bad option, sidecar or weights name."""
    spec = ModelSpec()
    apply_flags(spec, **flags)
    side_path = _sidecar_path(sidecar, model_path)
    if side_path is not None:
        side = read_sidecar(side_path)
        apply_sidecar(spec, side)
        arch = arch or side.get("arch")
        weights = weights or side.get("weights")
    tv_weights = None
    if weights:
        tv_weights, w_arch = torchvision_weights(weights)
        arch = arch or w_arch
        apply_weights_meta(spec, tv_weights)
    if spec.num_classes is None and spec.class_names is not None:
        spec.set("num_classes", len(spec.class_names), spec.sources["class_names"])
    return ResolvedSpec(spec, arch=arch, weights=weights, tv_weights=tv_weights)
