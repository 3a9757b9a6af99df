"""Architectures by name, for loading a state_dict: our own registered ones (the demo's
``gymnet``) and every torchvision classification model (timm's ``create_model`` idea)."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str):
    """Decorator: ``@register_arch("gymnet")`` on a factory ``f(num_classes=...) -> nn.Module``."""

    def deco(fn):
        _ARCHS[name] = fn
        return fn

    return deco


def _ensure_builtin() -> None:
    # importing the demo package registers its architecture
    import audit.demo.model  # noqa: F401


def list_archs() -> list[str]:
    import torchvision

    _ensure_builtin()
    return sorted(_ARCHS) + sorted(torchvision.models.list_models(module=torchvision.models))


def create_arch(name: str, *, num_classes: int) -> nn.Module:
    """Build an untrained model by name; raises KeyError with a hint when unknown."""
    _ensure_builtin()
    if name in _ARCHS:
        return _ARCHS[name](num_classes=num_classes)
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise KeyError(f"unknown --arch {name!r}; `audit list --archs` shows the known ones "
                       f"(ours: {', '.join(sorted(_ARCHS))}; torchvision classification models)")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
