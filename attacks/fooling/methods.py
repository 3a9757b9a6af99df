"""The fooling methods: how the ``fooling`` check synthesizes one image per target class.

A method is a :class:`FoolingMethod` subclass registered with ``@register_method``; the
registry refuses a name taken by another class. The check's ``methods`` option accepts the
registered names, its work units come from :meth:`FoolingMethod.parts`, its metrics count
the method's ``cost`` and its gallery is titled with the method's ``title``, so **adding a
method is one class here with its ``@register_method`` line** (docs/fooling.md lists the
methods; a test checks that the table names every registered one).

Registered (Nguyen, Yosinski & Clune 2015):

* ``gradient`` -- white-box gradient ascent from uniform noise
  (:func:`attacks.fooling.search.gradient_ascent`), one work unit per chunk of
  ``batch_size`` target classes (independent per class);
* ``evolution_direct`` and ``evolution_cppn`` -- black-box MAP-Elites
  (:func:`attacks.fooling.search.map_elites`) over the direct pixel encoding and over CPPNs
  (:mod:`attacks.fooling.cppn`), one work unit each (the archive spans the classes).

Every method draws from its own generator derived from the check's seed base and a fixed
name (:func:`part_generator`), so its numbers do not depend on which other
methods run, nor on the unit's position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from audit.distributed import chunks
from audit.seeding import derive_seed

from .cppn import CPPNEncoding, DirectEncoding
from .search import SearchResult, gradient_ascent, map_elites

__all__ = ["FoolingMethod", "SearchSetup", "register_method", "registered_methods", "get_method",
           "part_generator", "SEED_MODULUS"]

#: modulus of the seeds the methods derive from the check's seed base (kept from the first
#: version of the check, so the numbers stay the same)
SEED_MODULUS = 2**63 - 1

_METHODS: dict[str, type["FoolingMethod"]] = {}


def part_generator(base: int, part: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one part of the check (``"targets"``, ``"gradient:0"``,
    ``"evolution_cppn"``, ``"garbage"``) on ``device``, seeded with
    ``derive_seed(base, part, modulus=SEED_MODULUS)`` from the check's seed base."""
    return torch.Generator(device=device).manual_seed(derive_seed(base, part, modulus=SEED_MODULUS))


def register_method(cls: type["FoolingMethod"]) -> type["FoolingMethod"]:
    """Class decorator: register ``cls`` under ``cls.name``; a name already registered by
    another class is a ValueError."""
    if not cls.name:
        raise ValueError(f"fooling method class {cls.__qualname__} has no name")
    old = _METHODS.get(cls.name)
    if old is not None and old is not cls:
        raise ValueError(f"fooling method {cls.name!r} is already registered by {old.__module__}.{old.__qualname__}")
    _METHODS[cls.name] = cls
    return cls


def registered_methods() -> dict[str, type["FoolingMethod"]]:
    """Name -> class of every registered method, in registration order."""
    return dict(_METHODS)


def get_method(name: str) -> "FoolingMethod":
    """An instance of the method ``name`` (KeyError for an unknown name; the options refuse
    those first)."""
    return _METHODS[name]()


