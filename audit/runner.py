"""The battery runner: one context, each selected check run in turn, gates applied.

:func:`run_audit` is a sequence of named steps: prepare the model and data, compute the clean
outputs once, run each check in battery order (publishers before their readers, see
:func:`audit.registry.battery_order`), evaluate the gates, describe the run. A check that
raises becomes ``status="error"`` with the message; the others still run. Ctrl-C stops the
battery and keeps what finished (``result.interrupted``).
"""
from __future__ import annotations

import os
import platform
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from .check import Check
from .checkpoint import Checkpoints, content_key, fingerprint
from .config import AuditConfig
from .context import Context
from .data import AuditData, stratified_indices
from .distributed import DesyncError, World, chunks, map_units
from .errors import UsageError, first_line
from .fastpath import FastSettings, fast_metadata
from .model import AuditModel, resolve_device
from .policy import evaluate_gate
from .progress import Progress
from .registry import battery_order, get_check
from .results import AuditResult, CheckResult, GateResult, STATUS_ORDER
from .seeding import derive_seed
from .version import __version__

__all__ = ["run_audit", "Context", "derive_seed"]


@dataclass
class _Battery:
    """What the check loop accumulates."""

    results: list[CheckResult] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    interrupted: bool = False
    aborted: bool = False
    checkpoint_failed: str = ""  #: why checkpoints could not be written (once per run)


def run_audit(model: AuditModel, data: AuditData | None = None, config: AuditConfig | str | dict | None = None, *,
              progress: bool = False, log=None, checkpoint: str | os.PathLike | None = None,
              resume: bool = False, world: World | None = None) -> AuditResult:
    """Run the configured battery on ``model`` and ``data`` and return an :class:`AuditResult`
    (the reports are not written; call ``result.save(out)``).

    With ``checkpoint=OUT``, each finished check (and each finished work unit) is
    checkpointed under ``OUT/.audit-checkpoint``; with ``resume=True`` as well, what an
    earlier run with the same model, samples, seed and options finished is reused (see
    audit.checkpoint).

    In a torch.distributed run every rank calls this with the same arguments and ``world``
    (``audit.distributed.current()`` for the initialized process group; the default is a
    single process, whatever the environment); checks split their work units over the
    ranks and every rank returns the same result.

    Raises :class:`~audit.errors.UsageError` (exit 4) when the data does not fit the model or
    a selected check needs data that was not given, and ConfigError (exit 4) for an option the
    input shape rules out (:meth:`audit.check.Check.preflight`), before any check runs."""
    cfg = AuditConfig.coerce(config)
    world = world if world is not None else World()
    log = log if world.is_main else None
    names = battery_order(cfg.selected_checks())
    checks = [(n, get_check(n)) for n in names]
    data = _prepare(model, data, cfg, checks)
    for name, cls in checks:  # options the input shape rules out: exit 4 before anything runs
        cls.preflight(cfg.options_for(name), model.spec.input_shape)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    store = Checkpoints(checkpoint) if checkpoint is not None else None
    ctx = Context(model=model, data=data, config=cfg, seed=cfg.seed, world=world,
                  progress=Progress(progress and world.is_main), store=store, resume=resume)
    ctx.logits = _clean_logits(model, data, cfg, world, ctx.progress)
    battery = _Battery()
    info = model.describe()
    content = content_key(model, data) if store is not None else ""
    for name, cls in checks:
        try:
            _run_one(ctx, name, cls, content, battery, log)
        except KeyboardInterrupt:  # between checks (a checkpoint being saved): what finished is kept
            battery.interrupted = True
        if battery.interrupted or battery.aborted:  # what ran is kept; --resume picks up the rest
            break
    gates = _gates(battery.results, cfg)
    run = _run_metadata(cfg, model, world, names, started, time.perf_counter() - t0)
    if store is not None:
        run["resumed"] = battery.reused
        if battery.checkpoint_failed:
            run["checkpoint_error"] = battery.checkpoint_failed
    result = AuditResult(model=info, run=run, checks=battery.results, gates=gates,
                         data=data.describe() if data is not None else {}, interrupted=battery.interrupted)
    result.finalize_status()
    return result


