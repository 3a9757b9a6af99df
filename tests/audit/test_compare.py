"""audit diff / --baseline, audit init, audit.testing."""
import json
import math

import pytest
import torch

from audit.cli import main
from audit.config import AuditConfig
from audit.errors import ExitCode
from audit.results import AuditResult
from audit.testing import assert_audit
from tests.tinymodels import train_tiny


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, pattern_folder, labels_file, model_files):
    """A good model and a worse one (trained far less), audited on the same data."""
    d = tmp_path_factory.mktemp("diff")
    weak = train_tiny(seed=3, steps=4)
    torch.save(weak.state_dict(), d / "weak.pth")
    common = ["--data", str(pattern_folder), "--labels", str(labels_file), "--checks", "clean", "-q"]
    assert main(["run", str(model_files / "sd.pth"), "--arch", "tinynet", "--out", str(d / "base"), *common]) == 0
    return d, common


def test_diff_flags_a_regression_between_two_models(two_runs, model_files, capsys):
    d, common = two_runs
    main(["run", str(d / "weak.pth"), "--arch", "tinynet", "--out", str(d / "new"), *common])
    capsys.readouterr()
    rc = main(["diff", str(d / "base" / "results.json"), str(d / "new" / "results.json")])
    out = capsys.readouterr().out
    assert rc == ExitCode.GATE_FAILED
    assert "REGRESSED" in out and "clean.accuracy " in out and "newly false" in out
    # a model compared with itself has no regression
    assert main(["diff", str(d / "base"), str(d / "base")]) == ExitCode.OK


def test_run_with_baseline_exits_1_and_records_the_comparison(two_runs, tmp_path):
    d, common = two_runs
    out = tmp_path / "cmp"
    rc = main(["run", str(d / "weak.pth"), "--arch", "tinynet", "--out", str(out),
               "--baseline", str(d / "base" / "results.json"), *common])
    assert rc == ExitCode.GATE_FAILED
    res = json.loads((out / "results.json").read_text())
    assert res["baseline"]["regressions"] and res["gates"][-1]["gate"] == "baseline.regressions"
    assert res["baseline"]["flips"][0]["n_newly_false"] > 0
    assert "Baseline comparison" in (out / "report.html").read_text()


def test_init_writes_a_config_that_parses(tmp_path):
    p = tmp_path / "audit.toml"
    assert main(["init", str(p), "-q"]) == 0
    cfg = AuditConfig.load(p)
    assert cfg.gates and cfg.gates[0].expr == "clean.accuracy"
    assert main(["init", str(p), "-q"]) == ExitCode.USAGE_ERROR  # no silent overwrite


def test_assert_audit_lists_every_unmet_gate(two_runs):
    d, _ = two_runs
    res = AuditResult.load(d / "base" / "results.json")
    assert_audit(res, {"clean.accuracy": ">= 0.5"})
    with pytest.raises(AssertionError) as e:
        assert_audit(res, {"clean.accuracy": ">= 1.5", "clean.nll": "<= -1", "clean.accuracy[class=*]": "warn: >= 2"})
    msg = str(e.value)
    assert "2 audit gate(s) unmet" in msg and "clean.nll" in msg and "required >= 1.5" in msg


def _result(**values):
    from audit.results import CheckResult, Metric

    c = CheckResult("clean")
    c.metrics = [Metric(k, v) for k, v in values.items()]
    return AuditResult(model={"path": "m.pt"}, run={}, checks=[c])


def test_diff_skips_a_string_metric_and_counts_a_new_nan_as_a_regression(tmp_path, capsys):
    """A string value is reported as not a number (never compared, never exit 3); a NaN where
    the baseline had a number is a regression of a directed metric."""
    from audit.compare import compare, format_comparison

    base = _result(accuracy=0.9, nll="0.3", expected_calibration_error=0.05)
    new = _result(accuracy=math.nan, nll=0.4, expected_calibration_error=0.05)
    comp = compare(base, new)
    status = {r["metric"]: r["status"] for r in comp["rows"]}
    assert status == {"clean.accuracy": "regressed", "clean.nll": "not_a_number",
                      "clean.expected_calibration_error": "same"}
    assert "NOT_A_NUMBER" in format_comparison(comp) and "'0.3'" in format_comparison(comp)
    assert compare(new, base)["improvements"][0]["metric"] == "clean.accuracy"
    # through the CLI: exit 1 (the NaN regression), one table, no traceback
    base.save(tmp_path / "b")
    new.save(tmp_path / "n")
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "b"), str(tmp_path / "n")]) == ExitCode.GATE_FAILED
    out, err = capsys.readouterr()
    assert "REGRESSED" in out and "Traceback" not in err
