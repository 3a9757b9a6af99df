"""The HTML report: one self-contained page a reviewer reads (and prints).

The page works offline and alone: inline CSS, no scripts, no external URLs, system fonts,
images embedded as base64 ``data:`` URIs. A Content-Security-Policy meta tag forbids
anything else. Everything that comes from the model or a check (class names, paths,
messages, captions, qualifiers) is escaped by jinja2's autoescape; the template never
marks user data ``|safe``.

The page is a pure function of the result (no clock, no host name), so a saved
``results.json`` re-renders to the same report.
"""
from __future__ import annotations

import base64
import io
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from .format import STATUS_DISPLAY_ORDER, fmt_duration, fmt_interval, fmt_rate, fmt_value, severity_rank, status_word

if TYPE_CHECKING:  # pragma: no cover
    from audit.results import AuditResult, CheckResult

__all__ = ["render_html"]

TEMPLATES = Path(__file__).resolve().parent / "templates"

#: metric tables longer than this are folded into a <details> element
COLLAPSE_ROWS = 40
#: class-name lists longer than this are folded
COLLAPSE_CLASSES = 24
#: images at most this many pixels on their longer side are upscaled, pixelated
SMALL_IMAGE_PX = 96
#: images at least this wide (plots, figure grids) take a whole row, shown at their natural
#: width (narrower when the page is), never squeezed into a grid cell
FULL_IMAGE_PX = 480

_MODEL_KEYS = (
    ("path", "Path"),
    ("sha256", "SHA-256"),
    ("format", "Format"),
    ("num_classes", "Classes"),
    ("input_shape", "Input shape"),
    ("adaptations", "Adaptations"),
)
_RUN_KEYS = (
    ("seed", "Seed"),
    ("device", "Device"),
    ("torch", "torch version"),
    ("started", "Started"),
    ("duration_s", "Duration"),
)


# --------------------------------------------------------------------------- text layout
def break_parts(text: Any) -> list[str]:
    """``a.b[c=1,d=0.5]`` -> ``["a.", "b[c=1,", "d=0.5]"]``: where a long dotted code may
    wrap (after a dot or comma that is not inside a number)."""
    return [p for p in re.split(r"(?<=[.,])(?=\D)", str(text)) if p]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-") or "check"


# --------------------------------------------------------------------------- images
_MIME_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def _sniff_mime(data: bytes, path: str) -> str | None:
    for magic, mime in _MIME_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if path.lower().endswith(".svg") and b"<svg" in data[:2048]:
        return "image/svg+xml"  # an <img> never runs an SVG's scripts
    return None


