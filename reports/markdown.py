"""summary.md: a short GitHub-flavoured Markdown summary for a CI job page
(appended to ``$GITHUB_STEP_SUMMARY`` by :func:`reports.write_all`).

Verdict line (a plain status word, no emoji), checks table, gates table, the top
findings, the model path. Text from the model or a check is escaped so that it can
neither break a table nor inject HTML into the rendered page.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from .format import fmt_duration, fmt_interval, fmt_value, one_line, severity_rank, status_word

if TYPE_CHECKING:  # pragma: no cover
    from audit.results import AuditResult

__all__ = ["render_markdown", "MAX_FINDINGS"]

#: findings listed at most (worst first)
MAX_FINDINGS = 20

#: how a missing value or duration reads in the summary
MISSING = "n/a"


def _text(s: Any) -> str:
    """Escape for a GFM table cell: HTML-escape, fold newlines, escape pipes and the
    characters that start Markdown emphasis, links or code."""
    out = html.escape(one_line(s), quote=False)
    for ch in ("\\", "|", "`", "*", "_", "[", "]"):
        out = out.replace(ch, "\\" + ch)
    return out


def _code(s: Any, *, table: bool = True) -> str:
    """An inline code span that survives any content (backticks; pipes in a table cell)."""
    if s is None or str(s) == "":
        return ""
    s = one_line(s)
    if table:
        s = s.replace("|", "\\|")
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def _status(s: str) -> str:
    return f"**{status_word(s)}**" if s in ("fail", "error") else status_word(s)


def render_markdown(result: "AuditResult") -> str:
    """``result`` as a Markdown summary (GitHub job-summary flavour)."""
    model = result.model or {}
    run = result.run or {}
    lines: list[str] = []
    lines.append(f"## Model audit: {status_word(result.status)}")
    lines.append("")
    verdict = f"**Verdict: {status_word(result.status)}**"
    verdict += " (passes CI)" if result.passed else " (does not pass CI)"
    lines.append(verdict)
    lines.append("")
    lines.append(f"- Model: {_code(model.get('path'), table=False) or 'unknown'}")
    if model.get("sha256"):
        lines.append(f"- SHA-256: {_code(model['sha256'], table=False)}")
    extra = []
    if run.get("duration_s") is not None:
        extra.append(f"duration {fmt_duration(run.get('duration_s'), missing=MISSING)}")
    if run.get("device"):
        extra.append(f"device {_text(run['device'])}")
    if run.get("seed") is not None:
        extra.append(f"seed {_text(run['seed'])}")
    if extra:
        lines.append("- Run: " + ", ".join(extra))
    data = result.data or {}
    if data.get("source"):
        lines.append(f"- Data: {_code(data['source'], table=False)}, {_text(data.get('n'))} images")
    if data.get("class_map"):
        cmap = list(data["class_map"].items())
        more = f", ... ({len(cmap)} folders)" if len(cmap) > 24 else ""
        lines.append("- Class map (folder → output): " + ", ".join(f"{_text(k)} → {v}" for k, v in cmap[:24]) + more)
    lines += [f"- Data note: {_text(n)}" for n in data.get("notes") or []]
    if result.interrupted:
        lines.append("- **The run was interrupted: results are incomplete.**")
    lines.append("")

    rows = []
    for c in result.checks:
        summary = _text(c.summary)
        if c.error:
            err = _text(c.error)
            summary = f"{summary}<br>error: {err}" if summary else f"error: {err}"
        rows.append([_text(c.name), _status(c.status), fmt_duration(c.duration_s, missing=MISSING), summary])
    _table(lines, "### Checks", ["Check", "Status", "Time:", "Summary"], rows, "No checks ran.")

    _table(lines, "### Gates", ["Gate", "Condition", "Value:", "Status", "Message"],
           [[_code(g.gate), _code(g.condition), _gate_value(g), _status(g.status),
             _text(g.message)] for g in result.gates], "No gates configured.")

    findings = sorted(result.findings(), key=lambda cf: severity_rank(cf[1].severity))
    shown = findings[:MAX_FINDINGS]
    title = "### Findings"
    if len(findings) > len(shown):
        title += f" (top {len(shown)} of {len(findings)})"
    _table(lines, title, ["Severity", "Code", "Check", "Class", "Message"],
           [[_status(f.severity), _code(f.code), _text(check), _text(f.class_), _text(f.message)]
            for check, f in shown], "No findings.")
    lines.append("The full report with images is in `report.html` next to `results.json`.")
    lines.append("")
    return "\n".join(lines)


def _gate_value(g) -> str:
    """The number a gate tested and, for a rate, the rate with its 95% interval and n."""
    value = _text(fmt_value(g.value, missing=MISSING))
    rate = fmt_interval(g.interval, missing=MISSING)
    return f"{value}<br>{_text(rate)}" if rate else value


def _table(lines: list[str], title: str, head: list[str], rows: list[list[str]], empty: str) -> None:
    """Append a titled Markdown table (a head ending in ``:`` is a right-aligned column), or
    ``empty`` when there are no rows, and a blank line."""
    lines += [title, ""]
    if rows:
        lines.append("| " + " | ".join(h.rstrip(":") for h in head) + " |")
        lines.append("|" + "|".join("---:" if h.endswith(":") else "---" for h in head) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        lines.append(empty)
    lines.append("")
