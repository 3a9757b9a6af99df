""":func:`load_model`: a model file (or torchvision weights) -> a ready :class:`AuditModel`."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from ..errors import ModelLoadError
from ..files import regular_file, shown
from .device import resolve_device
from .hubfolder import hub_id_advice, looks_like_hub_id, timm_arch_advice
from .loaders import load_net
from .request import Loaded, LoadRequest
from .spec import ModelSpec, ResolvedSpec, resolve_spec
from .wrapper import AuditModel


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks. Raises :class:`ModelLoadError`
    when ``path`` is not a regular file (a FIFO or ``/dev/zero`` would never end)."""
    h = hashlib.sha256()
    with open(regular_file(path, "file", error=ModelLoadError), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_path(path: str | os.PathLike | None) -> Path | None:
    """None, or ``path`` when it is a regular file or a folder (a timm / transformers model
    folder): checked before anything opens or hashes it. A path that does not exist and reads
    as a hub id (``timm/resnet18.a1_in1k``) is an error saying that nothing is downloaded and
    how to save the model locally."""
    if path is None:
        return None
    if os.path.isdir(path):
        return Path(path)
    if not os.path.lexists(path) and looks_like_hub_id(str(path)):
        raise ModelLoadError(hub_id_advice(str(path)))
    return regular_file(path, "model file", error=ModelLoadError)


def _provenance(p: Path | None, loaded: Loaded, resolved: ResolvedSpec) -> dict[str, Any]:
    """``AuditModel.info``: path, sha256, what the loader adds (arch), format, trusted_pickle, weights."""
    hashed = p / loaded.info["weights_file"] if p is not None and p.is_dir() else p  # a folder: the weights loaded
    info: dict[str, Any] = {"path": shown(p) if p else None, "sha256": sha256_file(hashed) if hashed else None}
    info.update(loaded.info)
    info["format"] = loaded.fmt
    info["trusted_pickle"] = loaded.fmt == "pickle"
    if resolved.weights:
        info["weights"] = str(resolved.weights)
    return info


def _in_train_mode(net: Any, fmt: str) -> bool:
    """Whether a pickled module or TorchScript (or any submodule) is in train mode as loaded
    (an export's module always says so: its mode is in its graph, found by the probe)."""
    if fmt not in ("pickle", "torchscript") or not hasattr(net, "modules"):  # a state_dict build is fresh
        return False
    return any(getattr(m, "training", False) for m in net.modules())


def _freeze(net: Any) -> None:
    """Eval mode (exported programs keep the mode they were exported in; a traced TorchScript
    keeps the mode it was traced in: the probe in ``finalize`` tells) and no parameter gradients."""
    if isinstance(net, nn.Module) and not isinstance(net, torch.fx.GraphModule):
        net.eval()
    elif hasattr(net, "eval"):
        try:
            net.eval()
        except (NotImplementedError, RuntimeError):
            pass
    for prm in net.parameters():
        prm.requires_grad_(False)


def _wrap(loaded: Loaded, spec: ModelSpec, info: dict[str, Any], dev: torch.device, finalize: bool) -> AuditModel:
    model = AuditModel(loaded.net, spec, info=info, fixed_batch=loaded.fixed_batch).to(dev)
    model.training = False  # the wrapper itself is in eval mode too (the net's mode was set by _freeze)
    for note in loaded.notes:
        model._note(note)
    if info.get("saved_in_train_mode"):
        model._note("the model was saved in train mode; eval() was applied (BatchNorm uses its running statistics"
                    + (" unless a trace or export fixed the mode: then it is refused)" if loaded.fmt in
                       ("torchscript", "export") else ", Dropout is off)"))
    if spec.input_shape is not None and finalize:
        model.finalize()
    return model


def load_model(path: str | os.PathLike | None = None, *, arch: str | None = None, num_classes: int | None = None,
               weights: str | None = None, input_size: str | Sequence[int] | None = None,
               mean: str | Sequence[float] | None = None, std: str | Sequence[float] | None = None,
               labels: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
               trust: bool = False, device: str | torch.device | None = "auto",
               sidecar: str | os.PathLike | bool | None = True, finalize: bool = True) -> AuditModel:
    """Load a trained classifier from ``path`` into an :class:`AuditModel` on ``device``.

    The format is detected from the file's content (TorchScript, ``torch.export``,
    safetensors / state_dict / checkpoint (Lightning's too) with ``arch`` (a torchvision or
    registered name, or ``timm:NAME``), ONNX, a pickled ``nn.Module`` only with ``trust``);
    a folder is a timm or transformers hub-style model folder; with no ``path``, ``weights``
    names torchvision weights in the local hub cache. Nothing is ever downloaded. ``input_size`` is ``"CxHxW"``, ``mean`` / ``std`` per-channel floats for pixels in
    [0, 1], ``labels`` a file of class names, one a line. ``sidecar``: True looks for
    ``model.pt.json`` / ``model.json``, a path names one, False ignores it.

    Spec precedence: explicit options > JSON sidecar > torchvision weight metadata
    (``weights=``) > the model's own metadata (an export's or ONNX graph's input signature,
    timm's pretrained config, a transformers image processor and ``id2label``) > what the
    data shows (filled in by the runner). When the input shape is known the model is
    finalized (probed once) here, unless ``finalize=False`` (the caller then calls
    ``model.finalize()``: ``audit inspect`` does, to report what the loader found before a
    refusal of the probe).
    Raises :class:`ModelLoadError` / :class:`UsageError` with one line that says what is
    wrong and what to do.
    """
    dev = resolve_device(device)
    p = _model_path(path)
    if p is None and not weights and (arch or "").startswith("timm:"):
        raise ModelLoadError(timm_arch_advice(arch))
    resolved = resolve_spec(p, arch=arch, weights=weights, sidecar=sidecar, input_size=input_size, mean=mean,
                            std=std, labels=labels, class_names=class_names, num_classes=num_classes)
    loaded = load_net(LoadRequest(p, resolved.spec, arch=resolved.arch, weights=resolved.weights,
                                  tv_weights=resolved.tv_weights, trust=trust))
    info = _provenance(p, loaded, resolved)
    if _in_train_mode(loaded.net, loaded.fmt):
        info["saved_in_train_mode"] = True
    _freeze(loaded.net)
    return _wrap(loaded, resolved.spec, info, dev, finalize)