def _image_size(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - size is only a layout hint
        return None


def _artifact_view(a, base: str | os.PathLike | None) -> dict[str, Any]:
    view: dict[str, Any] = {"path": a.path, "caption": a.caption or Path(a.path).name,
                            "kind": a.kind, "src": None, "problem": None, "size": None,
                            "small": False, "wide": False, "full": False, "width": None}
    try:
        data = a.read(base)
    except OSError as exc:
        data, view["problem"] = None, f"unreadable artifact ({exc.__class__.__name__})"
    except ValueError:  # audit.artifacts.UnsafeArtifactPath: never read outside the results folder
        data, view["problem"] = None, "refused artifact path (outside the results folder)"
    if data is None:
        view["problem"] = view["problem"] or "missing artifact"
        return view
    mime = _sniff_mime(data, a.path)
    if mime is None:
        view["problem"] = "not a recognised image format"
        return view
    view["src"] = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    size = _image_size(data)
    if size:
        w, h = size
        view["size"] = f"{w}\u00d7{h}"
        view["small"] = max(w, h) <= SMALL_IMAGE_PX
        view["full"] = w >= FULL_IMAGE_PX
        view["wide"] = not view["full"] and not view["small"]  # two grid cells: small plots stay legible
        view["width"] = w
    return view


# --------------------------------------------------------------------------- view model
def _metric_table(check: "CheckResult") -> dict[str, Any]:
    quals: list[str] = []
    for m in check.metrics:
        for k in m.qualifiers:
            if k not in quals:
                quals.append(k)
    rows = [{"name": m.name,
             "quals": [fmt_value(m.qualifiers[k]) if k in m.qualifiers else "" for k in quals],
             "value": (fmt_rate(m.value, m.ci_low, m.ci_high) if m.is_rate else
                       fmt_value(m.value) + (f" [{fmt_value(m.ci_low)}\u2013{fmt_value(m.ci_high)}]"
                                             if m.ci_low is not None and m.ci_high is not None else "")),
             "n": fmt_value(m.n) if m.is_rate else "",
             "missing": m.value is None or (isinstance(m.value, float) and math.isnan(m.value))}
            for m in check.metrics]
    return {"columns": quals, "rows": rows, "collapse": len(rows) > COLLAPSE_ROWS,
            "rates": any(m.is_rate for m in check.metrics)}


def _compared(row: dict[str, Any], side: str) -> str:
    """One side of a baseline comparison row: a rate with its interval when the row has one."""
    ci = row.get(f"{side}_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return fmt_interval({"value": row.get(side), "ci_low": ci[0], "ci_high": ci[1], "n": row.get(f"{side}_n")})
    return fmt_value(row.get(side))


def _finding_view(check_name: str, f, anchors: dict[str, str]) -> dict[str, Any]:
    return {"severity": f.severity, "code": f.code, "message": f.message, "class": f.class_,
            "check": check_name, "anchor": anchors.get(check_name, ""),
            "extra": {k: fmt_value(v) for k, v in f.extra.items()}}


def _counts(statuses: list[str]) -> list[tuple[str, int]]:
    return [(s, statuses.count(s)) for s in STATUS_DISPLAY_ORDER if statuses.count(s)]


def build_context(result: "AuditResult", base_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Everything the template shows, as plain strings and lists (no formatting left
    to the template beyond escaping)."""
    base = base_dir if base_dir is not None else result.base_dir

    anchors: dict[str, str] = {}  # check name -> first section with that name
    section_ids: list[str] = []  # one unique id per check, in order
    for c in result.checks:
        slug = f"check-{_slug(c.name)}"
        i, unique = 2, slug
        while unique in section_ids:
            unique, i = f"{slug}-{i}", i + 1
        section_ids.append(unique)
        anchors.setdefault(c.name, unique)

    run = dict(result.run or {})
    model = dict(result.model or {})
    total = run.get("duration_s")
    check_total = sum(max(c.duration_s or 0.0, 0.0) for c in result.checks)
    if not isinstance(total, (int, float)) or isinstance(total, bool) or total <= 0:
        total = check_total
    denom = max(total or 0.0, check_total)

    checks = []
    for c, section_id in zip(result.checks, section_ids):
        share = 100.0 * max(c.duration_s or 0.0, 0.0) / denom if denom > 0 else 0.0
        findings = sorted((_finding_view(c.name, f, anchors) for f in c.findings),
                          key=lambda f: severity_rank(f["severity"]))
        checks.append({
            "name": c.name, "anchor": section_id, "status": c.status,
            "duration": fmt_duration(c.duration_s), "share": share,
            "share_text": f"{share:.1f}%", "summary": c.summary, "error": c.error,
            "metrics": _metric_table(c), "findings": findings,
            "images": [_artifact_view(a, base) for a in c.artifacts if a.kind == "image"],
            "files": [a for a in c.artifacts if a.kind != "image"],
            "finding_counts": _counts([f.severity for f in c.findings]),
        })

    gates = [{"gate": g.gate, "condition": g.condition, "severity": g.severity,
              "status": g.status, "value": fmt_value(g.value), "rate": fmt_interval(g.interval),
              "message": g.message}
             for g in result.gates]

    all_findings = sorted((_finding_view(name, f, anchors) for name, f in result.findings()),
                          key=lambda f: severity_rank(f["severity"]))

    class_names = model.pop("class_names", None) or []
    model_rows = [(label, fmt_value(model.pop(key)), key == "sha256")
                  for key, label in _MODEL_KEYS if key in model]
    model_rows += [(str(k), fmt_value(v), False) for k, v in model.items()]

    run_rows = []
    for key, label in _RUN_KEYS:
        if key in run:
            v = run.pop(key)
            run_rows.append((label, fmt_duration(v) if key == "duration_s" else fmt_value(v)))
    run_rows += [(str(k), fmt_value(v)) for k, v in run.items()]

    n_images = sum(len(c["images"]) for c in checks)
    data = dict(result.data or {})
    data_rows = [(label, fmt_value(data[key])) for key, label in (("source", "Source"), ("n", "Images"),
                                                                   ("input_shape", "Input shape")) if key in data]
    if data.get("class_map"):  # class folder -> model output: how the labels were read
        data_rows.append(("Class map (folder → output)", ", ".join(f"{k} → {v}" for k, v in data["class_map"].items())))
    data_rows += [("Note", str(n)) for n in data.get("notes") or []]
    baseline = None
    if result.baseline:
        b = result.baseline
        changed = [r for r in b.get("rows", []) if r.get("status") != "same"]
        order = {"regressed": 0, "missing": 1, "new": 2, "improved": 3}
        changed.sort(key=lambda r: order.get(r.get("status"), 9))
        baseline = {
            "path": (b.get("base") or {}).get("path"), "sha256": (b.get("base") or {}).get("sha256"),
            "tolerance": fmt_value(b.get("tolerance")),
            "n_regressions": len(b.get("regressions", [])), "n_improvements": len(b.get("improvements", [])),
            "rows": [{"metric": r.get("metric"), "base": _compared(r, "base"), "new": _compared(r, "new"),
                      "delta": "" if r.get("delta") is None else f"{r['delta']:+.4g}", "status": r.get("status"),
                      "better": r.get("better")} for r in changed],
            "flips": b.get("flips", []),
        }
    return {
        "baseline": baseline,
        "status": result.status,
        "status_word": status_word(result.status),
        "interrupted": result.interrupted,
        "passed": result.passed,
        "schema": result.schema,
        "model_path": (result.model or {}).get("path"),
        "checks": checks,
        "check_counts": _counts([c.status for c in result.checks]),
        "gates": gates,
        "gate_counts": _counts([g.status for g in result.gates]),
        "findings": all_findings,
        "finding_counts": _counts([f["severity"] for f in all_findings]),
        "model_rows": model_rows,
        "class_names": [str(n) for n in class_names],
        "collapse_classes": len(class_names) > COLLAPSE_CLASSES,
        "run_rows": run_rows,
        "data_rows": data_rows,
        "total_duration": fmt_duration(total),
        "n_images": n_images,
    }


# --------------------------------------------------------------------------- rendering
_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        _ENV.filters["break_parts"] = break_parts
        _ENV.filters["status_word"] = status_word
    return _ENV


def render_html(result: "AuditResult", *, base_dir: str | os.PathLike | None = None) -> str:
    """The report page for ``result`` as one self-contained HTML string.

    Image artifacts are embedded from their in-memory bytes or read from ``base_dir``
    (default ``result.base_dir``); one that cannot be found shows a visible
    "missing artifact" note instead of a broken image.
    """
    return _env().get_template("report.html.j2").render(**build_context(result, base_dir))
