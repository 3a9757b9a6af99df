"""Rates and their 95% intervals: the Wilson interval, ``CheckResult.rate``, the rows in
results.json and metrics.csv, gates on ``ci_low`` / ``ci_high`` / ``n``, the comparison rows,
and the rates the clean and adversarial checks emit."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from audit.cli import main
from audit.compare import compare, format_comparison
from audit.config import AuditConfig, parse_gate
from audit.errors import ConfigError, ExitCode
from audit.policy import evaluate_gate
from audit.results import AuditResult, CheckResult, GateResult, Metric, wilson_interval

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

Z = 1.959963984540054  # the 97.5% quantile of the standard normal


def wilson_closed_form(k: int, n: int) -> tuple[float, float]:
    """Wilson (1927), eq. (1) of Brown, Cai & DasGupta (2001), written out here independently
    of scipy: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


# --------------------------------------------------------------------------- the interval
@pytest.mark.parametrize("k,n", [(4, 48), (0, 48), (48, 48), (1, 1), (0, 1), (37, 96), (500, 1000)])
def test_wilson_matches_the_closed_form(k, n):
    lo, hi = wilson_interval(k, n)
    want = wilson_closed_form(k, n)
    assert lo == pytest.approx(max(want[0], 0.0), abs=1e-9) and hi == pytest.approx(min(want[1], 1.0), abs=1e-9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_known_values():
    # 4 of 48 (8.3%): the interval the issue quotes, to the tenth of a point
    lo, hi = wilson_interval(4, 48)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (3.3, 19.6)
    # no successes: the lower bound is 0 and the upper z²/(n+z²); all successes mirror it
    lo, hi = wilson_interval(0, 48)
    assert lo == 0.0 and hi == pytest.approx(Z**2 / (48 + Z**2), rel=1e-9)
    lo, hi = wilson_interval(48, 48)
    assert hi == 1.0 and lo == pytest.approx(48 / (48 + Z**2), rel=1e-9)
    # symmetric in successes and failures; narrower with more samples
    a, b = wilson_interval(10, 40), wilson_interval(30, 40)
    assert a[0] == pytest.approx(1 - b[1]) and a[1] == pytest.approx(1 - b[0])
    assert wilson_interval(250, 1000)[1] - wilson_interval(250, 1000)[0] < b[1] - b[0]


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (None, None)
    for k, n in ((5, 4), (-1, 4), (0, -1)):
        with pytest.raises(ValueError, match="successes <= n"):
            wilson_interval(k, n)


# --------------------------------------------------------------------------- CheckResult.rate
def test_rate_row_value_n_and_interval():
    res = CheckResult("adversarial")
    m = res.rate("robust_accuracy", 4, 48, attack="worst", norm="linf", epsilon=0.0314)
    assert m.value == 4 / 48 and m.n == 48 and (m.ci_low, m.ci_high) == wilson_interval(4, 48)
    assert m.is_rate and m.qualifiers == {"attack": "worst", "norm": "linf", "epsilon": 0.0314}
    d = m.to_dict()
    assert d["n"] == 48 and d["ci_low"] == m.ci_low and d["ci_high"] == m.ci_high and d["attack"] == "worst"
    back = Metric.from_dict(json.loads(json.dumps(d)))
    assert back == m and back.qualifiers == m.qualifiers  # n and the bounds are not qualifiers
    # counts may be integer tensors; a share is refused (it cannot pass for a count)
    t = res.rate("accuracy", torch.tensor(3), torch.tensor(4))
    assert t.value == 0.75 and t.n == 4
    with pytest.raises(TypeError, match="integer"):
        res.rate("accuracy", 0.75, 4)


def test_rate_over_no_samples_has_no_value_and_no_interval():
    m = CheckResult("clean").rate("accuracy", 0, 0, **{"class": "emu"})
    assert m.value is None and m.n == 0 and m.ci_low is None and m.ci_high is None
    assert m.to_dict() == {"name": "accuracy", "value": None, "n": 0, "ci_low": None, "ci_high": None, "class": "emu"}


def test_plain_metrics_keep_their_old_rows_and_reserved_names_are_refused():
    res = CheckResult("clean")
    m = res.metric("nll", 0.3)
    assert m.to_dict() == {"name": "nll", "value": 0.3} and not m.is_rate
    assert Metric.from_dict({"name": "accuracy", "value": 0.9, "class": "cat"}).n is None  # an older results.json
    for bad in ("n", "ci_low", "ci_high"):
        with pytest.raises(ValueError, match="not a qualifier"):
            res.metric("accuracy", 0.5, **{bad: 1})


def _result(*checks: CheckResult) -> AuditResult:
    return AuditResult(model={"path": "m.pt"}, run={"seed": 0}, checks=list(checks))


def test_results_json_and_csv_carry_the_interval(tmp_path):
    c = CheckResult("clean")
    c.rate("accuracy", 88, 96)
    c.metric("nll", 0.3)
    c.rate("accuracy", 11, 16, **{"class": "dumbbell"})
    res = _result(c)
    loaded = AuditResult.from_dict(json.loads(res.to_json()))
    assert loaded.to_dict() == res.to_dict()
    assert loaded.checks[0].metrics[2].ci_low == wilson_interval(11, 16)[0]
    df = res.frame
    assert list(df.columns[:6]) == ["check", "name", "value", "n", "ci_low", "ci_high"]
    assert str(df["n"].dtype) == "Int64" and df["n"].tolist()[0] == 96 and df["n"].isna().tolist()[1]
    res.frame.to_csv(tmp_path / "m.csv", index=False)
    head, first = (tmp_path / "m.csv").read_text().splitlines()[:2]
    assert head.startswith("check,name,value,n,ci_low,ci_high") and first.startswith("clean,accuracy,0.9166") \
        and ",96," in first
    # a result without any rate keeps the old columns
    old = _result(CheckResult("clean", metrics=[Metric("accuracy", 0.9)]))
    assert list(old.frame.columns) == ["check", "name", "value"]


# --------------------------------------------------------------------------- gates
def test_gate_syntax_on_interval_bounds():
    g = parse_gate("adversarial.robust_accuracy.ci_low[attack=worst,norm=linf,epsilon=0.0314]", ">= 0.3")
    assert (g.check, g.metric, g.part, g.op, g.threshold) == ("adversarial", "robust_accuracy", "ci_low", ">=", 0.3)
    assert g.qualifiers == {"attack": "worst", "norm": "linf", "epsilon": "0.0314"}
    assert parse_gate("clean.accuracy.ci_high", "warn: <= 1").part == "ci_high"
    assert parse_gate("clean.accuracy.n[class=*]", ">= 30").part == "n"
    assert parse_gate("clean.accuracy", ">= 0.9").part == "value"
    assert parse_gate("clean.accuracy.value", ">= 0.9").part == "value"
    with pytest.raises(ConfigError, match="unknown field 'cilow'.*known: value, ci_low, ci_high, n"):
        parse_gate("clean.accuracy.cilow", ">= 0.9")
    with pytest.raises(ConfigError, match="optionally with .PART"):
        parse_gate("clean.accuracy[class=cat].ci_low", ">= 0.9")  # the part goes before the brackets
    with pytest.raises(ConfigError, match="no metric 'accurcy'"):
        AuditConfig.from_dict({"gates": {"clean.accurcy.ci_low": ">= 0.5"}})


def test_unknown_gate_field_exits_4_at_config_read(tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text('[gates]\n"clean.accuracy.lower" = ">= 0.5"\n')
    rc = main(["run", str(tmp_path / "no-such-model.pt"), "--data", str(tmp_path), "--config", str(cfg),
               "--out", str(tmp_path / "out"), "-q"])
    assert rc == ExitCode.USAGE_ERROR
    assert not (tmp_path / "out").exists()  # refused before any work


def _clean_rates() -> CheckResult:
    r = CheckResult("clean")
    r.rate("accuracy", 40, 48)                   # 83.3% [70.4-91.3]
    r.rate("accuracy", 20, 24, **{"class": "cat"})  # 83.3% [64.1-93.3]
    r.rate("accuracy", 12, 24, **{"class": "dog"})  # 50% [31.4-68.6]
    r.rate("accuracy", 0, 0, **{"class": "emu"})
    r.metric("nll", 0.4)
    return r


def test_gate_on_interval_bounds_evaluates_the_bound():
    res = [_clean_rates()]
    lo, hi = wilson_interval(40, 48)
    # the value passes where the lower bound does not: the point the bound gates exist for
    assert evaluate_gate(parse_gate("clean.accuracy", ">= 0.75"), res).status == "pass"
    g = evaluate_gate(parse_gate("clean.accuracy.ci_low", ">= 0.75"), res)
    assert g.status == "fail" and g.value == lo
    assert f"clean.accuracy.ci_low = {lo:.4g}" in g.message and "n=48" in g.message and "rate 0.8333" in g.message
    assert g.interval == {"value": 40 / 48, "ci_low": lo, "ci_high": hi, "n": 48}
    assert evaluate_gate(parse_gate("clean.accuracy.ci_low", f">= {lo - 1e-6}"), res).status == "pass"
    g = evaluate_gate(parse_gate("clean.accuracy.ci_high", "warn: <= 0.9"), res)
    assert g.status == "warn" and g.value == hi
    assert evaluate_gate(parse_gate("clean.accuracy.n", ">= 48"), res).status == "pass"
    assert evaluate_gate(parse_gate("clean.accuracy.n", ">= 49"), res).status == "fail"
    # qualifiers select rows as for values: the worst class row is reported
    g = evaluate_gate(parse_gate("clean.accuracy.ci_low[class=cat]", ">= 0.6"), res)
    assert g.status == "pass" and g.value == wilson_interval(20, 24)[0]
    g = evaluate_gate(parse_gate("clean.accuracy.ci_low[class=dog]", ">= 0.4"), res)
    assert g.status == "fail" and "class=dog" in g.message
    # a value gate on a rate shows the interval too; on a plain metric nothing changes
    g = evaluate_gate(parse_gate("clean.accuracy", ">= 0.5"), res)
    assert "95% CI" in g.message and g.interval["n"] == 48
    g = evaluate_gate(parse_gate("clean.nll", "<= 1"), res)
    assert g.status == "pass" and g.interval is None and "CI" not in g.message


def test_gate_on_a_bound_of_a_metric_without_interval_is_an_error():
    res = [_clean_rates()]
    for part in ("ci_low", "ci_high", "n"):
        g = evaluate_gate(parse_gate(f"clean.nll.{part}", ">= 0"), res)  # ">= 0" would hold for any number
        assert g.status == "error" and ("no 95% interval" in g.message or "no sample count" in g.message)
        assert g.value is None
    # an older results.json: the same metric, written before rates carried intervals
    old = CheckResult("clean", metrics=[Metric("accuracy", 0.9)])
    g = evaluate_gate(parse_gate("clean.accuracy.ci_low", "> 0"), [old])
    assert g.status == "error" and "no 95% interval" in g.message
    assert evaluate_gate(parse_gate("clean.accuracy", "> 0"), [old]).status == "pass"
    # an estimate with a bootstrap interval (no n): its bounds can be gated, its n cannot
    est = CheckResult("clean", metrics=[Metric("expected_calibration_error", 0.09, {"bins": 15}, ci_low=0.01,
                                               ci_high=0.08)])
    g = evaluate_gate(parse_gate("clean.expected_calibration_error.ci_low[bins=15]", "<= 0.1"), [est])
    assert g.status == "pass" and g.value == 0.01 and "95% CI 0.01" in g.message
    assert evaluate_gate(parse_gate("clean.expected_calibration_error.n[bins=15]", ">= 1"), [est]).status == "error"


def test_gate_on_a_rate_over_no_samples_is_unmet():
    res = [_clean_rates()]
    for gate in ("clean.accuracy[class=emu]", "clean.accuracy.ci_low[class=emu]"):
        g = evaluate_gate(parse_gate(gate, ">= 0"), res)
        assert g.status == "fail" and "n=0" in g.message
    assert evaluate_gate(parse_gate("clean.accuracy.n[class=emu]", "== 0"), res).status == "pass"
    # a wildcard includes the empty class and so fails
    assert evaluate_gate(parse_gate("clean.accuracy.ci_low[class=*]", ">= 0"), res).status == "fail"


def test_gate_result_round_trips_its_interval():
    g = evaluate_gate(parse_gate("clean.accuracy.ci_low", ">= 0.5"), [_clean_rates()])
    assert GateResult.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    old = {"gate": "clean.accuracy", "condition": ">= 0.5", "severity": "fail", "status": "pass", "value": 0.9,
           "message": "met"}
    assert GateResult.from_dict(old).interval is None and "interval" not in GateResult.from_dict(old).to_dict()


def test_template_documents_the_bound_syntax_and_it_parses():
    from audit.config import TEMPLATE

    line = next(ln for ln in TEMPLATE.splitlines() if ln.startswith('# "') and ".ci_low[" in ln)
    cfg = AuditConfig.from_dict(tomllib.loads("[gates]\n" + line[2:]))  # the line uncommented
    assert [(g.check, g.part) for g in cfg.gates] == [("adversarial", "ci_low")]


# --------------------------------------------------------------------------- comparison
def test_comparison_rows_carry_intervals_and_flags_do_not_change():
    base, new = CheckResult("clean"), CheckResult("clean")
    base.rate("accuracy", 45, 48)
    new.rate("accuracy", 40, 48)
    base.metric("nll", 0.2)
    new.metric("nll", 0.2)
    cmp = compare(_result(base), _result(new))
    row = next(r for r in cmp["rows"] if r["metric"] == "clean.accuracy")
    assert row["status"] == "regressed" and row["delta"] == pytest.approx(40 / 48 - 45 / 48)
    assert row["base_ci"] == list(wilson_interval(45, 48)) and row["new_ci"] == list(wilson_interval(40, 48))
    assert row["base_n"] == row["new_n"] == 48
    assert "base_ci" not in next(r for r in cmp["rows"] if r["metric"] == "clean.nll")
    assert "95% CI [0.8" in format_comparison(cmp)
    # a baseline written before intervals matches the same rows with the same flags
    old = CheckResult("clean", metrics=[Metric("accuracy", 45 / 48), Metric("nll", 0.2)])
    cmp_old = compare(_result(old), _result(new))
    strip = [{k: v for k, v in r.items() if not k.startswith("base_")} for r in cmp_old["rows"]]
    assert strip == [{k: v for k, v in r.items() if not k.startswith("base_")} for r in cmp["rows"]]
    assert [r["metric"] for r in cmp_old["regressions"]] == ["clean.accuracy"]
    assert "base_ci" not in cmp_old["rows"][0] and "new_ci" in cmp_old["rows"][0]


# --------------------------------------------------------------------------- the checks' rates
def test_clean_check_emits_rates():
    from audit.clean import CleanCheck
    from audit.context import Context
    from audit.data import AuditData
    from audit.model import AuditModel, ModelSpec

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    model = AuditModel(net, ModelSpec(input_shape=(3, 4, 4), class_names=["a", "b", "c"])).finalize().eval()
    x, y = torch.rand(20, 3, 4, 4), torch.tensor([0] * 9 + [1] * 7 + [2] * 4)
    cfg = AuditConfig(checks=["clean"])
    ctx = Context(model=model, data=AuditData(x, y, ["a", "b", "c"], [str(i) for i in range(20)]), config=cfg,
                  seed=0, logits=model.logits(x)).scoped("clean", declared={})
    res = CleanCheck(cfg.options_for("clean")).run(ctx)
    correct = model.logits(x).argmax(1) == y
    rows = {m.qualifiers.get("class"): m for m in res.metrics if m.name == "accuracy"}
    assert rows[None].n == 20 and rows[None].value == int(correct.sum()) / 20
    for c, name in enumerate("abc"):
        m = y == c
        assert rows[name].n == int(m.sum()) and rows[name].value == int(correct[m].sum()) / int(m.sum())
        assert (rows[name].ci_low, rows[name].ci_high) == wilson_interval(int(correct[m].sum()), int(m.sum()))
    assert all(not m.is_rate for m in res.metrics if m.name != "accuracy")


def test_adversarial_check_emits_rates_with_their_counts():
    """Every robust accuracy and attack success rate row is a count over the right samples:
    the evaluated ones (robust accuracy, per class: that class's), the attacked ones (success)."""
    from attacks.adversarial import AdversarialCheck
    from audit.context import Context
    from audit.data import AuditData
    from audit.model import AuditModel, ModelSpec
    from tests.tinymodels import PATTERNS, make_patterns

    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    for p in net.parameters():
        p.requires_grad_(False)
    model = AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize().eval()
    x, y = make_patterns(5, seed=3)
    cfg = AuditConfig(checks=["adversarial"], batch_size=64,
                      check_options={"adversarial": {"norms": ["linf"], "epsilons": {"linf": [0.01, 0.05]}}})
    d = AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))])
    ctx = Context(model=model, data=d, config=cfg, seed=0, logits=model.logits(x)).scoped(
        "adversarial", declared=AdversarialCheck.publishes)
    res = AdversarialCheck(cfg.options_for("adversarial")).run(ctx)
    assert res.error is None
    n = len(y)
    correct = model.logits(x).argmax(1) == y
    rates = [m for m in res.metrics if m.name in ("robust_accuracy", "attack_success_rate")]
    assert rates and all(m.is_rate for m in rates)
    for m in rates:
        k = round(m.value * m.n) if m.n else 0
        assert m.value is None or m.value == k / m.n
        assert (m.ci_low, m.ci_high) == wilson_interval(k, m.n)
        cls = m.qualifiers.get("class")
        if m.name == "attack_success_rate":
            assert m.n == int(correct.sum())
        elif cls is None:
            assert m.n == n
        else:
            assert m.n == int((y == PATTERNS.index(cls)).sum())
    # the worst case agrees with the per-sample table
    for e in (0.01, 0.05):
        row = next(m for m in rates if m.name == "robust_accuracy" and m.qualifiers.get("attack") == "worst"
                   and "class" not in m.qualifiers and m.qualifiers["epsilon"] == e)
        col = next(v for k, v in res.samples.columns.items() if k.startswith("robust[") and f"epsilon={e:.4g}" in k)
        assert row.value * n == pytest.approx(sum(col))
    assert f"] of {n}," in res.summary and "robust " in res.summary
