"""Comparing two audit results: what got worse between a baseline model and a new one.

``compare(base, new)`` matches metric rows by (check, name, qualifiers), computes deltas,
and flags a **regression** where a metric with a known direction got worse by more than
``tolerance`` (absolute); a rate's 95% interval and sample count ride along in its row
(``base_ci``, ``base_n``, ``new_ci``, ``new_n``) but do not change the flag. It also lists
the samples whose per-sample outcome flipped: every boolean column of every check's
per-sample table (:class:`~audit.results.SampleTable`, e.g. ``clean.correct``,
``adversarial.robust[norm=linf,epsilon=0.031]``) is compared id by id.

A value that is not a number (a string in a hand-edited or foreign results.json) is never
compared: its row's status is ``not_a_number``. A NaN or a missing value (``null``, as a NaN
is saved) where the other side has a number counts as a change: a directed metric that lost its
value is a regression (it can no longer be shown to meet anything), one that gained it an
improvement.
"""
from __future__ import annotations

import math
from typing import Any

from .results import AuditResult, GateResult, Metric

#: metrics where a higher value is better / worse; others are reported but never flagged
HIGHER_IS_BETTER = {"accuracy", "robust_accuracy", "median_min_perturbation", "insertion_auc",
                    "mean_min_perturbation"}
LOWER_IS_BETTER = {"expected_calibration_error", "nll", "attack_success_rate", "fooling_rate",
                   "median_best_confidence", "deletion_auc", "garbage_confidence_share", "flip_rate"}


def _key(check: str, m: dict[str, Any]) -> tuple:
    """(check, name, qualifiers): a rate's ``n`` and interval are not part of a row's identity."""
    quals = tuple(sorted((k, str(v)) for k, v in m.items() if k not in Metric.RESERVED and v is not None))
    return (check, m["name"], quals)


def _label(key: tuple) -> str:
    check, name, quals = key
    q = "[" + ",".join(f"{k}={v}" for k, v in quals) + "]" if quals else ""
    return f"{check}.{name}{q}"


def direction(name: str) -> str:
    if name in HIGHER_IS_BETTER:
        return "higher"
    if name in LOWER_IS_BETTER:
        return "lower"
    return "neutral"


def _records(res: AuditResult) -> dict[str, dict[str, dict[str, bool]]]:
    """check -> outcome column -> {sample id: bool}, from each check's per-sample table."""
    return {c.name: cols for c in res.checks if c.samples is not None and (cols := c.samples.outcomes())}


