"""The typed context a check reads: the model, the data, the clean outputs computed once,
what earlier checks published, and the services the base class uses (work units,
checkpoints, progress, the process group).

The runner builds one :class:`Context` per run and scopes it to each check in turn
(:meth:`Context.scoped`): ``check_name``, ``generator`` (the check's own seeded generator)
and ``fingerprint`` (what its checkpoints are keyed by) belong to the running check.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch

from .check import Unit
from .distributed import World, map_units
from .gradients import gradient_problem
from .progress import Progress
from .seeding import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import Checkpoints
    from .config import AuditConfig
    from .data import AuditData
    from .model import AuditModel

__all__ = ["Context", "PublishError"]


class PublishError(TypeError):
    """A check published a name it does not declare, or a value of the wrong type."""


@dataclass
class _RunShared:
    """What every scope of one run shares (mutable)."""

    published: dict[str, Any] = field(default_factory=dict)
    gradient_problem: Any = ...  #: ... = not probed yet


@dataclass
class Context:
    """What a check reads.

    ``logits`` (N, K) float32 are the clean outputs on ``data`` (CPU), computed once per run;
    ``probs`` and ``preds`` derive from them. ``seed`` is the run's seed; ``generator`` the
    running check's generator (seeded from ``seed`` and the check's name)."""

    model: "AuditModel"
    data: "AuditData | None"
    config: "AuditConfig"
    seed: int = 0
    logits: torch.Tensor | None = None
    world: World = field(default_factory=World)
    progress: Progress = field(default_factory=Progress)
    store: "Checkpoints | None" = None
    resume: bool = False
    check_name: str = ""
    declared: dict[str, type] = field(default_factory=dict)  #: what the running check may publish
    generator: torch.Generator = field(default_factory=torch.Generator)
    fingerprint: str = ""
    shared: _RunShared = field(default_factory=_RunShared, repr=False)

    # -- the clean outputs -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def probs(self) -> torch.Tensor | None:
        return None if self.logits is None else self.logits.softmax(1)

    @property
    def preds(self) -> torch.Tensor | None:
        return None if self.logits is None else self.logits.argmax(1)

    @property
    def published(self) -> dict[str, Any]:
        """Name -> value published by the checks that ran before (absent when they did not)."""
        return self.shared.published

    @property
    def gradient_problem(self) -> str | None:
        """Why input gradients cannot be used, or None (:mod:`audit.gradients`), probed once
        per run on the first two samples and their labels (without data: a grey image and
        every output); the same on every rank."""
        if self.shared.gradient_problem is ...:
            if self.data is not None and len(self.data):
                x, t = self.data.x[:2].float(), self.data.y[:2]
            else:
                c, h, w = self.model.spec.input_shape
                x, t = torch.full((1, c, h, w), 0.5), None
            problem = gradient_problem(self.model, x.to(self.device), None if t is None else t.to(self.device))
            if self.world.distributed:
                problem = self.world.from_main("gradient_problem", problem)
            self.shared.gradient_problem = problem
        return self.shared.gradient_problem

    # -- scoping -------------------------------------------------------------------
    def scoped(self, check_name: str, *, declared: dict[str, type] | None = None, fingerprint: str = "") -> "Context":
        """This context for running check ``check_name`` (its own generator, seeded from the
        run's seed and the name; the global torch RNG is seeded the same way)."""
        s = derive_seed(self.seed, check_name)
        torch.manual_seed(s)
        return replace(self, check_name=check_name, declared=dict(declared or {}),
                       generator=torch.Generator().manual_seed(s), fingerprint=fingerprint)

    def publish(self, name: str, value: Any) -> None:
        """Offer ``value`` to later checks under ``name``; the running check must declare it
        in ``publishes`` with ``value``'s type."""
        want = self.declared.get(name)
        if want is None:
            raise PublishError(f"check {self.check_name!r} publishes {name!r} without declaring it in `publishes`")
        if not isinstance(value, want):
            raise PublishError(f"check {self.check_name!r} publishes {name!r} as {type(value).__name__}, "
                               f"declared {want.__name__}")
        self.shared.published[name] = value

    # -- work units ------------------------------------------------------------------
    def run_units(self, units: Sequence[Unit], compute: Callable[[Unit, "Context", torch.Generator], Any], *,
                  unit: str = "unit") -> list[Any]:
        """``compute(u, ctx, generator)`` for every unit, split over the processes, each
        finished unit checkpointed (``--resume`` reuses it); every unit's record, in unit
        order, on every process. A record must be a ``@record`` dataclass."""
        from .records import is_record

        keys = [u.key for u in units]
        if len(set(keys)) != len(keys):
            raise ValueError(f"check {self.check_name!r}: duplicate work units {sorted(k for k in keys if keys.count(k) > 1)[:3]}")

        def one(k: int, gen: torch.Generator) -> Any:
            rec = compute(units[k], self, gen)
            if not is_record(rec):
                raise TypeError(f"check {self.check_name!r}: compute() returned {type(rec).__name__}, not a @record dataclass")
            return rec

        return self._map(len(units), one, keys=keys, desc="units", unit=unit)

    def _map(self, n: int, fn, *, keys: list[str], desc: str, unit: str) -> list[Any]:
        name, fp, store = self.check_name, self.fingerprint, self.store
        load = (lambda k: store.load_unit(name, keys[k], fp)) if store is not None and self.resume else None
        save = (lambda k, r: store.save_unit(name, keys[k], fp, r)) if store is not None else None
        mine = len(range(self.world.rank, n, self.world.size))
        with self.progress.units(mine, f"{name}: {desc}", unit) as bar:
            return map_units(self.world, n, fn, seed=derive_seed(self.seed, name), keys=keys, load=load, save=save,
                             on_done=lambda: bar.update(1), where=name)

    def agree(self, label: str, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. a batch size chosen from free GPU memory)."""
        return self.world.from_main(f"agree:{self.check_name}/{label}", value) if self.world.distributed else value

    def bar(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
        """An inner progress bar (a terminal only; silent in logs and with --quiet)."""
        return self.progress.bar(iterable, total=total, desc=f"{self.check_name}: {desc}" if desc else self.check_name,
                                 unit=unit)
