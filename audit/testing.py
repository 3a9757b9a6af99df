"""pytest helpers for gating a model in a CI test suite.

```python
# test_model_audit.py
from audit.testing import assert_audit

def test_model_is_robust_enough(audit_result):         # fixture: set AUDIT_MODEL / AUDIT_DATA
    assert_audit(audit_result, {
        "clean.accuracy": ">= 0.9",
        "adversarial.robust_accuracy[attack=worst,norm=linf,epsilon=0.0078]": ">= 0.3",
    })
```

``assert_audit`` raises ``AssertionError`` listing every unmet gate with its value and
threshold (all of them, not just the first). The ``audit_result`` fixture (registered with
``pytest_plugins = ["audit.testing"]`` in a conftest.py) runs the audit once per session on
``$AUDIT_MODEL`` with ``$AUDIT_DATA`` and optional ``$AUDIT_CONFIG``, and saves the report to
``$AUDIT_OUT`` (default ``audit-out``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from .config import parse_gate
from .policy import evaluate_gate
from .results import AuditResult, GateResult


def check_gates(result: AuditResult, gates: Mapping[str, Any]) -> list[GateResult]:
    """Evaluate ``{"check.metric[q=v]": ">= 0.9" | {"condition":..., "severity":...}}``."""
    return [evaluate_gate(parse_gate(expr, cond), result.checks) for expr, cond in gates.items()]


def assert_audit(result: AuditResult, gates: Mapping[str, Any] | None = None, *, allow_errors: bool = False) -> None:
    """Fail with one line per unmet gate (warn-severity gates do not fail). Without
    ``gates``, the result's own gates are used. Checks that errored fail too unless
    ``allow_errors``."""
    evaluated = check_gates(result, gates) if gates is not None else list(result.gates)
    problems = [f"{g.gate} {g.condition}: {g.message}" for g in evaluated if g.status in ("fail", "error")]
    if not allow_errors:
        problems += [f"check {c.name} errored: {c.error}" for c in result.errored_checks()]
    if problems:
        raise AssertionError(f"{len(problems)} audit gate(s) unmet for {result.model.get('path')}:\n  "
                             + "\n  ".join(problems))


try:  # the fixture, when pytest is present
    import pytest

    @pytest.fixture(scope="session")
    def audit_result() -> AuditResult:
        from .data import load_data
        from .model import load_model
        from .runner import run_audit

        model_path = os.environ.get("AUDIT_MODEL")
        if not model_path:
            pytest.skip("set AUDIT_MODEL (and AUDIT_DATA) to audit a model")
        model = load_model(model_path, trust=os.environ.get("AUDIT_TRUST") == "1")
        data = load_data(os.environ["AUDIT_DATA"], model=model) if os.environ.get("AUDIT_DATA") else None
        result = run_audit(model, data, os.environ.get("AUDIT_CONFIG"))
        result.save(os.environ.get("AUDIT_OUT", "audit-out"))
        return result
except ImportError:  # pragma: no cover
    pass
