"""Gates: turning metric rows into pass/warn/fail for a CI pipeline (deepchecks' conditions,
kept apart from both the checks and the rendering)."""
from __future__ import annotations

import math
from typing import Iterable

from .config import Gate
from .results import CheckResult, GateResult, Metric


def _matches(m: Metric, gate: Gate) -> bool:
    if m.name != gate.metric:
        return False
    quals = {k: v for k, v in m.qualifiers.items() if v is not None}
    if set(quals) != set(gate.qualifiers):
        return False
    for k, want in gate.qualifiers.items():
        have = quals[k]
        if want == "*":
            continue
        if isinstance(have, (int, float)) and not isinstance(have, bool):
            try:
                # 1% tolerance: users write 0.0078 for 2/255 (grids are far coarser than that)
                if not math.isclose(float(have), float(want), rel_tol=1e-2, abs_tol=1e-6):
                    return False
            except ValueError:
                return False
        elif str(have) != want:
            return False
    return True


def evaluate_gate(gate: Gate, checks: Iterable[CheckResult]) -> GateResult:
    """Find the gate's metric rows and test the condition on each row's ``gate.part`` (its
    value, or a rate's ``ci_low``, ``ci_high`` or ``n``). No matching row is an ``error`` (a
    gate on something that does not exist must not pass silently); so is a gate on an
    interval bound or ``n`` of a row that is not a rate. A rate over no samples has no value
    and no interval: a gate on it is unmet, as on any missing value."""
    check = next((c for c in checks if c.name == gate.check), None)
    if check is None:
        return GateResult(gate.expr, gate.condition, gate.severity, "error", None, f"check {gate.check!r} did not run")
    if check.status == "error":
        return GateResult(gate.expr, gate.condition, gate.severity, "error", None,
                          f"check {gate.check!r} failed with an error, so its metric is missing")
    rows = [m for m in check.metrics if _matches(m, gate)]
    what = f"{gate.check}.{gate.metric}" + ("" if gate.part == "value" else f".{gate.part}")
    if not rows:
        return GateResult(gate.expr, gate.condition, gate.severity, "error", None,
                          f"no metric {gate.metric}{_quals(gate)} in check {gate.check!r}'s results")
    bare = [m for m in rows if (gate.part == "n" and not m.is_rate)
            or (gate.part in ("ci_low", "ci_high") and not (m.is_rate or m.has_interval))]
    if bare:
        return GateResult(gate.expr, gate.condition, gate.severity, "error", None,
                          f"{gate.check}.{gate.metric}{_row_label(bare[0])} has no "
                          f"{'sample count' if gate.part == 'n' else '95% interval'}, so {gate.part} cannot be gated "
                          "(gate its value)")
    failing = [m for m in rows if not gate.holds(m.part(gate.part))]

    def number(m: Metric) -> float:
        v = m.part(gate.part)
        return -math.inf if v is None else v

    shown = failing[0] if failing else min(rows, key=number)
    where = _row_label(shown) if (len(rows) > 1 or gate.qualifiers) else ""
    v = shown.part(gate.part)
    val = "n/a" if v is None else f"{v:.4g}"
    head = f"{what}{where} = {val}{_interval(shown, gate.part)}"
    interval = ({"value": shown.value, "ci_low": shown.ci_low, "ci_high": shown.ci_high, "n": shown.n}
                if shown.is_rate else None)
    if failing:
        extra = f" ({len(failing)} of {len(rows)} rows)" if len(rows) > 1 else ""
        return GateResult(gate.expr, gate.condition, gate.severity, gate.severity, v,
                          f"{head}, required {gate.condition}{extra}", interval)
    return GateResult(gate.expr, gate.condition, gate.severity, "pass", v, f"{head} meets {gate.condition}", interval)


def _interval(m: Metric, part: str) -> str:
    """`` (95% CI 0.03288–0.1955, n=48)`` for a rate row (with the rate itself when the gate
    tests another part), empty otherwise."""
    if not m.is_rate:
        if m.has_interval and m.ci_low is not None and m.ci_high is not None:
            est = "" if part == "value" else ("estimate n/a, " if m.value is None else f"estimate {m.value:.4g}, ")
            return f" ({est}95% CI {m.ci_low:.4g}\u2013{m.ci_high:.4g})"
        return ""
    rate = "" if part == "value" else ("rate n/a, " if m.value is None else f"rate {m.value:.4g}, ")
    ci = "no interval" if m.ci_low is None or m.ci_high is None else f"95% CI {m.ci_low:.4g}\u2013{m.ci_high:.4g}"
    return f" ({rate}{ci}, n={m.n})"


def _quals(gate: Gate) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in gate.qualifiers.items()) + "]" if gate.qualifiers else ""


def _row_label(m: Metric) -> str:
    q = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in m.qualifiers.items() if v is not None}
    return "[" + ",".join(f"{k}={v}" for k, v in q.items()) + "]" if q else ""
