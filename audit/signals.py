"""How the CLI treats signals: SIGTERM (how CI cancels a job, and ``timeout``) ends a run as
Ctrl-C does (exit code 2, what finished written), and SIGINT/SIGTERM can be held back over a
block that must not be cut in half (the outputs' final renames, torch's C-extension import)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["signals_held", "sigterm_as_ctrl_c"]


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back for the block (main thread, POSIX), delivered after it."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM raises KeyboardInterrupt, as Ctrl-C does (main thread only; a no-op
    where signals cannot be set)."""
    try:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        pass
