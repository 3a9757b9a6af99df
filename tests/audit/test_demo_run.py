"""`audit demo`: every registered check runs on the bundled model and writes a schema-valid
results.json next to the report."""
import json

import pytest

from audit.errors import ExitCode
from audit.model import FORMATS
from audit.registry import registered_checks

pytestmark = pytest.mark.slow  # real subprocesses / the whole demo


STATUSES = {"pass", "warn", "fail", "error"}


def validate_result(d: dict) -> None:
    """The audit-result/1 contract of docs/results.md, checked key by key."""
    assert d["schema"] == "audit-result/1" and d["status"] in STATUSES
    m = d["model"]
    for k in ("path", "sha256", "format", "num_classes", "input_shape", "class_names"):
        assert k in m, k
    assert m["format"] in FORMATS
    assert len(m["input_shape"]) == 3 and len(m["class_names"]) == m["num_classes"]
    for k in ("seed", "device", "torch", "started", "duration_s"):
        assert k in d["run"], k
    for c in d["checks"]:
        assert c["status"] in STATUSES and isinstance(c["duration_s"], (int, float))
        assert (c["error"] is None) == (c["status"] != "error")
        for row in c["metrics"]:
            assert isinstance(row["name"], str) and (row["value"] is None or isinstance(row["value"], (int, float)))
            if "n" in row:  # a rate: its sample count and 95% interval (docs/results.md)
                assert isinstance(row["n"], int) and row["n"] >= 0
                if row["n"]:
                    assert 0 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1
                    assert abs(row["value"] * row["n"] - round(row["value"] * row["n"])) < 1e-6
                else:
                    assert row["value"] is None and row["ci_low"] is None and row["ci_high"] is None
            if c["name"] in ("clean", "adversarial") and row["name"] in ("accuracy", "robust_accuracy",
                                                                          "attack_success_rate"):
                assert "n" in row, row
        for f in c["findings"]:
            assert f["severity"] in {"info", "warn", "fail"} and "." in f["code"] and f["message"]
            assert "class" in f
        for a in c["artifacts"]:
            assert a["kind"] and a["path"].startswith("artifacts/")
    for g in d["gates"]:
        assert g["status"] in {"pass", "warn", "fail", "error"} and g["gate"] and g["condition"]
        if g.get("interval"):
            assert set(g["interval"]) == {"value", "ci_low", "ci_high", "n"}


def test_demo_runs_every_check_and_writes_valid_results(demo_run):
    out, rc = demo_run
    assert rc in (ExitCode.OK, ExitCode.GATE_FAILED)
    d = json.loads((out / "results.json").read_text())
    validate_result(d)
    ran = [c["name"] for c in d["checks"]]
    assert ran == list(registered_checks())
    assert [c["name"] for c in d["checks"] if c["status"] == "error"] == []
    for c in d["checks"]:
        for a in c["artifacts"]:
            assert (out / a["path"]).is_file()
    for f in ("report.html", "metrics.csv", "junit.xml", "summary.md"):
        assert (out / f).is_file()
    assert (out / "report.html").stat().st_size < 10_000_000
