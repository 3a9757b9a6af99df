"""Renderers from an :class:`audit.results.AuditResult` to files.

Reports only read results: this package imports :mod:`audit.results` and nothing from
``attacks/`` or ``probes/``, so a saved ``results.json`` re-renders to the same report.

:func:`write_all` writes, into one folder:

==============  ===========================================================
``results.json``  the stable contract (``AuditResult.to_json()``)
``metrics.csv``   the tidy metric frame (``AuditResult.frame``)
``report.html``   one self-contained page a person reviews (works offline)
``junit.xml``     one testcase per check and per gate, for CI test views
``summary.md``    a short summary for a CI job page (``$GITHUB_STEP_SUMMARY``)
==============  ===========================================================
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .html import render_html
from .junit import render_junit
from .markdown import render_markdown

if TYPE_CHECKING:  # pragma: no cover
    from audit.results import AuditResult

__all__ = ["write_all", "render_html", "render_junit", "render_markdown", "FILES", "REPORTS"]

#: report kind -> (file name, renderer(result, base_dir) -> text). A new format is one
#: module with a renderer and one line here.
REPORTS: dict[str, tuple[str, Callable[["AuditResult", str], str]]] = {
    "json": ("results.json", lambda result, base: result.to_json() + "\n"),
    "csv": ("metrics.csv", lambda result, base: result.frame.to_csv(index=False)),
    "html": ("report.html", lambda result, base: render_html(result, base_dir=base)),
    "junit": ("junit.xml", lambda result, base: render_junit(result)),
    "markdown": ("summary.md", lambda result, base: render_markdown(result)),
}
#: report kind -> file name written by :func:`write_all`
FILES = {kind: name for kind, (name, _) in REPORTS.items()}


def write_all(result: "AuditResult", out: str | os.PathLike) -> dict[str, Path]:
    """Write every report of ``result`` into the folder ``out``; return ``{kind: path}``.

    Kinds are ``json``, ``csv``, ``html``, ``junit`` and ``markdown`` (see :data:`FILES`).
    Each writer is independent: when one raises, the others are still written and the
    first exception is re-raised at the end (the others are attached as notes). When the
    environment variable ``GITHUB_STEP_SUMMARY`` names a file, the Markdown summary is
    appended to it. Image artifacts are read from ``result.base_dir``, or from ``out`` when
    the result has no base folder yet.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = result.base_dir if result.base_dir is not None else str(out)

    written: dict[str, Path] = {}
    errors: list[tuple[str, BaseException]] = []
    texts: dict[str, str] = {}
    for kind, (name, render) in REPORTS.items():
        path = out / name
        try:
            text = render(result, base)
            _write_text(path, text)
        except Exception as exc:  # noqa: BLE001 - every writer must get its chance
            errors.append((name, exc))
            continue
        texts[kind] = text
        written[kind] = path

    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary and "markdown" in texts:
        try:
            with open(step_summary, "a", encoding="utf-8") as fh:
                text = texts["markdown"]
                fh.write(text if text.endswith("\n") else text + "\n")
        except Exception as exc:  # noqa: BLE001
            errors.append(("$GITHUB_STEP_SUMMARY", exc))

    if errors:
        name, first = errors[0]
        if hasattr(first, "add_note"):
            first.add_note(f"while writing {name} into {out}")
            for other_name, other in errors[1:]:
                first.add_note(f"also failed: {other_name}: {type(other).__name__}: {other}")
        raise first
    return written


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a failed write never leaves a half-written report behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    os.replace(tmp, path)