def compare(base: AuditResult, new: AuditResult, *, tolerance: float = 0.01) -> dict[str, Any]:
    """The comparison block (also stored as ``baseline`` in the new results.json)."""
    bmet = {_key(c.name, m.to_dict()): m for c in base.checks for m in c.metrics}
    nmet = {_key(c.name, m.to_dict()): m for c in new.checks for m in c.metrics}
    bm = {k: m.value for k, m in bmet.items()}
    nm = {k: m.value for k, m in nmet.items()}
    rows, regressions, improvements = [], [], []
    for key in sorted(set(bm) | set(nm), key=_label):
        b, n = bm.get(key), nm.get(key)
        d = direction(key[1])
        delta = None if (b is None or n is None or not (_is_number(b) and _is_number(n))) else n - b
        status = "same"
        if key not in bm:
            status = "new"
        elif key not in nm:
            status = "missing"
        elif not (_is_number(b) or b is None) or not (_is_number(n) or n is None):
            status = "not_a_number"
        elif _void(b) or _void(n):  # no value (None, or NaN) on one side or both
            delta = None
            if d != "neutral" and _void(b) != _void(n):
                status = "regressed" if _void(n) else "improved"
        elif d != "neutral":
            worse = -delta if d == "higher" else delta
            if worse > tolerance:
                status = "regressed"
            elif worse < -tolerance:
                status = "improved"
        row = {"metric": _label(key), "base": b, "new": n, "delta": delta, "better": d, "status": status}
        for side, met in (("base", bmet.get(key)), ("new", nmet.get(key))):
            if met is not None and met.is_rate:  # shown beside the values; the flag above ignores them
                row[f"{side}_ci"] = [met.ci_low, met.ci_high]
                row[f"{side}_n"] = met.n
        rows.append(row)
        if status == "regressed":
            regressions.append(row)
        elif status == "improved":
            improvements.append(row)
    flips = []
    br, nr = _records(base), _records(new)
    for check in sorted(set(br) & set(nr)):
        for col in sorted(set(br[check]) & set(nr[check])):
            b, n = br[check][col], nr[check][col]
            common = [i for i in n if i in b]
            lost = [i for i in common if b[i] and not n[i]]
            gained = [i for i in common if not b[i] and n[i]]
            if lost or gained:
                flips.append({"check": check, "outcome": col, "samples": len(common),
                              "newly_false": lost[:50], "newly_true": gained[:50],
                              "n_newly_false": len(lost), "n_newly_true": len(gained)})
    return {"base": {"path": base.model.get("path"), "sha256": base.model.get("sha256"), "status": base.status},
            "tolerance": tolerance, "rows": rows, "regressions": regressions, "improvements": improvements,
            "flips": flips}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _void(v: Any) -> bool:
    """No value: None (a NaN once saved as JSON) or NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: Any) -> str:
    """A value for the table: a number to 4 digits, ``-`` for none, anything else as written."""
    if v is None:
        return "-"
    return f"{v:.4g}" if _is_number(v) else repr(v)[:20]


def regression_gate(comparison: dict[str, Any]) -> GateResult:
    regs = comparison["regressions"]
    tol = comparison["tolerance"]
    if regs:
        worst = max(regs, key=lambda r: abs(r["delta"] or 0))
        return GateResult("baseline.regressions", "== 0", "fail", "fail", float(len(regs)),
                          f"{len(regs)} metric(s) worse than the baseline by more than {tol:g}; largest: "
                          f"{worst['metric']} {_fmt(worst['base'])} -> {_fmt(worst['new'])}")
    return GateResult("baseline.regressions", "== 0", "fail", "pass", 0.0,
                      f"no metric worse than the baseline by more than {tol:g}")


def _ci(row: dict[str, Any], side: str) -> str:
    """``[0.03288, 0.1955] n=48`` for one side of a comparison row, ``-`` without an interval."""
    lo, hi = row.get(f"{side}_ci") or (None, None)
    if lo is None or hi is None:
        return "-" if f"{side}_n" not in row else f"- n={row[f'{side}_n']}"
    return f"[{lo:.4g}, {hi:.4g}] n={row[f'{side}_n']}"


def format_comparison(comparison: dict[str, Any], *, all_rows: bool = False) -> str:
    """Plain-text table for `audit diff`."""
    lines = [f"baseline: {comparison['base']['path']}  (tolerance {comparison['tolerance']:g})"]
    rows = comparison["rows"] if all_rows else [r for r in comparison["rows"] if r["status"] != "same"]
    for r in rows:
        b, n = _fmt(r["base"]), _fmt(r["new"])
        d = "" if r["delta"] is None else f"{r['delta']:+.4g}"
        ci = "  95% CI " + " -> ".join(_ci(r, side) for side in ("base", "new")) if "base_ci" in r or "new_ci" in r else ""
        lines.append(f"  {r['status'].upper():<9} {r['metric']:<60} {b:>10} -> {n:<10} {d}{ci}")
    for f in comparison["flips"]:
        lines.append(f"  FLIPS     {f['check']}.{f['outcome']}: {f['n_newly_false']} newly false, "
                     f"{f['n_newly_true']} newly true of {f['samples']}"
                     + (f" (e.g. {', '.join(f['newly_false'][:3])})" if f["newly_false"] else ""))
    n = len(comparison["regressions"])
    lines.append(f"{n} regression(s), {len(comparison['improvements'])} improvement(s)")
    return "\n".join(lines)
