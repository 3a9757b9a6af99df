"""What an attribution method is, the settings every method reads, and the registry.

A method maps a batch ``x`` (N, C, H, W) float32 in [0, 1] (the model's ``bounds``) and the
classes to explain ``target`` (N,) int64 to a map (N, H, W) float32: the per-pixel sum over
channels of the captum attribution (signed where the method is signed), plus ``extras``, name
-> (N,) tensor (Integrated Gradients' convergence delta). Methods of kind ``hook`` need module
hooks (captum registers them on ReLUs or on a layer): the check runs them on a hook-safe copy
of the model (:func:`probes.attribution.hooks.hook_safe_copy`) and skips them on TorchScript
or torch.export models.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.nn as nn

from audit.batching import with_oom_retry as _with_oom_retry

__all__ = ["GRADIENT", "HOOK", "PERTURBATION", "KINDS", "AttrSettings", "AttrMethod", "MethodRegistry",
           "to_map", "with_oom_retry"]

GRADIENT, HOOK, PERTURBATION = "gradient", "hook", "perturbation"
KINDS = (GRADIENT, HOOK, PERTURBATION)


@dataclass
class AttrSettings:
    """Knobs shared by all methods (filled from the check's Options)."""

    ig_steps: int = 16
    smoothgrad_samples: int = 50
    smoothgrad_noise: float = 0.15  #: noise std as a share of the input range
    occlusion_window: int = 0  #: patch side in pixels; 0: a quarter of the image side
    internal_batch_size: int = 256  #: images x steps (or samples) per forward/backward pass
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0  #: seed of SmoothGrad's noise (the global RNG is forked, never disturbed)
    layer: nn.Module | None = None  #: Grad-CAM's layer (in the model the method runs on)
    tokens: Any = None  #: a :class:`probes.layers.TokenGrid` when ``layer`` outputs transformer tokens
    oom_retries: list[int] = field(default_factory=list)  #: internal batch sizes halved on OOM


class AttrMethod:
    """Base of an attribution method. A subclass sets the class attributes and implements
    :meth:`attribute`; it is stateless (the check holds one instance per method)."""

    name: ClassVar[str] = ""  #: the option value and the ``method`` qualifier of the metrics
    title: ClassVar[str] = ""  #: shown in the pictures and messages
    kind: ClassVar[str] = GRADIENT  #: gradient | hook | perturbation
    signed: ClassVar[bool] = False
    reference: ClassVar[bool] = False  #: kept for comparison; known to fail the randomization test
    needs_conv: ClassVar[bool] = False  #: needs ``settings.layer``, a convolution

    def attribute(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                  s: AttrSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(maps (N, H, W) float32, extras)`` for ``x`` (N, C, H, W) in [0, 1] on the model's
        device and ``target`` (N,) int64; raises whatever captum or the model raises."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<attribution method {self.name}>"


class MethodRegistry:
    """The attribution methods in report order, each registered once by class (a second
    class with a taken ``name`` is a ValueError). Iterating gives one instance per method."""

    def __init__(self, package: str = "", entries: tuple[str, ...] | list[str] = ()) -> None:
        self._methods: dict[str, AttrMethod] = {}
        for entry in entries:
            module, _, cls = entry.rpartition(".")
            self.register(getattr(importlib.import_module(f"{package}.{module}"), cls))

    def register(self, cls: type[AttrMethod]) -> type[AttrMethod]:
        """Add ``cls`` (usable as a class decorator); refuses a duplicate or incomplete one."""
        if not (isinstance(cls, type) and issubclass(cls, AttrMethod)):
            raise TypeError(f"{cls!r} is not an AttrMethod subclass")
        if not cls.name or cls.kind not in KINDS:
            raise ValueError(f"{cls.__qualname__}: set `name` and `kind` (one of {', '.join(KINDS)})")
        old = self._methods.get(cls.name)
        if old is not None and type(old) is not cls:
            raise ValueError(f"attribution method {cls.name!r} is already registered by {type(old).__qualname__}")
        self._methods[cls.name] = cls()
        return cls

    def names(self) -> list[str]:
        return list(self._methods)

    def get(self, name: str) -> AttrMethod:
        """The method called ``name``; KeyError listing the known ones."""
        if name not in self._methods:
            raise KeyError(f"unknown attribution method {name!r} (known: {', '.join(self._methods)})")
        return self._methods[name]

    def __iter__(self) -> Iterator[AttrMethod]:
        return iter(list(self._methods.values()))

    def __len__(self) -> int:
        return len(self._methods)

    def __contains__(self, name: object) -> bool:
        return name in self._methods


def to_map(a: torch.Tensor) -> torch.Tensor:
    """captum attribution (N, C, H, W) -> map (N, H, W) float32, the sum over channels."""
    return a.detach().float().sum(1)


def with_oom_retry(fn: Callable[[int], object], batch: int, s: AttrSettings | None = None):
    """:func:`audit.batching.with_oom_retry`, recording each halving in ``s.oom_retries``."""
    return _with_oom_retry(fn, batch, s.oom_retries.append if s is not None else None)
