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
    """Find the gate's metric rows and test the condition. No matching row is an
    ``error`` (a gate on something that does not exist must not pass silently)."""
    check = next((c for c in checks if c.name == gate.check), None)
    if check is None:
        return GateResult(gate.expr, gate.condition, gate.severity, "error", None, f"check {gate.check!r} did not run")
    if check.status == "error":
        return GateResult(gate.expr, gate.condition, gate.severity, "error", None,
                          f"check {gate.check!r} failed with an error, so its metric is missing")
    rows = [m for m in check.metrics if _matches(m, gate)]
    if not rows:
        return GateResult(gate.expr, gate.condition, gate.severity, "error", None,
                          f"no metric {gate.metric}{_quals(gate)} in check {gate.check!r}'s results")
    failing = [m for m in rows if not gate.holds(m.value)]
    shown = failing[0] if failing else min(rows, key=lambda m: (m.value if m.value is not None else -math.inf))
    where = _row_label(shown) if (len(rows) > 1 or gate.qualifiers) else ""
    val = "n/a" if shown.value is None else f"{shown.value:.4g}"
    if failing:
        extra = f" ({len(failing)} of {len(rows)} rows)" if len(rows) > 1 else ""
        return GateResult(gate.expr, gate.condition, gate.severity, gate.severity, shown.value,
                          f"{gate.check}.{gate.metric}{where} = {val}, required {gate.condition}{extra}")
    return GateResult(gate.expr, gate.condition, gate.severity, "pass", shown.value,
                      f"{gate.check}.{gate.metric}{where} = {val} meets {gate.condition}")


def _quals(gate: Gate) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in gate.qualifiers.items()) + "]" if gate.qualifiers else ""


def _row_label(m: Metric) -> str:
    q = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in m.qualifiers.items() if v is not None}
    return "[" + ",".join(f"{k}={v}" for k, v in q.items()) + "]" if q else ""