@dataclass(frozen=True)
class SearchSetup:
    """What every search of one run shares: ``model`` (an AuditModel, pixel space in its
    ``spec.bounds``), ``targets`` (all target class indices, ascending), ``shape`` the
    input shape (C, H, W), ``batch_size`` images per forward pass, ``levels`` the
    confidences whose first step/query is recorded, ``base`` the check's seed base and
    ``progress`` an inner progress-bar factory (``ctx.bar``) or None; ``path`` the gradient
    loops' :class:`audit.fastpath.FastPath` (None: the fp32 eager model)."""

    model: Any
    targets: list[int]
    shape: tuple[int, int, int]
    batch_size: int
    levels: tuple[float, ...]
    base: int
    progress: Callable | None = None
    path: Any = None

    def generator(self, part: str, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator of one part of the check (:func:`part_generator`)."""
        return part_generator(self.base, part, device)


class FoolingMethod:
    """A way to synthesize fooling images. Subclasses set ``name`` (the option value),
    ``access`` (``"white-box"`` or ``"black-box"``), ``cost`` (``"steps"`` or
    ``"queries"``: the metric that counts its work), ``title`` (the gallery's words) and
    ``needs_gradient`` (a RuntimeError of its search, e.g. no input gradient, is reported as
    ``fooling.gradient_unavailable`` and the method skipped), and implement :meth:`search`."""

    name: ClassVar[str] = ""
    access: ClassVar[str] = "black-box"
    cost: ClassVar[str] = "queries"
    title: ClassVar[str] = ""
    needs_gradient: ClassVar[bool] = False

    def parts(self, n_targets: int, batch_size: int) -> list[list[int]]:
        """The work units: positions in the target list each unit searches (default: one
        unit over all targets)."""
        return [list(range(n_targets))]

    def search(self, setup: SearchSetup, part: list[int], options: Any) -> SearchResult:
        """The best image per target of ``part`` (positions in ``setup.targets``), images in
        the model's bounds; ``options`` is the check's Options. A RuntimeError of a
        ``needs_gradient`` method is reported as ``fooling.gradient_unavailable``."""
        raise NotImplementedError


@register_method
class GradientAscent(FoolingMethod):
    """White-box: Adam ascent on the target's log-softmax from uniform noise, with L2 decay,
    optional blur, clamped to the bounds (:func:`~attacks.fooling.search.gradient_ascent`)."""

    name = "gradient"
    access = "white-box"
    cost = "steps"
    title = "gradient ascent"
    needs_gradient = True

    def parts(self, n_targets: int, batch_size: int) -> list[list[int]]:
        return [p.tolist() for p in chunks(n_targets, batch_size)]

    def search(self, setup: SearchSetup, part: list[int], options: Any) -> SearchResult:
        o, model = options, setup.model
        g = setup.generator(f"gradient:{part[0] if part else 0}")
        return gradient_ascent(model, [setup.targets[i] for i in part], setup.shape, steps=o.steps, lr=o.lr,
                               l2_decay=o.l2_decay, blur_every=o.blur_every, blur_sigma=o.blur_sigma,
                               bounds=model.spec.bounds, batch_size=setup.batch_size, gen=g, device=model.device,
                               early_stop=o.early_stop, levels=setup.levels, progress=setup.progress,
                               path=setup.path)


class _Evolution(FoolingMethod):
    """Black-box MAP-Elites over the genome encoding :meth:`encoding` returns; the budget is
    ``queries_per_class`` images per target class."""

    def encoding(self, shape: tuple[int, int, int], options: Any, device: torch.device):
        raise NotImplementedError

    def search(self, setup: SearchSetup, part: list[int], options: Any) -> SearchResult:
        o, model = options, setup.model
        dev = model.device
        targets = [setup.targets[i] for i in part]
        r = map_elites(_Bounded(model), self.encoding(setup.shape, o, dev), targets,
                       queries=o.queries_per_class * len(targets), children=o.children,
                       gen=setup.generator(self.name, dev), device=dev, batch_size=setup.batch_size,
                       early_stop=o.early_stop, levels=setup.levels, progress=setup.progress)
        r.images = _to_bounds(r.images, model.spec.bounds)
        return r


@register_method
class EvolutionDirect(_Evolution):
    """MAP-Elites over a direct encoding: one gene per pixel value (:class:`DirectEncoding`)."""

    name = "evolution_direct"
    title = "evolution, direct pixel encoding"

    def encoding(self, shape, options, device):
        return DirectEncoding(shape, rate=options.mutation_rate, device=device)


@register_method
class EvolutionCPPN(_Evolution):
    """MAP-Elites over compositional pattern-producing networks (:class:`CPPNEncoding`)."""

    name = "evolution_cppn"
    title = "evolution, CPPN encoding"

    def encoding(self, shape, options, device):
        return CPPNEncoding(shape, rate=options.mutation_rate, device=device, layers=options.cppn_layers,
                            width=options.cppn_width)


class _Bounded:
    """The model seen by the evolution: genomes render in [0, 1]; map them to the bounds."""

    def __init__(self, model) -> None:
        self.model = model
        self.lo, self.hi = model.spec.bounds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_to_bounds(x, (self.lo, self.hi)))


def _to_bounds(x: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """``x`` in [0, 1] mapped linearly to ``bounds`` (unchanged for (0, 1))."""
    lo, hi = bounds
    return x if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * x
