"""The ``audit`` command. Thin: arguments -> one AuditConfig -> the same ``run_audit`` the
API offers -> reports -> an :class:`~audit.errors.ExitCode`. ``main(argv)`` runs in-process
(that is how it is tested) and never raises: errors become one line on stderr."""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .cli_args import build_parser
from .errors import AuditError, ExitCode, UsageError, first_line

if TYPE_CHECKING:
    from .config import AuditConfig


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from .signals import sigterm_as_ctrl_c

    sigterm_as_ctrl_c()  # CI's cancel and `timeout` end a run like Ctrl-C
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0)
        if args.command is None:
            parser.print_help()
            return ExitCode.USAGE_ERROR
        from .signals import signals_held

        with signals_held():  # a Ctrl-C inside torch's C-extension import can crash the interpreter: held
            import torch  # noqa: F401 - until the import is done, then it is the one-line "interrupted"
        try:
            return int({"run": _cmd_run, "demo": _cmd_demo, "report": _cmd_report, "list": _cmd_list,
                        "diff": _cmd_diff, "init": _cmd_init,
                        "inspect": _cmd_inspect}[args.command](args))
        finally:
            from .outputs import release_locks

            release_locks()  # the output folder is free again once the command ends
    except KeyboardInterrupt:
        print(f"{_me()}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (`audit inspect --json | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return ExitCode.INTERRUPTED
    except AuditError as e:
        if debug:
            traceback.print_exc()
        print(f"{_me()}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, exit 3
        if debug:
            traceback.print_exc()
        msg = first_line(e)
        if type(e).__name__ in ("DistBackendError", "DistNetworkError") or "Connection reset by peer" in msg \
                or "Connection closed by peer" in msg:
            print(f"{_me()}: error: another process of the distributed run failed or died ({first_line(e, 160)}); "
                  "the failing rank's own message and torchrun's summary say which", file=sys.stderr)
            return ExitCode.INTERNAL_ERROR
        print(f"{_me()}: internal error: {first_line(e, with_type=True)} (re-run with --debug for the traceback)",
              file=sys.stderr)
        return ExitCode.INTERNAL_ERROR


def _me() -> str:
    """``audit``, or ``audit[rank N]`` in one process of a distributed run."""
    from .distributed import launched

    return f"audit[rank {os.environ.get('RANK', '?')}]" if launched() else "audit"


def _logger(quiet: bool):
    def log(msg: str) -> None:
        if not quiet:
            print(f"audit: {msg}", file=sys.stderr, flush=True)

    return log


def _config_from_args(args) -> "AuditConfig":
    from .config import AuditConfig


    cfg = AuditConfig.load(args.config) if getattr(args, "config", None) else AuditConfig()
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if getattr(args, "checks", None) else None
    if getattr(args, "budget", None):  # --budget: [checks.adversarial] budget
        opts = {k: dict(v) for k, v in cfg.check_options.items()}
        opts.setdefault("adversarial", {})["budget"] = args.budget
        cfg = cfg.replace(check_options=opts)
    return cfg.replace(seed=getattr(args, "seed", None), samples=getattr(args, "samples", None), device=args.device,
                       checks=checks, fail_on=getattr(args, "fail_on", None),
                       batch_size=getattr(args, "batch_size", None), threads=getattr(args, "threads", None),
                       precision=getattr(args, "precision", None), compile=getattr(args, "compile", None))


def _world(cfg):
    """Join the process group when torchrun launched this process (one of several)."""
    from .distributed import init_from_env

    return init_from_env(cfg.device)


def _cmd_run(args) -> int:
    from .cli_load import data_from_args, model_from_args

    cfg = _config_from_args(args)  # config errors before any heavy work
    world = _world(cfg)
    log = _logger(args.quiet or not world.is_main)
    if args.concepts:
        if not Path(args.concepts).is_dir():
            raise UsageError(f"--concepts {args.concepts} is not a folder of concept folders")
        opts = {k: dict(v) for k, v in cfg.check_options.items()}
        opts.setdefault("bias", {})["concepts"] = str(args.concepts)
        cfg = cfg.replace(check_options=opts)
    _ensure_out(Path(args.out), lock=world.is_main)
    model = model_from_args(args, cfg.device)
    log(f"model {model.info['path']}: {model.info['format']}, device {model.device}"
        + (f", input {'x'.join(map(str, model.spec.input_shape))}" if model.spec.input_shape else ""))
    data = data_from_args(args, model, samples=cfg.samples, seed=cfg.seed, progress=not args.quiet)
    if data is not None:
        log(f"data {args.data}: {len(data)} images, {len(data.class_names)} classes")
    baseline = _load_result(args.baseline) if args.baseline else None
    return _run_and_write(model, data, cfg, Path(args.out), log, quiet=args.quiet, baseline=baseline,
                          tolerance=args.tolerance, resume=args.resume, world=world)


def _ensure_out(out: Path, *, lock: bool = False) -> None:
    """Fail before the battery runs when the output folder cannot be written or (``lock``)
    another audit is writing into it (:func:`audit.outputs.lock_out`)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"cannot write to the output folder {out}: permission denied")
    if lock:
        from .outputs import lock_out

        lock_out(out)


def _load_result(path: str):
    from .files import regular_file
    from .results import AuditResult

    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    regular_file(p, "results file")
    try:
        return AuditResult.load(p)
    except (ValueError, KeyError, TypeError, AttributeError, OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p} is not an audit results.json ({e})") from None


def _run_and_write(model, data, cfg, out: Path, log, *, quiet: bool, baseline=None, tolerance: float = 0.01,
                   resume: bool = False, world=None) -> int:
    from .distributed import World
    from .runner import run_audit

    world = world or World()
    result = run_audit(model, data, cfg, progress=not quiet, log=log, checkpoint=out, resume=resume, world=world)
    if not world.is_main:  # rank 0 writes; the others wait for it (torchrun stops everyone once one rank exits non-zero)
        return _finish(world, result, exit_code_for(result))
    if baseline is not None:
        from .compare import compare, regression_gate

        result.baseline = compare(baseline, result, tolerance=tolerance)
        result.gates.append(regression_gate(result.baseline))
        result.finalize_status()
    try:
        result.save(out)
        log(f"wrote {out / 'report.html'} ({result.status.upper()})")
        for g in result.gates:  # a gate that could not be evaluated is a usage error (exit 4): say why
            if g.status == "error":
                print(f"audit: error: gate {g.gate}: {g.message}", file=sys.stderr)
        if not quiet:
            print(result.summary(), file=sys.stderr)
    finally:
        code = _finish(world, result, exit_code_for(result))
    return code


def _finish(world, result, code: int) -> int:
    """The last meeting of a distributed run: after rank 0 wrote the outputs, so that no rank
    exits first (torchrun would stop rank 0 mid-write); every rank returns rank 0's exit
    code (which also reflects a --baseline comparison). Skipped after an interruption, when
    the ranks may stand at different points."""
    if not world.distributed or result.interrupted:
        return code
    from .distributed import DesyncError, shutdown

    try:
        code = world.from_main("written", code)
    except (DesyncError, RuntimeError):
        return code
    shutdown()  # an explicit teardown: gloo left to the interpreter's exit can abort (SIGABRT)
    return code


def exit_code_for(result) -> ExitCode:
    """Interrupted -> 2; a check crashed -> 3; a gate on a missing metric -> 4; a gate failed -> 1."""
    if result.interrupted:
        return ExitCode.INTERRUPTED
    if result.errored_checks():
        return ExitCode.INTERNAL_ERROR
    if any(g.status == "error" for g in result.gates):
        return ExitCode.USAGE_ERROR
    if result.failed_gates():
        return ExitCode.GATE_FAILED
    return ExitCode.OK


def _cmd_inspect(args) -> int:
    import json

    from .cli_load import check_model_given, data_options, model_options
    from .inspection import inspect_model

    check_model_given(args, "inspect")
    ins = inspect_model(args.model, data=args.data, device=args.device, **data_options(args), **model_options(args))
    print(json.dumps(ins.to_dict(), indent=2) if args.json else ins.text())
    return ins.exit_code


def _cmd_demo(args) -> int:
    from .demo.run import load_demo

    cfg = _config_from_args(args)
    world = _world(cfg)
    log = _logger(args.quiet or not world.is_main)
    out = Path(args.out)
    _ensure_out(out, lock=world.is_main)
    model, data, cfg = load_demo(out, cfg, samples_per_class=args.samples_per_class, log=log, world=world)
    return _run_and_write(model, data, cfg, out, log, quiet=args.quiet, resume=args.resume, world=world)


def _cmd_report(args) -> int:
    log = _logger(args.quiet)
    result = _load_result(args.results)
    out = Path(args.out) if args.out else Path(result.base_dir)
    from .artifacts import check_artifact_paths, write_artifacts

    check_artifact_paths([a for c in result.checks for a in c.artifacts], result.base_dir, out)  # before any write
    _ensure_out(out)
    if out.resolve() != Path(result.base_dir).resolve():

        write_artifacts([a for c in result.checks for a in c.artifacts], out, base=result.base_dir)
        result.base_dir = str(out)
    from reports import write_all

    out.mkdir(parents=True, exist_ok=True)
    write_all(result, out)
    log(f"wrote {out / 'report.html'}")
    return ExitCode.OK


def _cmd_diff(args) -> int:
    from .compare import compare, format_comparison

    base, new = _load_result(args.base), _load_result(args.new)
    comp = compare(base, new, tolerance=args.tolerance)
    print(format_comparison(comp, all_rows=args.all))
    return ExitCode.GATE_FAILED if comp["regressions"] else ExitCode.OK


def _cmd_init(args) -> int:
    from .config import TEMPLATE

    p = Path(args.path)
    if p.exists() and not args.force:
        raise UsageError(f"{p} exists; pass --force to overwrite it")
    try:
        p.write_text(TEMPLATE, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {p}: {e.strerror or e}") from None
    _logger(args.quiet)(f"wrote {p}; edit it, then: audit run MODEL --data DIR --config {p}")
    return ExitCode.OK


def _cmd_list(args) -> int:
    from .registry import registered_checks

    for name, cls in registered_checks().items():
        print(f"{name:<14} {cls.description}")
    if args.archs:
        from .zoo import list_archs

        print("\narchitectures (--arch):")
        print("  " + ", ".join(list_archs()))
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
