"""A hub model's own preprocessing and class names, into the :class:`ModelSpec`.

* timm: :func:`timm.data.resolve_data_config` on the model (its ``pretrained_cfg``) gives the
  input size, mean, std, interpolation, ``crop_pct`` and ``crop_mode``; class names are the
  config's ``label_names``, else timm's ImageNet label names (WordNet ids such as
  ``n01440764``, the folder names of ImageNet's train/val layout) when the head is an ImageNet
  one (:func:`timm.data.infer_imagenet_subset`). Source ``timm config``.
* Hugging Face transformers: the image processor (``preprocessor_config.json``) gives
  ``size`` (``height``/``width`` or ``shortest_edge``), ``crop_size`` with
  ``do_center_crop`` (or ConvNeXt's ``crop_pct``), ``resample`` (a PIL filter number),
  ``image_mean`` / ``image_std`` (rescaled to pixels in [0, 1] when ``rescale_factor`` is not
  1/255); class names are the config's ``id2label`` unless they are the default ``LABEL_i``.
  Source ``hf config``.

Each function fills only what flags and the sidecar left open (:meth:`ModelSpec.set`) and
returns notes for what could not be matched exactly.
"""
from __future__ import annotations

import re
from typing import Any

from .spec import ModelSpec

TIMM_SOURCE = "timm config"
HF_SOURCE = "hf config"

#: PIL's filter numbers (``PIL.Image.Resampling``, transformers' ``PILImageResampling``) -> names
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _floats(v: Any) -> tuple[float, ...] | None:
    if v is None:
        return None
    return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))


