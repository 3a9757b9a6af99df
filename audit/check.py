"""The check contract: what every check implements, and the lifecycle the base owns.

A check cuts its work into **units** (:class:`Unit`: a chunk of samples, a chunk of target
classes, one method, one layer), computes one **record** per unit (a ``@record``
dataclass, :mod:`audit.records`) and **summarizes** the records into a
:class:`~audit.results.CheckResult`. The base class owns the rest, the way foolbox's
``Attack`` owns the epsilon loop::

    run(ctx) = summarize([compute(u, ctx, generator(u)) for u in units(ctx)], ctx)

with the units split over the processes of a distributed run (:mod:`audit.distributed`),
each finished unit checkpointed and reused by ``--resume`` (:mod:`audit.checkpoint`),
progress shown per unit (:mod:`audit.progress`), and the records of every process merged in
unit order before ``summarize``. Unit ``u`` always gets the same generator (seeded from the
run's seed, the check's name, ``u.tag`` and ``u.index``), so the numbers do not depend on the
number of processes.

A check declares its vocabulary: ``metrics`` and ``findings`` (name/code -> meaning; gates
may only name declared metrics; docs/findings.md documents every code), ``reads`` (names of
published values it uses, when present) and ``publishes`` (name -> type, from
:mod:`audit.published`). The runner orders checks so that publishers run before their
readers (:func:`audit.registry.battery_order`).

``units`` and ``summarize`` run on every process and must be deterministic (draw only from
``ctx.generator``, the check's own seeded generator); ``compute`` runs once per unit,
wherever the unit is scheduled, and may draw only from its ``generator``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from .options import parse_options

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .context import Context
    from .results import CheckResult

__all__ = ["Check", "Unit"]


@dataclass(frozen=True)
class Unit:
    """One work unit: ``tag`` names the kind of work (``"samples"``, ``"classes"``,
    ``"method:saliency"``), ``index`` numbers it within its tag (its generator and checkpoint
    derive from both), ``payload`` is whatever ``compute`` needs (picklable: indices, names)."""

    tag: str
    index: int = 0
    payload: Any = None

    @property
    def key(self) -> str:
        return f"{self.tag}:{self.index}"


class Check:
    """Base class of a check; see the module docstring for the contract.

    Class attributes a subclass sets: ``description`` (one line for ``audit list``),
    ``metrics``, ``findings``, ``needs_data``, ``reads``, ``publishes``, ``progress_unit``
    (the word the progress lines count, e.g. ``"batch"``) and an ``Options`` dataclass
    (:mod:`audit.options`) whose fields are the keys of ``[checks.NAME]``. ``name`` is set by
    :func:`audit.registry.register_check`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_data: ClassVar[bool] = True
    metrics: ClassVar[dict[str, str]] = {}
    findings: ClassVar[dict[str, str]] = {}
    reads: ClassVar[tuple[str, ...]] = ()
    publishes: ClassVar[dict[str, type]] = {}
    progress_unit: ClassVar[str] = "unit"

    @dataclass
    class Options:
        pass

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    # -- what a check implements ------------------------------------------------
    def units(self, ctx: "Context") -> Sequence[Unit]:
        """The work units, in a fixed order (the same on every process). Default: one unit."""
        return [Unit("all")]

    def compute(self, unit: Unit, ctx: "Context", generator: "torch.Generator") -> Any:
        """The record of one unit: a ``@record`` dataclass holding CPU tensors, numbers,
        strings, lists and dicts."""
        raise NotImplementedError

    def summarize(self, records: list[Any], ctx: "Context") -> "CheckResult":
        """Metrics, findings, artifacts and summary from every unit's record (unit order);
        publishes with ``ctx.publish``."""
        raise NotImplementedError

    @classmethod
    def preflight(cls, options: Any, input_shape: Sequence[int] | None) -> None:
        """Check ``options`` against the input shape (C, H, W) once it is known, before any
        check runs; raises :class:`~audit.errors.ConfigError` (exit 4) for a value the shape
        rules out. Default: nothing to check."""

    # -- what the base owns -------------------------------------------------------
    def run(self, ctx: "Context") -> "CheckResult":
        """units -> compute (sharded, checkpointed, with progress) -> summarize."""
        units = list(self.units(ctx))
        records = ctx.run_units(units, self.compute, unit=self.progress_unit)
        res = self.summarize(records, ctx)
        res.name = self.name
        return res

    @classmethod
    def parse_options(cls, table: dict[str, Any] | None) -> Any:
        """``Options`` built from a config table; any unknown key or invalid value is a
        :class:`~audit.errors.ConfigError` (exit 4) naming it and what it accepts."""
        return parse_options(cls.name, cls.Options, table)

    @classmethod
    def option_docs(cls) -> dict[str, str]:
        """Option name -> its one-line doc (from :func:`audit.options.opt`)."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls.Options)}
