"""The model and the data from the command line's arguments: the one place where ``audit run``
and ``audit inspect`` turn the model and data flags (:mod:`audit.cli_args`) into
:func:`audit.model.load_model` and :func:`audit.data.load_data` options."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .data import AuditData
    from .model import AuditModel

_NO_MODEL = "no model given; pass a model file (audit {cmd} MODEL --data DIR) or --weights NAME for torchvision weights"


def model_options(args) -> dict[str, Any]:
    """``load_model`` keyword options from the model flags (all but the path and the device)."""
    return {"arch": args.arch, "num_classes": args.num_classes, "weights": args.weights,
            "input_size": args.input_size, "mean": args.mean, "std": args.std, "labels": args.labels,
            "trust": args.trust}


def data_options(args) -> dict[str, Any]:
    """``load_data`` keyword options from the data flags (all but the path, samples, seed, progress)."""
    return {"resize": args.resize, "convert_channels": args.convert_channels, "class_order": args.class_order,
            "labels_file": args.data_labels, "resize_mode": args.resize_mode, "crop_pct": args.crop_pct,
            "interpolation": args.interpolation}


def check_model_given(args, cmd: str) -> None:
    """:class:`UsageError` (exit 4) when neither a model file nor ``--weights`` was given."""
    if args.model is None and not args.weights and not (args.arch or "").startswith("timm:"):
        raise UsageError(_NO_MODEL.format(cmd=cmd))


def model_from_args(args, device, *, cmd: str = "run") -> "AuditModel":
    """The model the flags name, on ``device`` (``--device`` resolved by the config)."""
    from .model import load_model

    check_model_given(args, cmd)
    return load_model(args.model, device=device, **model_options(args))


def data_from_args(args, model: "AuditModel", *, samples: int | None = None, seed: int = 0,
                   progress: bool = False) -> "AuditData | None":
    """The data ``--data`` names, checked against ``model`` (None without ``--data``)."""
    if not args.data:
        return None
    from .data import load_data

    return load_data(args.data, model=model, samples=samples, seed=seed, progress=progress, **data_options(args))
