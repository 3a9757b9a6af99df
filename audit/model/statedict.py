"""Building a network from a state_dict (``--arch NAME``): find the tensors in a checkpoint,
tell the number of classes, and report a mismatch in one line."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

import torch
import torch.nn as nn

from ..errors import ModelLoadError
from .messages import error_line
from .spec import ModelSpec

#: keys under which training checkpoints keep the model's weights
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "module", "ema")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / torch.compile


def as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """A plain ``{name: tensor}`` mapping from ``obj``: itself, or one nested in a training
    checkpoint under a :data:`STATE_DICT_KEYS` key, with a DataParallel / torch.compile
    prefix shared by every key stripped. None when ``obj`` holds no such mapping."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = dict(obj)
    elif isinstance(obj, dict):
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        return as_state_dict(inner) if inner is not None else None
    else:
        return None
    stripped = True
    while stripped:  # nested wrappers: module._orig_mod.
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd, stripped = {k[len(prefix):]: v for k, v in sd.items()}, True
    return sd


def fit_prefix(sd: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """``sd`` with the key prefix removed that makes most of its keys names of ``expected``
    (an architecture's state_dict keys): ``model.`` of a Lightning checkpoint, ``net.``,
    ``module.model.``, any nesting. A key is matched by its longest suffix (whole dotted
    components) that ``expected`` holds. Returns (``sd`` as it is, '') when its keys already
    are ``expected``'s or nothing matches, else (the keys under the prefix, stripped; the prefix)."""
    if set(sd) == expected:
        return sd, ""
    counts: Counter[str] = Counter()
    for k in sd:
        parts = k.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in expected:
                counts[".".join(parts[:i]) + "." if i else ""] += 1
                break
    if not counts or max(counts.values()) == counts[""]:
        return sd, ""
    prefix = max(counts, key=lambda p: (counts[p], -len(p)))
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, prefix


def _leading(keys: list[str]) -> str:
    """The first dotted component every key shares (with its dot), or ''."""
    heads = {k.split(".", 1)[0] for k in keys if "." in k}
    return next(iter(heads)) + "." if len(heads) == 1 and all("." in k for k in keys) else ""


def _misfit_hint(sd: dict[str, torch.Tensor], prefix: str, arch: str, net: nn.Module) -> str:
    """What to do when the weights do not fit ``arch``: the prefix seen and the remedy."""
    example = next(iter(net.state_dict()), "")
    if prefix:
        return (f"; the keys fit only after removing the prefix {prefix!r} (done), so the checkpoint holds another "
                f"network than {arch}: pass the --arch it was trained with (audit list --archs) and --num-classes")
    lead = _leading(list(sd))
    seen = f"its keys all start with {lead!r}" if lead else f"its keys look like {next(iter(sd), '')!r}"
    return (f"; {seen} and none fits {arch}'s (e.g. {example!r}): pass the --arch it was trained with (audit list "
            "--archs), or save the classifier's own state_dict (model.state_dict() of the network itself)")


def infer_num_classes(sd: dict[str, torch.Tensor]) -> int | None:
    """Rows of the last 2-D ``*weight`` tensor (the classifier head), or None."""
    last = [v for k, v in sd.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else None


def build_from_state_dict(sd: dict[str, torch.Tensor], *, arch: str | None, spec: ModelSpec, where: str,
                          notes: list[str] | None = None) -> nn.Module:
    """An ``arch`` network (see :mod:`audit.zoo`) with ``sd`` loaded strictly; the number of
    classes is ``spec.num_classes``, else inferred (and recorded as ``weights file``).
    A key prefix such as Lightning's ``model.`` is removed when that makes the keys fit
    (:func:`fit_prefix`; said in ``notes``). ``where`` names the source in messages. Raises :class:`ModelLoadError` when ``arch`` is
    missing or unknown, the class count cannot be told, or the weights do not fit."""
    from ..zoo import create_arch

    if not arch:
        raise ModelLoadError(f"{where} holds only weights (a state_dict); name the architecture with --arch NAME "
                             "(a torchvision model such as resnet18, gymnet, or timm:NAME) and --num-classes N")
    n = spec.num_classes or infer_num_classes(sd)
    if n is None:
        raise ModelLoadError(f"cannot tell the number of classes of {where}; pass --num-classes N")
    spec.set("num_classes", n, "weights file")
    try:
        net = create_arch(arch, num_classes=n)
    except KeyError as e:
        raise ModelLoadError(str(e.args[0])) from None
    fitted, prefix = fit_prefix(sd, set(net.state_dict()))
    try:
        net.load_state_dict(fitted, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"the weights in {where} do not fit --arch {arch} with {n} classes: "
                             f"{summarize_load_error(e)}{_misfit_hint(sd, prefix, arch, net)}") from None
    if prefix and notes is not None:
        left = len(sd) - len(fitted)
        notes.append(f"the prefix {prefix!r} was removed from the state_dict's keys"
                     + (f"; {left} keys outside it were ignored" if left else ""))
    return net


def _keys_after(label: str, msg: str) -> list[str] | None:
    """The quoted keys after ``<label> key(s) in state_dict:``; None when there is no such list."""
    m = re.search(label + r" key\(s\) in state_dict: (.*?)(?:\.\s*$|\.\s*\n|$)", msg, re.S | re.M)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else None


def summarize_load_error(e: BaseException) -> str:
    """``load_state_dict``'s long message in one line: counts and examples of missing keys,
    unexpected keys and size mismatches (else the error's first line)."""
    msg = str(e)
    parts = []
    for label in ("Missing", "Unexpected"):
        keys = _keys_after(label, msg)
        if keys is not None:
            parts.append(f"{len(keys)} {label.lower()} keys (e.g. {', '.join(keys[:2])})")
    sm = re.findall(r"size mismatch for ([\w\.]+)", msg)
    if sm:
        parts.append(f"{len(sm)} size mismatches (e.g. {', '.join(sm[:2])})")
    return "; ".join(parts) or error_line(e)
