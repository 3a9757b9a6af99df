"""The battery runner: one context, each selected check run in turn, gates applied.

The context computes what every check needs once (clean logits, predictions), gives each
check its own seeded generator, and carries what a check publishes for the checks after
it (``ctx.publish(name, value)`` / ``ctx.published.get(name)``). A check that raises
becomes ``status="error"`` with the message; the others still run. Ctrl-C stops the
battery and keeps what finished (``result.interrupted``).
"""
from __future__ import annotations

import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import torch

from .checkpoint import Checkpoints, fingerprint
from .config import AuditConfig
from .data import AuditData, stratified_indices
from .distributed import DesyncError, World, chunks, map_units
from .errors import UsageError
from .model import AuditModel, resolve_device
from .policy import evaluate_gate
from .registry import get_check
from .seeding import derive_seed
from .results import AuditResult, CheckResult, GateResult, STATUS_ORDER


@dataclass
class Context:
    """What a check reads. ``logits``/``probs``/``preds`` are the clean outputs on
    ``data`` (CPU tensors), computed once."""

    model: AuditModel
    data: AuditData | None
    config: AuditConfig
    seed: int
    device: torch.device
    progress: bool = True
    logits: torch.Tensor | None = None
    published: dict[str, Any] = field(default_factory=dict)
    check_name: str = ""
    generator: torch.Generator | None = None
    world: World = field(default_factory=World)
    store: Checkpoints | None = None
    resume: bool = False
    fingerprint: str = ""

    @property
    def probs(self) -> torch.Tensor | None:
        return None if self.logits is None else self.logits.softmax(1)

    @property
    def preds(self) -> torch.Tensor | None:
        return None if self.logits is None else self.logits.argmax(1)

    def publish(self, name: str, value: Any) -> None:
        """Offer something to later checks under a documented name (docs/results.md)."""
        self.published[name] = value

    def map_units(self, n_units: int, fn, *, tag: str = "units", desc: str = "", unit: str = "unit",
                  keep=None) -> list:
        """Run ``fn(k, generator)`` for work units ``k = 0 .. n_units-1`` and return all their
        results in unit order. Units are split over the processes of a distributed run
        (:mod:`audit.distributed`); each has its own seeded generator, so the results do not
        depend on how many processes ran them. With a checkpoint folder, finished units are
        saved (those ``keep(result)`` accepts, when given) and (``--resume``) reused."""
        name, fp, store = self.check_name, self.fingerprint, self.store
        load = (lambda k: store.load_unit(name, tag, k, fp)) if store is not None and self.resume else None
        save = (lambda k, r: store.save_unit(name, tag, k, fp, r)) if store is not None else None
        mine = len(range(self.world.rank, n_units, self.world.size))
        with self.bar(total=mine, desc=desc or tag, unit=unit) as bar:
            return map_units(self.world, n_units, fn, seed=derive_seed(self.seed, name), tag=tag, load=load,
                             save=save, on_done=lambda: bar.update(1), keep=keep, where=name)

    def agree(self, label: str, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (e.g. a batch size chosen from free GPU memory,
        which must be the same everywhere for the units to compute the same numbers)."""
        return self.world.from_main(f"agree:{self.check_name}/{label}", value) if self.world.distributed else value

    def bar(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"):
        """A progress bar on stderr (silent with --quiet)."""
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=f"{self.check_name}: {desc}" if desc else self.check_name,
                    unit=unit, disable=not self.progress, leave=False, dynamic_ncols=True)


def run_audit(model: AuditModel, data: AuditData | None = None, config: AuditConfig | str | dict | None = None, *,
              progress: bool = False, log=None, checkpoint: str | os.PathLike | None = None,
              resume: bool = False, world: World | None = None) -> AuditResult:
    """Run the configured battery on ``model`` and ``data`` and return an :class:`AuditResult`
    (the reports are not written; call ``result.save(out)``).

    With ``checkpoint=OUT``, each finished check is checkpointed under ``OUT/.audit-checkpoint``;
    with ``resume=True`` as well, checks checkpointed by an earlier run with the same model,
    samples, seed and options are reused instead of run again (see audit.checkpoint).

    In a torch.distributed run every rank calls this with the same arguments and ``world``
    (``audit.distributed.current()`` for the initialized process group; the default is a
    single process, whatever the environment); shardable checks split their work units
    over the ranks, the others run on rank 0, and every rank returns the same result."""
    cfg = AuditConfig.coerce(config)
    world = world if world is not None else World()
    progress = progress and world.is_main
    if not world.is_main:
        log = None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device) if cfg.device != "auto" else model.device
    if device != model.device:
        model.to(device)
    names = cfg.selected_checks()
    checks = [(n, get_check(n)) for n in names]
    if data is None:
        need = [n for n, c in checks if c.needs_data]
        if need:
            raise UsageError(f"check(s) {', '.join(need)} need data: pass --data DIR (or select data-free checks with --checks)")
    if not model.ready:
        model.finalize(data.input_shape if data is not None else None, "data",
                       class_names=data.class_names if data is not None else None)
    if data is not None:
        if tuple(data.input_shape) != tuple(model.spec.input_shape):
            raise UsageError(f"the data is {_shape(data.input_shape)} but the model takes {_shape(model.spec.input_shape)}; "
                             "pass --resize / --convert-channels")
        if len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= model.num_classes):
            raise UsageError(f"the data's labels run {int(data.y.min())}..{int(data.y.max())} but the model has "
                             f"{model.num_classes} outputs; fix the class folders or labels, or pass --labels FILE")
        if cfg.samples is not None and len(data) > cfg.samples:  # the API path: data loaded whole
            data = data.subset(stratified_indices(data.y, cfg.samples, cfg.seed))
            data.notes.append(f"class-stratified subset of {len(data)} samples (seed {cfg.seed})")
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    store = Checkpoints(checkpoint) if checkpoint is not None else None
    ctx = Context(model=model, data=data, config=cfg, seed=cfg.seed, device=model.device, progress=progress,
                  world=world, store=store, resume=resume)
    if data is not None:
        parts = chunks(len(data), cfg.batch_size)  # work units, split over the ranks of a distributed run
        ctx.logits = torch.cat(map_units(world, len(parts), lambda k, g: model.logits(data.x[parts[k]]),
                                         seed=cfg.seed, tag="logits")) if parts else model.logits(data.x)
        bad = ~torch.isfinite(ctx.logits).all(1)
        if bad.any():
            raise UsageError(f"the model outputs NaN or infinite values on {int(bad.sum())} of {len(data)} images "
                             f"(first: {data.ids[int(bad.nonzero()[0])]}); check its weights and normalization")
    results: list[CheckResult] = []
    interrupted = False
    reused: list[str] = []
    info = model.describe()
    for name, cls in checks:
        res = CheckResult(name=name)
        ctx.check_name = name
        s = derive_seed(cfg.seed, name)
        ctx.generator = torch.Generator().manual_seed(s)
        torch.manual_seed(s)
        options = cfg.options_for(name)
        fp = fingerprint(model_info=info, data=data, seed=cfg.seed, check=name, options=options, version=_version(),
                         batch_size=cfg.batch_size)
        ctx.fingerprint = fp
        saved = store.load(name, fp) if (store is not None and resume and world.is_main) else None
        if world.distributed and resume:
            saved = world.from_main(f"resume:{name}", saved)
        if saved is not None:
            res, pub = saved
            ctx.published.update(pub)
            results.append(res)
            reused.append(name)
            if log:
                log(f"check {name}: {res.status} (reused from {store.dir})")
            continue
        t = time.perf_counter()
        if log:
            log(f"check {name}: running")
        before = set(ctx.published)
        alone = world.distributed and not cls.shardable  # runs on rank 0, the others receive it
        aborted = False
        if not alone or world.is_main:
            ctx.world = World() if alone else world
            try:
                res = cls(options).run(ctx)
                res.name = name
            except KeyboardInterrupt:
                interrupted = True
                res.error = "interrupted"
            except DesyncError as e:
                aborted = True
                res.error = f"stopped: {e}"
            except Exception as e:  # noqa: BLE001 - a crashing check must not sink the battery
                res.error = f"{type(e).__name__}: {e}".strip().splitlines()[0][:500]
                res.data["traceback"] = traceback.format_exc()[-4000:]
            ctx.world = world
            res.duration_s = round(time.perf_counter() - t, 3)  # as saved, so a re-render is identical
        new = {k: v for k, v in ctx.published.items() if k not in before}
        if world.distributed and not interrupted and not aborted:
            try:
                if alone:  # rank 0's result, verdict included, for every rank
                    res, new = world.from_main(f"alone:{name}", (res, new))
                    ctx.published.update(new)
                else:  # every rank ends the check together, and with the same verdict
                    errors = world.exchange(f"check-end:{name}", res.error)
                    first = next((f"rank {r}: {e}" for r, e in enumerate(errors) if e), None)
                    if first and not res.error:
                        res.error = first
            except DesyncError as e:
                aborted = True
                res.error = res.error or f"stopped: {e}"
        res.finalize_status()
        results.append(res)
        if store is not None and res.error is None and world.is_main:
            store.save(res, fp, new)
            store.drop_units(name)
        if log:
            log(f"check {name}: {res.status} ({res.duration_s:.1f} s){' - ' + res.error if res.error else ''}")
        if interrupted or aborted:  # what ran is kept; --resume picks up the rest
            break
    duration = time.perf_counter() - t0
    gates = [evaluate_gate(g, results) for g in cfg.gates]
    if cfg.fail_on != "none":
        gates.append(_findings_gate(results, cfg.fail_on))
    run = {"seed": cfg.seed, "device": str(model.device), "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(terse=True),
           "started": started.isoformat(timespec="seconds"), "duration_s": round(duration, 3),
           "checks": names, "config": cfg.source, "threads": torch.get_num_threads(), "fail_on": cfg.fail_on, "samples": cfg.samples,
           "tool_version": _version(), "world_size": world.size}
    if torch.cuda.is_available() and model.device.type == "cuda":
        run["gpu"] = torch.cuda.get_device_name(model.device)
    if store is not None:
        run["resumed"] = reused
    result = AuditResult(model=info, run=run, checks=results, gates=gates,
                         data=data.describe() if data is not None else {}, interrupted=interrupted)
    result.finalize_status()
    return result


def _findings_gate(results: list[CheckResult], fail_on: str) -> GateResult:
    level = STATUS_ORDER.index(fail_on)
    hits = [(c.name, f) for c in results for f in c.findings if STATUS_ORDER.index(f.severity) >= level]
    expr = f"findings[severity>={fail_on}]"
    if hits:
        first = f"{hits[0][0]}: {hits[0][1].code}"
        return GateResult(expr, "== 0", "fail", "fail", float(len(hits)),
                          f"{len(hits)} finding(s) at severity >= {fail_on} (--fail-on {fail_on}), first {first}")
    return GateResult(expr, "== 0", "fail", "pass", 0.0, f"no findings at severity >= {fail_on}")


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s) if s else "unknown"


def _version() -> str:
    from . import __version__

    return __version__
