"""Architectures by name, for loading a state_dict (``--arch``): our own registered ones,
every torchvision classification model (timm's ``create_model`` idea), and ``timm:NAME`` for
any timm model (``timm.create_model(NAME, pretrained=False)``; timm is imported only then).

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
    torchvision's classification models (sorted), then ``timm:NAME`` (any of ``timm.list_models()``)."""
    import torchvision

    return sorted(_ARCHS) + sorted(torchvision.models.list_models(module=torchvision.models)) + ["timm:NAME"]


def create_timm(name: str, *, num_classes: int) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=...)``: timm's architecture
    (and default pretrained config, which holds its preprocessing), untrained; nothing is
    downloaded. ``name`` may carry a pretrained tag (``resnet18.a1_in1k``), which selects that
    config. Raises KeyError (the ``--arch`` message) without timm or for a name timm lacks."""
    try:
        import timm
    except ImportError:
        raise KeyError(f"--arch timm:{name} needs timm: pip install 'model-audit[timm]' (or pip install timm)") from None
    if not timm.is_model(name.split(".", 1)[0]):
        raise KeyError(f"unknown --arch timm:{name}; timm {timm.__version__} has no such model "
                       "(python -c 'import timm; print(timm.list_models())' lists them)")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def create_arch(name: str, *, num_classes: int) -> nn.Module:
    """Build an untrained model by name with a ``num_classes``-wide head (``timm:NAME``: a timm
    model, :func:`create_timm`). Raises KeyError with a hint when the name is unknown (the
    ``--arch`` message)."""
    if name in _ARCHS:
        return _resolve(name)(num_classes=num_classes)
    if name.startswith("timm:"):
        return create_timm(name[len("timm:"):], num_classes=num_classes)
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise KeyError(f"unknown --arch {name!r}; pass a known one (`audit list --archs`: ours, "
                       f"{', '.join(sorted(_ARCHS))}, torchvision's classification models, and timm:NAME)")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
