"""The one place that writes check artifacts (images, plots) to ``OUT/<artifact.path>``.

Used by :meth:`audit.results.AuditResult.save`, by the per-check checkpoints and by
``audit report --out`` (which copies a saved result's artifacts to a new folder). An
artifact's ``path`` comes from a ``results.json`` that may have been made elsewhere, so it
is checked before anything is read or written: a path that is absolute, climbs out of
``out`` (a ``..`` part) or leads out of it through a symbolic link is refused with one line
that names it.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Iterable

from .errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .results import Artifact

__all__ = ["write_artifacts", "safe_artifact_path", "check_artifact_paths", "UnsafeArtifactPath"]


class UnsafeArtifactPath(UsageError, ValueError):
    """An artifact path that is absolute or leaves the output folder (exit code 4)."""


def safe_artifact_path(out: str | os.PathLike, path: str) -> Path:
    """``out / path``, or :class:`UnsafeArtifactPath` when ``path`` is empty, absolute
    (``/x``, ``C:\\x``, ``\\\\host\\x``), has a ``..`` part (``/`` and ``\\`` both count
    as separators, whatever the platform) or resolves outside ``out`` through a symbolic
    link (a folder or the file itself)."""
    p = str(path)
    posix, windows = PurePosixPath(p), PureWindowsPath(p)
    if (not p.strip() or posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root
            or ".." in posix.parts or ".." in windows.parts or posix == PurePosixPath(".")):
        raise UnsafeArtifactPath(f"refusing artifact path {p!r}: it must be a relative path inside the "
                                 f"output folder {os.fspath(out)} (no absolute path, no '..')")
    dest = Path(out) / p
    root = Path(out).resolve()
    if not dest.resolve().is_relative_to(root):  # a symbolic link on the way leads elsewhere
        raise UnsafeArtifactPath(f"refusing artifact path {p!r}: a symbolic link takes it out of the "
                                 f"folder {os.fspath(out)}; remove the link")
    return dest


def check_artifact_paths(artifacts: Iterable["Artifact"], *folders: str | os.PathLike | None) -> None:
    """Raise :class:`UnsafeArtifactPath` (exit code 4) for the first artifact whose path is
    not confined to each of ``folders`` (None ones skipped): the check to run before
    anything is read or written for a results file that may have been made elsewhere."""
    for a in artifacts:
        for folder in folders:
            if folder is not None:
                safe_artifact_path(folder, a.path)


def write_artifacts(artifacts: Iterable["Artifact"], out: str | os.PathLike, *,
                    base: str | os.PathLike | None = None) -> list[Path]:
    """Write each artifact's bytes to ``out / artifact.path``; return the files written.

    The bytes are the artifact's in-memory ``data``, or (when ``base`` is given) the file
    ``base / artifact.path``; an artifact with neither is skipped. Every path is checked
    first, so an unsafe one (:func:`safe_artifact_path`) raises before any file is read or
    written."""
    todo = [(a, safe_artifact_path(out, a.path)) for a in artifacts]  # the same check keeps reads inside base
    written: list[Path] = []
    for a, dest in todo:
        data = a.read(base)
        if data is None:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        written.append(dest)
    return written
