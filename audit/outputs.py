"""Writing a run's outputs into its folder all together, and one writer per folder.

:func:`save_outputs` renders everything (artifacts, results.json, metrics.csv, report.html,
junit.xml, summary.md) into a staging folder inside ``OUT`` first, the slow part, then moves
it into place with a few renames while SIGINT and SIGTERM are held back: an interruption or a
crash while writing leaves the previous run's outputs whole (never the new results.json beside
the old report), and a full disk or an unwritable folder leaves no temporary files behind
(:class:`OutputError`, exit code 3, "no space left on device" named). A concurrent reader could
see a mix only during those renames (microseconds).

:func:`lock_out` keeps two audits from writing into one folder at once: the second one is
refused with one line (exit code 4) instead of the two interleaving their files.
"""
from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import AuditError, ExitCode, UsageError
from .signals import signals_held

if TYPE_CHECKING:  # pragma: no cover
    from .results import AuditResult

__all__ = ["save_outputs", "lock_out", "release_locks", "OutputError", "STAGING_PREFIX"]

STAGING_PREFIX = ".audit-staging-"
_LOCK = ".audit-lock"
_held: dict[str, int] = {}  # resolved out folder -> open lock file descriptor (for the process's life)


class OutputError(AuditError):
    """The outputs could not be written (disk full, permissions); nothing half-written is
    left and the previous outputs are untouched. Exit code 3."""

    exit_code = ExitCode.INTERNAL_ERROR


def _commit(stage: Path, out: Path) -> None:
    """Move every entry of ``stage`` into ``out`` (results.json last); an entry already there
    is replaced (a folder: moved aside, then removed)."""
    names = sorted((p.name for p in stage.iterdir()), key=lambda n: n == "results.json")
    aside = stage.with_name(stage.name.replace(STAGING_PREFIX, ".audit-old-", 1))
    with signals_held():
        for name in names:
            dest = out / name
            if dest.is_dir() and not dest.is_symlink():
                aside.mkdir(exist_ok=True)
                os.rename(dest, aside / name)
            os.replace(stage / name, dest)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def save_outputs(result: "AuditResult", out: str | os.PathLike) -> Path:
    """Write ``result``'s artifacts and reports into ``out`` as one change (module docstring).
    Raises :class:`OutputError` when they cannot be written; an unsafe artifact path is a
    :class:`~audit.artifacts.UnsafeArtifactPath` (exit code 4)."""
    from reports import write_all

    from .artifacts import write_artifacts

    out = Path(out)
    stage = out / f"{STAGING_PREFIX}{os.getpid()}-{threading.get_ident()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        write_artifacts([a for c in result.checks for a in c.artifacts], stage)
        result.base_dir = str(stage)
        write_all(result, stage)
        _commit(stage, out)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        why = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise OutputError(f"cannot write the outputs into {out}: {why}; nothing was changed there "
                          "(free space or choose another --out, then `audit report` or rerun with --resume)") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        result.base_dir = str(out)
    return out


def release_locks() -> None:
    """Let go of every folder :func:`lock_out` holds (the CLI calls it when a command ends)."""
    while _held:
        _, fd = _held.popitem()
        try:
            os.close(fd)  # closing the descriptor releases its flock
        except OSError:
            pass


def lock_out(out: str | os.PathLike) -> None:
    """Hold ``out/.audit-lock`` (an exclusive ``flock``) until :func:`release_locks` (or the
    process ends), so that a second audit writing into the same folder is refused
    (:class:`UsageError`, one line naming the holder's pid) rather than interleaving with this
    one. No-op without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    key = str(Path(out).resolve())
    if key in _held:
        return
    path = Path(out) / _LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UsageError(f"another audit (pid {holder}) is writing into {out}; wait for it to finish or choose "
                         "another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _held[key] = fd
