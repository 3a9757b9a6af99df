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


# ---------------------------------------------------------------- values that must not pass
@pytest.mark.parametrize("table,match", [
    ({"checks": {"clean": {"ece_bins": 0}}}, r"ece_bins = 0: must be from 1 to 10,000"),
    ({"checks": {"clean": {"ece_bins": -3}}}, r"ece_bins = -3: must be from 1 to 10,000"),
    ({"checks": {"clean": {"ece_bins": 10**5}}}, r"must be from 1 to 10,000"),
    ({"checks": {"adversarial": {"pgd_steps": 2.5}}}, r"pgd_steps = 2\.5: expected an integer"),
    ({"checks": {"adversarial": {"pgd_steps": 10**12}}}, r"pgd_steps = 1000000000000: must be from 1 to 1,000,000"),
    ({"checks": {"adversarial": {"square_queries": 10**12}}}, r"square_queries = .*: must be from 1 to 1,000,000"),
    ({"checks": {"fooling": {"queries_per_class": 10**12}}}, r"queries_per_class = .*1,000,000"),
    ({"checks": {"adversarial": {"epsilons": {"l2": [1e300]}}}}, r"epsilons = .*must be at most 7,100"),
    ({"checks": {"adversarial": {"epsilons": {"linf": [2.0]}}}}, r"epsilons.linf: 2.0 is beyond the input range"),
    ({"audit": {"samples": 10**12}}, r"samples must be an integer from 1 to 1,000,000,000"),
    ({"audit": {"batch_size": 2.5}}, r"batch_size must be an integer"),
    ({"audit": {"seed": 2**64}}, r"seed must be an integer from 0 to"),
    ({"gates": {"clean.accuracy": ">= nan"}}, r"threshold must be a number"),
    ({"gates": {"clean.accuracy": ">= 1e"}}, r"threshold must be a number"),
    ({"gates": {"clean.accuracy": ">= ."}}, r"threshold must be a number"),
    ({"gates": {"clean.accuracy[]": ">= 0.5"}}, r"is not key=value"),
    ({"gates": {"clean.accuracy[=x]": ">= 0.5"}}, r"is not key=value"),
    ({"gates": {"clean.accuracy[class=a,class=b]": ">= 0.5"}}, r"qualifier 'class' is given twice"),
    ({"gates": {"clean.accuracy": {"condition": ">= 0.5", "severity": ["warn"]}}}, r"must be warn or fail"),
    ({"gates": {"clean.accuracy": {"condition": 0.5}}}, r"condition must be like"),
])
def test_out_of_range_values_are_refused_at_read(tmp_path, table, match):
    """Each value is a one-line ConfigError (exit 4) naming the option and its range, raised
    when the config is read: before any model, data or check."""
    with pytest.raises(ConfigError, match=match) as e:
        AuditConfig.from_dict(table)
    assert "\n" not in str(e.value) and e.value.exit_code == 4


def test_float_step_count_in_toml_is_refused(tmp_path):
    p = tmp_path / "audit.toml"
    p.write_text("[checks.adversarial]\npgd_steps = 2.5\n")
    with pytest.raises(ConfigError, match=r"\[checks.adversarial\] pgd_steps = 2.5: expected an integer"):
        AuditConfig.load(p)


def test_deeply_nested_toml_is_one_line_error(tmp_path):
    p = tmp_path / "audit.toml"
    p.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nests arrays or tables too deeply") as e:
        AuditConfig.load(p)
    assert "\n" not in str(e.value)


def test_deeply_nested_option_value_is_one_line_error():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ConfigError, match=r"\[checks.fooling\] classes( = \[+\.\.\.|: the value is nested)"):
        AuditConfig.from_dict({"checks": {"fooling": {"classes": deep}}})


def test_every_numeric_option_is_bounded():
    """No check option takes an unbounded number: one without its own max gets NUMBER_MAX."""
    from audit.options import NUMBER_MAX
    from audit.registry import get_check, registered_checks

    tried = 0
    for name in registered_checks():
        cls = get_check(name)
        for f in __import__("dataclasses").fields(cls.Options):
            if f.type in ("int", "float", "int | None", "float | None"):
                tried += 1
                with pytest.raises(ConfigError, match=f"{f.name} = .*must be"):
                    cls.parse_options({f.name: NUMBER_MAX * 10})
    assert tried > 40


def test_l2_epsilon_beyond_the_input_is_refused_before_any_check_runs(monkeypatch):
    """An L2 ε within the config bound but beyond √(C·H·W) of the model's input: ConfigError
    from run_audit before the battery (no check's run is entered)."""
    import torch
    from audit.check import Check
    from audit.data import AuditData
    from audit.model import AuditModel, ModelSpec
    from audit.runner import run_audit

    ran = []
    monkeypatch.setattr(Check, "run", lambda self, ctx: ran.append(self.name))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model = AuditModel(net, ModelSpec(input_shape=(1, 2, 2), class_names=["a", "b"])).finalize()
    data = AuditData(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), ["a", "b"], list("abcd"))
    cfg = {"audit": {"checks": ["clean", "adversarial"]}, "checks": {"adversarial": {"epsilons": {"l2": [3.0]}}}}
    with pytest.raises(ConfigError, match=r"epsilons.l2: 3.0 is beyond the input range .*1x2x2 is 2"):
        run_audit(model, data, cfg)
    assert ran == []