# ----------------------------------------------------------------------------- timm
def _timm_class_names(model: Any) -> list[str] | None:
    """``label_names`` of the model's pretrained config (a list, or a dict id -> name), else
    timm's ImageNet label names (WordNet ids) for an ImageNet-sized head; None when neither fits."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    n = getattr(model, "num_classes", None)
    names = cfg.get("label_names")
    if isinstance(names, dict):
        names = [names.get(i, names.get(str(i))) for i in range(len(names))]
    if names and (n is None or len(names) == n) and all(isinstance(s, str) for s in names):
        return list(names)
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    return list(ImageNetInfo(subset).label_names())  # WordNet ids: ImageNet's folder names, as timm's hub configs


def apply_timm_config(spec: ModelSpec, model: Any) -> list[str]:
    """Fill ``spec`` from a timm model's pretrained config (``resolve_data_config``):
    input shape (C, H, W), mean, std, interpolation, ``crop_pct``, ``resize_mode``
    (``crop_mode`` ``center`` -> ``shorter-crop``, ``squash`` -> ``stretch``) and class names.
    Returns notes (a ``squash`` with ``crop_pct`` < 1 or a ``border`` crop mode, which the
    audit's resize does not reproduce)."""
    from timm.data import resolve_data_config

    dc = resolve_data_config({}, model=model)
    notes: list[str] = []
    spec.set("input_shape", tuple(int(v) for v in dc["input_size"]), TIMM_SOURCE)
    spec.set("mean", _floats(dc.get("mean")), TIMM_SOURCE)
    spec.set("std", _floats(dc.get("std")), TIMM_SOURCE)
    spec.set("interpolation", dc.get("interpolation") or None, TIMM_SOURCE)
    crop_pct = float(dc.get("crop_pct") or 1.0)
    mode = dc.get("crop_mode", "center")
    if mode == "center":
        spec.set("resize_mode", "shorter-crop", TIMM_SOURCE)
        spec.set("crop_pct", crop_pct, TIMM_SOURCE)
    elif mode == "squash":
        spec.set("resize_mode", "stretch", TIMM_SOURCE)
        if crop_pct < 1.0:
            notes.append(f"timm's 'squash' crop mode stretches to the input size / {crop_pct:g} and crops the "
                         "centre; images are stretched to the input size instead")
    else:
        notes.append(f"timm's crop mode {mode!r} (resize inside, pad) is not reproduced; images are resized as "
                     "--resize says")
    spec.set("class_names", _timm_class_names(model), TIMM_SOURCE)
    return notes


# ----------------------------------------------------------------------------- transformers
def hf_class_names(config: Any) -> list[str] | None:
    """The config's ``id2label`` in output order; None when absent, gappy, or the default
    ``LABEL_0``, ``LABEL_1``, ... that ``PretrainedConfig`` makes up."""
    id2label = getattr(config, "id2label", None) or {}
    try:
        names = [id2label[i] if i in id2label else id2label[str(i)] for i in range(len(id2label))]
    except KeyError:
        return None
    if not names or all(re.fullmatch(rf"LABEL_{i}", s) for i, s in enumerate(names)):
        return None
    return [str(s) for s in names]


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` or ``obj.key`` (transformers' ``SizeDict`` is an object, older ones a dict)."""
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _resample_name(value: Any) -> str | None:
    """A PIL filter number (or enum), or torchvision ``InterpolationMode``, as a name."""
    if value is None:
        return None
    v = getattr(value, "value", value)
    if isinstance(v, str):
        return v.lower() if v.lower() in PIL_FILTERS.values() else None
    try:
        return PIL_FILTERS.get(int(v))
    except (TypeError, ValueError):
        return None


def _hf_geometry(proc: Any) -> tuple[tuple[int, int] | None, str | None, float | None, list[str]]:
    """(H, W) of the network input, resize mode, crop_pct and notes, from an image processor."""
    size, crop = getattr(proc, "size", None), None
    if getattr(proc, "do_center_crop", False):
        crop = getattr(proc, "crop_size", None)
    h, w, se = _get(size, "height"), _get(size, "width"), _get(size, "shortest_edge")
    ch, cw = _get(crop, "height"), _get(crop, "width")
    if ch and cw:
        if se:
            return (int(ch), int(cw)), "shorter-crop", min(1.0, float(ch) / float(se)), []
        if (h, w) == (ch, cw) or not (h and w):
            return (int(ch), int(cw)), "stretch", None, []
        return (int(ch), int(cw)), "stretch", None, [
            f"the image processor resizes to {h}x{w} then crops {ch}x{cw}; images are stretched to {ch}x{cw}"]
    if h and w:
        return (int(h), int(w)), "stretch", None, []
    pct = getattr(proc, "crop_pct", None)
    if se and pct and int(se) < 384:  # ConvNeXt's processor: shorter side to se / crop_pct, centre crop se x se
        return (int(se), int(se)), "shorter-crop", float(pct), []
    if se and pct:
        return (int(se), int(se)), "stretch", None, []
    if se:
        return None, None, None, [f"the image processor resizes the shorter side to {se} without a crop (the input "
                                  "size varies with the image); pass --input-size CxHxW"]
    return None, None, None, []


def apply_hf_processor(spec: ModelSpec, proc: Any, channels: int = 3) -> list[str]:
    """Fill ``spec`` from a transformers image processor: input shape (``channels``, H, W),
    resize mode, ``crop_pct``, interpolation, mean and std for pixels in [0, 1] (the
    processor's, for pixels times ``255 * rescale_factor`` (255 without ``do_rescale``), divided
    by that factor; 0 and 1 before it without ``do_normalize``). Returns notes
    for what cannot be reproduced."""
    hw, mode, pct, notes = _hf_geometry(proc)
    if getattr(proc, "do_resize", True) is False:
        notes.append("the image processor does not resize (do_resize false); images are resized as --resize says")
    if hw:
        spec.set("input_shape", (channels, *hw), HF_SOURCE)
    spec.set("resize_mode", mode, HF_SOURCE)
    spec.set("crop_pct", pct, HF_SOURCE)
    spec.set("interpolation", _resample_name(getattr(proc, "resample", None)), HF_SOURCE)
    rf = float(getattr(proc, "rescale_factor", 1 / 255)) if getattr(proc, "do_rescale", True) else 1.0
    scale = 255.0 * rf  # the network sees (255 * rf * x - mean) / std for x in [0, 1]
    if getattr(proc, "do_normalize", True):
        mean, std = _floats(getattr(proc, "image_mean", None)), _floats(getattr(proc, "image_std", None))
    else:
        mean, std = (0.0,), (1.0,)
    if mean is not None and std is not None:
        spec.set("mean", tuple(m / scale for m in mean), HF_SOURCE)
        spec.set("std", tuple(s / scale for s in std), HF_SOURCE)
    return notes
