"""What a loader gets (:class:`LoadRequest`) and returns (:class:`Loaded`). The loaders of
:mod:`.loaders`, :mod:`.hubfolder` and :mod:`.onnxfile` all build on these."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .spec import ModelSpec


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
