"""Architectures by name, for loading a state_dict (``--arch``): our own registered ones and
every torchvision classification model (timm's ``create_model`` idea).

An entry is a factory ``f(num_classes=...) -> nn.Module``, or a lazy ``"module:attr"``
import path to one, imported only when that architecture is built: the demo's ``gymnet``
is such an entry, so importing the registry imports no demo code. A name is registered
once; registering it again raises :class:`ValueError`.
"""
from __future__ import annotations

import importlib
from typing import Callable, Union

import torch.nn as nn

Factory = Callable[..., nn.Module]

#: name -> factory, or "package.module:attr" naming one (resolved on first use)
_ARCHS: dict[str, Union[Factory, str]] = {}


def register_arch(name: str, factory: Factory | str | None = None):
    """Register architecture ``name``. ``register_arch("x", "pkg.mod:fn")`` adds a lazy entry,
    ``register_arch("x", fn)`` a factory; without ``factory`` it is a decorator
    (``@register_arch("x")`` on ``fn(num_classes=...) -> nn.Module``). Raises
    :class:`ValueError` when ``name`` is already registered, or a lazy path is not
    ``"module:attr"``."""
    if factory is None:
        def deco(fn: Factory) -> Factory:
            register_arch(name, fn)
            return fn

        return deco
    if name in _ARCHS:
        raise ValueError(f"architecture {name!r} is already registered ({_describe(_ARCHS[name])}); "
                         "give the new one another name")
    if isinstance(factory, str) and (factory.count(":") != 1 or not all(factory.split(":"))):
        raise ValueError(f"architecture {name!r}: lazy entry {factory!r} is not 'package.module:attr'")
    _ARCHS[name] = factory
    return factory


def _describe(entry: Factory | str) -> str:
    if isinstance(entry, str):
        return entry
    return f"{getattr(entry, '__module__', '?')}:{getattr(entry, '__qualname__', repr(entry))}"


def _resolve(name: str) -> Factory:
    """The factory of ``name``, importing a lazy entry's module (once; the entry is replaced)."""
    entry = _ARCHS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
        _ARCHS[name] = entry
    return entry


register_arch("gymnet", "audit.demo.model:gymnet")


def list_archs() -> list[str]:
    """Every name ``create_arch`` accepts: ours (sorted; lazy entries are not imported), then
    torchvision's classification models (sorted)."""
    import torchvision

    return sorted(_ARCHS) + sorted(torchvision.models.list_models(module=torchvision.models))


def create_arch(name: str, *, num_classes: int) -> nn.Module:
    """Build an untrained model by name with a ``num_classes``-wide head. Raises KeyError with
    a hint when the name is unknown (the ``--arch`` message)."""
    if name in _ARCHS:
        return _resolve(name)(num_classes=num_classes)
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise KeyError(f"unknown --arch {name!r}; pass a known one (`audit list --archs`: ours, "
                       f"{', '.join(sorted(_ARCHS))}, and torchvision's classification models)")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
