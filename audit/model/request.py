"""What a loader gets (:class:`LoadRequest`) and returns (:class:`Loaded`), and the one step
every weights-only format shares: a state_dict built into an ``--arch`` network
(:func:`from_state_dict`). The loaders of :mod:`.loaders`, :mod:`.hubfolder` and
:mod:`.onnxfile` all build on these."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelLoadError
from .hubconfig import apply_timm_config
from .spec import ModelSpec
from .statedict import as_state_dict, build_from_state_dict


@dataclass
class LoadRequest:
    """What a loader gets: the model file or folder (None for torchvision weights alone), the
    spec so far (a loader may add to it: an export's input shape, a state_dict's class count,
    a hub model's preprocessing), the architecture for a state_dict, the torchvision weights
    name and member, and ``trust`` (allow a pickle, a custom ONNX operator or a model's own
    Python code to run)."""

    path: Path | None
    spec: ModelSpec
    arch: str | None = None
    weights: str | None = None
    tv_weights: Any = None
    trust: bool = False

    @property
    def where(self) -> str:
        """The source, as messages name it."""
        return str(self.path or self.weights)


@dataclass
class Loaded:
    """A loader's result: the network (an ``nn.Module``, ``ScriptModule`` or an exported
    program's module) taking normalized float (N, C, H, W) input, the format it came in (one
    of :data:`audit.model.detect.FORMATS`), the batch size an export was traced at (None:
    any), and entries for ``AuditModel.info``."""

    net: Any
    fmt: str
    fixed_batch: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  #: adaptations the loader made (model info ``adaptations``)


Loader = Callable[[LoadRequest], Loaded]


def from_state_dict(obj: Any, req: LoadRequest, fmt: str, notes: list[str] | None = None) -> Loaded:
    """``obj`` (a state_dict, or a checkpoint holding one) built into ``req.arch``
    (:func:`audit.model.statedict.build_from_state_dict`); a ``timm:NAME`` architecture also
    fills the spec's preprocessing from timm's pretrained config (source ``timm config``).
    ``notes``: adaptations already made. Raises :class:`ModelLoadError` when ``obj`` holds no
    state_dict or the weights do not fit."""
    sd = as_state_dict(obj)
    if sd is None:
        raise ModelLoadError(f"{req.where} holds a {type(obj).__name__}, neither a model nor a state_dict of tensors; "
                             "save the model's state_dict (torch.save(model.state_dict(), path)) or the model as "
                             "TorchScript (torch.jit.save)")
    notes = list(notes or [])
    net = build_from_state_dict(sd, arch=req.arch, spec=req.spec, where=req.where, notes=notes)
    if req.arch and req.arch.startswith("timm:"):
        notes += apply_timm_config(req.spec, net)
    info: dict[str, Any] = {"arch": req.arch}
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if v.is_floating_point()} - {"float32"})
    if dtypes:
        info["weights_dtype"] = ", ".join(dtypes)
        notes.append(f"{' and '.join(dtypes)} weights loaded into a float32 --arch {req.arch} network")
    return Loaded(net, fmt, info=info, notes=notes)
