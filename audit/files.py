"""The one check that a path the user gave (model, labels, sidecar, config, data, results)
is a regular file before anything opens it.

Opening a FIFO blocks until someone writes to it, and ``/dev/zero`` or ``/dev/urandom``
never end, so a hash or a ``read_text`` of one hangs (or fills the memory). ``os.stat``
never blocks, so the kind of file (symbolic links followed) and its size are judged
first.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UsageError

__all__ = ["regular_file", "is_regular", "shown", "MiB"]

MiB = 1 << 20


def shown(path: str | os.PathLike) -> str:
    """``path`` as text that any UTF-8 writer takes: a file name whose bytes are not UTF-8
    (``b"\\xff.png"``, which Python holds as a lone surrogate) shows them escaped
    (``\\xff.png``). Used for sample ids, class folder names and the paths in results."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_regular(path: str | os.PathLike) -> bool:
    """True when ``path`` (a symbolic link followed) is a regular file; never blocks."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def regular_file(path: str | os.PathLike, what: str, *, error: type[UsageError] = UsageError,
                 max_bytes: int | None = None) -> Path:
    """``Path(path)`` when it is a regular file (symbolic links followed) of at most
    ``max_bytes`` bytes; otherwise raises ``error`` (a :class:`UsageError`, exit code 4)
    with one line that starts with ``what`` and the path: it does not exist, is a folder,
    is not a regular file (a FIFO, a device such as ``/dev/zero``, a socket) or is too big."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist; check the path") from None
    except (OSError, ValueError) as e:
        raise error(f"{what} {p} cannot be read ({getattr(e, 'strerror', None) or e}); check the path and its "
                    "permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {p} is a folder; give the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p} is not a regular file (a FIFO, device or socket); give a regular file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {p} has {st.st_size:,} bytes, more than the {max_bytes:,} a {what} may have; "
                    "check that it is the right file")
    return p
