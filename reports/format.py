"""The one place the reports format values, durations, statuses and free text.

Each renderer (``html``, ``markdown``, ``junit``) escapes for its own medium (jinja2
autoescape, Markdown table cells, XML); what it shows is formatted here, so a number, a
duration or a status reads the same in every report. The only per-medium choices are
parameters: the word shown for a missing value (an em dash in HTML, ``n/a`` in Markdown,
``missing`` in a JUnit message) and the significant digits (JUnit messages keep 6). A rate
with its 95% interval reads ``8.3% [3.3–19.6]`` everywhere (:func:`fmt_rate`).
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["EM_DASH", "fmt_value", "fmt_rate", "fmt_interval", "fmt_duration", "fmt_seconds", "status_word", "SEVERITY_RANK",
           "STATUS_DISPLAY_ORDER", "severity_rank", "one_line"]

EM_DASH = "\u2014"

#: statuses and severities worst first, for sorting findings and counting statuses
STATUS_DISPLAY_ORDER = ("fail", "error", "warn", "info", "pass")
SEVERITY_RANK = {"fail": 0, "error": 0, "warn": 1, "info": 2, "pass": 3}


def fmt_value(v: Any, *, digits: int = 4, missing: str = EM_DASH) -> str:
    """A metric value or qualifier for display: floats to ``digits`` significant digits,
    integral values (below 1e6) as integers, infinities as ``∞``/``−∞``, missing (None/NaN)
    as ``missing``; int lists (shapes) as ``3×16×16``, other lists comma-separated, dicts
    as ``k: v`` pairs."""
    if v is None:
        return missing
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return missing
        if math.isinf(v):
            return "\u221e" if v > 0 else "\u2212\u221e"
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)):
        fmt = [fmt_value(x, digits=digits, missing=missing) for x in v]
        return "\u00d7".join(fmt) if all(isinstance(x, int) for x in v) else ", ".join(fmt)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt_value(x, digits=digits, missing=missing)}" for k, x in v.items())
    return str(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_rate(value: Any, ci_low: Any = None, ci_high: Any = None, *, n: Any = None,
             missing: str = EM_DASH) -> str:
    """A rate (a share in [0, 1]) as a percentage with one decimal and, when both bounds are
    numbers, its 95% interval in percent: ``8.3% [3.3–19.6]``; ``, n=48`` appended when ``n``
    is given. ``missing`` when the value is None/NaN (a rate over no samples)."""
    out = f"{100 * value:.1f}%" if _finite(value) else missing
    if _finite(value) and _finite(ci_low) and _finite(ci_high):
        out += f" [{100 * ci_low:.1f}\u2013{100 * ci_high:.1f}]"
    if n is not None:
        out += f", n={fmt_value(n, missing=missing)}"
    return out


def fmt_interval(interval: Any, *, missing: str = EM_DASH) -> str:
    """A gate's or comparison's ``{"value", "ci_low", "ci_high", "n"}`` through :func:`fmt_rate`
    (with ``n``); the empty string when there is none (results without intervals)."""
    if not isinstance(interval, dict):
        return ""
    return fmt_rate(interval.get("value"), interval.get("ci_low"), interval.get("ci_high"), n=interval.get("n"),
                    missing=missing)


def _seconds(s: Any) -> bool:
    return isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)


def fmt_duration(s: Any, *, missing: str = EM_DASH) -> str:
    """Seconds for a person: ``0.42 s``, ``4.2 s`` (from 10 s), ``1 min 02 s``, ``1 h 05 min``;
    ``missing`` when not a finite number."""
    if not _seconds(s):
        return missing
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_seconds(s: Any) -> str:
    """Seconds for a machine (a JUnit ``time`` attribute): ``4.200``; ``0.000`` when not a
    finite number >= 0."""
    return f"{s:.3f}" if _seconds(s) and s >= 0 else "0.000"


def status_word(s: Any) -> str:
    """A status or severity as shown: ``PASS``, ``INFO``, ``WARN``, ``FAIL``, ``ERROR``."""
    return str(s).upper()


def severity_rank(s: Any) -> int:
    """Sort key, worst first (fail and error, then warn, info, pass; anything else last)."""
    return SEVERITY_RANK.get(s, 9)


def one_line(text: Any, limit: int | None = None) -> str:
    """``text`` with every run of whitespace (newlines included) folded to one space; cut to
    ``limit`` characters with a trailing ``…`` when longer. None is the empty string."""
    out = " ".join(("" if text is None else str(text)).split())
    if limit is not None and len(out) > limit:
        out = out[: limit - 1] + "\u2026"
    return out
