"""audit/config.py and audit/policy.py: TOML config, unknown keys, gates."""
import pytest

from audit.config import AuditConfig, parse_gate
from audit.errors import ConfigError
from audit.policy import evaluate_gate
from audit.results import CheckResult


def test_config_from_toml(tmp_path):
    p = tmp_path / "audit.toml"
    p.write_text('[audit]\nseed = 3\nsamples = 20\nchecks = ["clean"]\n\n[checks.clean]\nece_bins = 10\n\n'
                 '[gates]\n"clean.accuracy" = ">= 0.9"\n"clean.accuracy[class=*]" = { condition = ">= 0.5", severity = "warn" }\n')
    cfg = AuditConfig.load(p)
    assert cfg.seed == 3 and cfg.samples == 20 and cfg.checks == ["clean"]
    assert cfg.options_for("clean").ece_bins == 10
    assert [(g.metric, g.op, g.threshold, g.severity) for g in cfg.gates] == [
        ("accuracy", ">=", 0.9, "fail"), ("accuracy", ">=", 0.5, "warn")]


@pytest.mark.parametrize("text,match", [
    ("[audit]\nsede = 1\n", "unknown key 'sede' in \\[audit\\]"),
    ("[checks.clean]\nbins = 3\n", "unknown key 'bins'"),
    ("[checks.nosuch]\n", "unknown check 'nosuch'"),
    ("[gates]\n\"clean.accurcy\" = \">= 0.9\"\n", "no metric 'accurcy'"),
    ("[gates]\n\"clean.accuracy\" = \"at least 0.9\"\n", "condition must be like"),
    ("[gaits]\n", "unknown table or key 'gaits'"),
    ("[checks.clean]\nece_bins = \"ten\"\n", "ece_bins = .ten.: expected an integer"),
    ("not toml [", "not valid TOML"),
])
def test_bad_config_names_the_problem(tmp_path, text, match):
    p = tmp_path / "audit.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        AuditConfig.load(p)


def _clean(acc_by_class):
    r = CheckResult("clean")
    r.metric("accuracy", sum(acc_by_class.values()) / len(acc_by_class))
    for k, v in acc_by_class.items():
        r.metric("accuracy", v, **{"class": k})
    return r


def test_gate_evaluation():
    res = [_clean({"cat": 0.9, "dog": 0.5})]
    assert evaluate_gate(parse_gate("clean.accuracy", ">= 0.7"), res).status == "pass"
    g = evaluate_gate(parse_gate("clean.accuracy", ">= 0.8"), res)
    assert g.status == "fail" and "0.7" in g.message and ">= 0.8" in g.message
    g = evaluate_gate(parse_gate("clean.accuracy[class=*]", "warn: >= 0.6"), res)
    assert g.status == "warn" and "class=dog" in g.message
    assert evaluate_gate(parse_gate("clean.accuracy[class=cat]", ">= 0.85"), res).status == "pass"
    # a gate whose metric row does not exist is an error, never a silent pass
    assert evaluate_gate(parse_gate("clean.accuracy[class=emu]", ">= 0.1"), res).status == "error"
    assert evaluate_gate(parse_gate("clean.nll", "<= 1"), []).status == "error"