# ---------------------------------------------------------------------------- steps
def _prepare(model: AuditModel, data: AuditData | None, cfg: AuditConfig, checks) -> AuditData | None:
    """Threads and device set, the model finalized, the data checked against it and subset."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device) if cfg.device != "auto" else model.device
    if device != model.device:
        model.to(device)
    if data is None:
        need = [n for n, c in checks if c.needs_data]
        if need:
            raise UsageError(f"check(s) {', '.join(need)} need data: pass --data DIR (or select data-free checks with --checks)")
    if not model.ready:
        model.finalize(data.input_shape if data is not None else None, "data",
                       class_names=data.class_names if data is not None else None)
    if data is None:
        return None
    check_fit(model, data)
    if cfg.samples is not None and len(data) > cfg.samples:  # the API path: data loaded whole
        data = data.subset(stratified_indices(data.y, cfg.samples, cfg.seed))
        data.notes.append(f"class-stratified subset of {len(data)} samples (seed {cfg.seed})")
    return data


def _clean_logits(model: AuditModel, data: AuditData | None, cfg: AuditConfig, world: World,
                  progress: Progress | None = None) -> torch.Tensor | None:
    """The clean logits (N, K) on the CPU, once per run, in work units of ``batch_size``
    samples split over the ranks (a set decoded on demand shows its progress); non-finite
    outputs are a UsageError."""
    if data is None:
        return None
    parts = chunks(len(data), cfg.batch_size)
    bar = (progress or Progress()).units(-(-len(parts) // world.size), "clean: inference", "batch") \
        if data.lazy and world.is_main else None

    def unit(k: int, g) -> torch.Tensor:
        out = model.logits(data.x[parts[k]], batch_size=cfg.batch_size)
        if bar is not None:
            bar.update(1)
        return out

    logits = torch.cat(map_units(world, len(parts), unit, seed=cfg.seed, tag="logits")) if parts \
        else torch.empty(0, model.num_classes)
    if bar is not None:
        bar.close()
    bad = ~torch.isfinite(logits).all(1)
    if bad.any():
        raise UsageError(f"the model outputs NaN or infinite values on {int(bad.sum())} of {len(data)} images "
                         f"(first: {data.ids[int(bad.nonzero()[0])]}); check its weights and normalization")
    return logits


def _run_one(ctx: Context, name: str, cls: type[Check], content: str, battery: _Battery, log) -> None:
    """Check ``name``: reused from its checkpoint, or run; its result appended to the battery.
    ``content``: :func:`audit.checkpoint.content_key` of the model and data."""
    cfg, world, store = ctx.config, ctx.world, ctx.store
    options = cfg.options_for(name)
    fp = fingerprint(content=content, seed=cfg.seed, check=name, options=options, version=_version(),
                     batch_size=cfg.batch_size, precision=cfg.precision)
    sctx = ctx.scoped(name, declared=cls.publishes, fingerprint=fp)
    saved = store.load(name, fp) if (store is not None and ctx.resume and world.is_main) else None
    if world.distributed and ctx.resume:
        saved = world.from_main(f"resume:{name}", saved)
    if saved is not None:
        res, pub = saved
        ctx.published.update(pub)
        battery.results.append(res)
        battery.reused.append(name)
        if log:
            log(f"check {name}: {res.status} (reused from {store.dir})")
        return
    if log:
        log(f"check {name}: running")
    before = set(ctx.published)
    t = time.perf_counter()
    res = CheckResult(name=name)
    try:
        res = cls(options).run(sctx)
        res.name = name
    except KeyboardInterrupt:
        battery.interrupted = True
        res.error = "interrupted"
    except DesyncError as e:
        battery.aborted = True
        res.error = f"stopped: {e}"
    except Exception as e:  # noqa: BLE001 - a crashing check must not sink the battery
        res.error = first_line(f"{type(e).__name__}: {e}", 500)
        res.data["traceback"] = traceback.format_exc()[-4000:]
    res.duration_s = round(time.perf_counter() - t, 3)  # as saved, so a re-render is identical
    if world.distributed and not battery.interrupted and not battery.aborted:
        _end_together(world, name, res, battery)
    res.finalize_status()
    battery.results.append(res)
    if store is not None and res.error is None and world.is_main:
        if store.save(res, fp, {k: v for k, v in ctx.published.items() if k not in before}):
            store.drop_units(name)
        elif not battery.checkpoint_failed:
            battery.checkpoint_failed = (f"cannot write checkpoints into {store.dir} (a file in its place, no "
                                         "permission or no space); the audit goes on without them, so --resume "
                                         "will rerun these checks")
            if log:
                log(f"warning: {battery.checkpoint_failed}")
    if log:
        log(f"check {name}: {res.status} ({res.duration_s:.1f} s){' - ' + res.error if res.error else ''}")


def _end_together(world: World, name: str, res: CheckResult, battery: _Battery) -> None:
    """Every rank ends the check together and with the same verdict (the first rank's error)."""
    try:
        errors = world.exchange(f"check-end:{name}", res.error)
        first = next((f"rank {r}: {e}" for r, e in enumerate(errors) if e), None)
        if first and not res.error:
            res.error = first
    except DesyncError as e:
        battery.aborted = True
        res.error = res.error or f"stopped: {e}"


def _gates(results: list[CheckResult], cfg: AuditConfig) -> list[GateResult]:
    gates = [evaluate_gate(g, results) for g in cfg.gates]
    if cfg.fail_on != "none":
        gates.append(_findings_gate(results, cfg.fail_on))
    return gates


def _run_metadata(cfg: AuditConfig, model: AuditModel, world: World, names: list[str], started: datetime,
                  duration: float) -> dict:
    run = {"seed": cfg.seed, "device": str(model.device), "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(terse=True),
           "started": started.isoformat(timespec="seconds"), "duration_s": round(duration, 3),
           "checks": names, "config": cfg.source, "threads": torch.get_num_threads(), "fail_on": cfg.fail_on,
           "samples": cfg.samples, "tool_version": _version(), "world_size": world.size,
           "fast_path": fast_metadata(model, FastSettings.of(cfg))}
    if torch.cuda.is_available() and model.device.type == "cuda":
        run["gpu"] = torch.cuda.get_device_name(model.device)
    return run


def _findings_gate(results: list[CheckResult], fail_on: str) -> GateResult:
    level = STATUS_ORDER.index(fail_on)
    hits = [(c.name, f) for c in results for f in c.findings if STATUS_ORDER.index(f.severity) >= level]
    expr = f"findings[severity>={fail_on}]"
    if hits:
        first = f"{hits[0][0]}: {hits[0][1].code}"
        return GateResult(expr, "== 0", "fail", "fail", float(len(hits)),
                          f"{len(hits)} finding(s) at severity >= {fail_on} (--fail-on {fail_on}), first {first}")
    return GateResult(expr, "== 0", "fail", "pass", 0.0, f"no findings at severity >= {fail_on}")


def check_fit(model: AuditModel, data: AuditData) -> None:
    """:class:`UsageError` when ``data`` (loaded without ``model``, e.g. through the API) does
    not fit the finalized ``model``: another input shape, or labels outside its outputs."""
    if tuple(data.input_shape) != tuple(model.spec.input_shape):
        raise UsageError(f"the data is {_shape(data.input_shape)} but the model takes {_shape(model.spec.input_shape)}; "
                         "load the data with the model (load_data(path, model=model), as audit run does) and "
                         "resize=True / convert_channels=True (--resize / --convert-channels)")
    if len(data) and (int(data.y.min()) < 0 or int(data.y.max()) >= model.num_classes):
        raise UsageError(f"the data's labels run {int(data.y.min())}..{int(data.y.max())} but the model has "
                         f"{model.num_classes} outputs; store labels 0..{model.num_classes - 1}, or load the data with "
                         "the model (load_data(path, model=model)) to map class folders by name")


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s) if s else "unknown"


def _version() -> str:
    return __version__
