"""Tests of the ``adversarial`` check: strength against foolbox, monotone curves, validity,
gradient-masking findings on masked models (and none on plain ones), bad options."""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from audit import AuditConfig, AuditData, AuditModel, ModelSpec
from audit.context import Context
from audit.errors import ConfigError, ExitCode
from attacks.adversarial import ATTACKS, AdversarialCheck, default_epsilons
from attacks.adversarial import engine as adv_engine
from attacks.adversarial import attacks as attack_registry
from attacks.adversarial.attacks import FMN, PGD, BoundedAttack, Noise, register_attack
from attacks.adversarial.apgd import APGDCE, APGDDLR, APGDT
from attacks.adversarial.square import Square
from attacks.adversarial.objective import Objective
from attacks.adversarial.threat import norm_of
from tests.tinymodels import PATTERNS, NoGradNet, SoftmaxNet, make_patterns, train_tiny

LINF = [4 / 255, 8 / 255, 12 / 255, 16 / 255, 24 / 255, 32 / 255, 48 / 255]
L2 = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


pytestmark = pytest.mark.usefixtures("one_thread")


class QuantNet(nn.Module):
    """Rounds its input to 8 bits before the network: shattered (zero) gradients."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 255) / 255)




class DropoutNet(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.inner(self.drop(x))


def wrap(net) -> AuditModel:
    for p in net.parameters():
        p.requires_grad_(False)
    return AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize().eval()


@pytest.fixture(scope="module")
def tiny_net(one_thread):
    """The shared tiny model, trained here under one thread (the session fixture trains
    under two, which is many times slower on a loaded machine)."""
    return train_tiny()


@pytest.fixture(scope="module")
def data():
    x, y = make_patterns(6, seed=7)
    return x, y


def run_check(model, x, y, **opts):
    """The check on ``x, y`` (budget fast unless ``opts`` say otherwise)."""
    opts.setdefault("epsilons", {"linf": LINF, "l2": L2})
    opts.setdefault("budget", "fast")
    cfg = AuditConfig(checks=["adversarial"], batch_size=64, check_options={"adversarial": opts})
    d = AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))])
    ctx = Context(model=model, data=d, config=cfg, seed=0, logits=model.logits(x)).scoped(
        "adversarial", declared=AdversarialCheck.publishes)
    res = AdversarialCheck(cfg.options_for("adversarial")).run(ctx)
    return res, ctx


def curve(res, attack, norm):
    rows = [m for m in res.metrics if m.name == "robust_accuracy" and m.qualifiers.get("attack") == attack
            and m.qualifiers.get("norm") == norm and "class" not in m.qualifiers and m.qualifiers["epsilon"] > 0]
    return {m.qualifiers["epsilon"]: m.value for m in rows}


def masking_codes(res):
    return {f.code for f in res.findings if f.code.startswith("gradient_masking.")}


@pytest.fixture(scope="module")
def plain(tiny_net, data):
    model = wrap(tiny_net)
    res, ctx = run_check(model, *data, max_samples=0)
    return model, res, ctx


def test_monotone_curves_and_metrics(plain):
    _, res, _ = plain
    assert res.data["budget"]["name"] == "fast" and "(budget fast)" in res.summary
    for norm in ("linf", "l2"):
        for attack in ("fgsm", "apgd_ce", "fmn", "noise", "gradient", "gradient+square", "worst"):
            c = curve(res, attack, norm)
            vals = [c[e] for e in sorted(c)]
            assert len(vals) == 7
            assert all(a >= b for a, b in zip(vals, vals[1:])), (attack, norm, vals)
        worst = curve(res, "worst", norm)
        for attack in ("fgsm", "apgd_ce", "fmn", "noise", "gradient+square"):
            c = curve(res, attack, norm)
            assert all(worst[e] <= c[e] + 1e-9 for e in c)
        assert curve(res, "noise", norm)[max(worst)] > worst[max(worst)]  # adversarial noise beats random noise
        med = [m.value for m in res.metrics if m.name == "median_min_perturbation" and m.qualifiers["norm"] == norm]
        assert len(med) == 1 and 0 < med[0] < float("inf")
    per_class = [m for m in res.metrics if m.name == "robust_accuracy" and "class" in m.qualifiers]
    assert {m.qualifiers["class"] for m in per_class} == set(PATTERNS)
    names = {a.path.rsplit("/", 1)[-1] for a in res.artifacts}
    assert {"curve_linf.png", "curve_l2.png", "examples_linf.png", "min_perturbation_linf.png"} <= names


def test_plain_model_raises_no_masking_findings(plain):
    _, res, _ = plain
    assert masking_codes(res) == set(), [f.message for f in res.findings]


def test_published_examples_are_valid(plain, data):
    model, _, ctx = plain
    ex = ctx.published["adversarial.examples"]
    assert ex.norm == "linf" and len(ex.x) > 0
    d = (ex.x_adv - ex.x).flatten(1).abs().amax(1)
    assert (d <= ex.epsilon + 1e-6).all()
    assert ex.x_adv.min() >= 0 and ex.x_adv.max() <= 1
    pred = model.logits(ex.x_adv).argmax(1)
    assert torch.equal(pred, ex.pred_adv) and (pred != ex.y).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_attacks_stay_in_ball_and_bounds(tiny_net, data, norm):
    x, y = data
    obj = Objective(wrap(tiny_net))
    g = torch.Generator().manual_seed(1)
    eps = 24 / 255 if norm == "linf" else 2.0
    outs = [PGD(steps=5, restarts=2).run(obj, x, y, eps, norm, gen=g),
            APGDCE(steps=10, restarts=2).run(obj, x, y, eps, norm, gen=g),
            APGDDLR(steps=10).run(obj, x, y, eps, norm, gen=g),
            APGDT(steps=10, targets=3).run(obj, x, y, eps, norm, gen=g),
            Square(queries=30).run(obj, x, y, eps, norm, gen=g),
            Noise(draws=2).run(obj, x, y, eps, norm, gen=g)]
    assert all(f.any() and not f.all() for f, _ in outs[:4])  # the ε is neither too small nor too large
    for fooled, xa in outs:
        assert (norm_of(xa - x, norm) <= eps * (1 + 1e-5) + 1e-6).all()
        assert xa.min() >= 0 and xa.max() <= 1
        assert ((obj(xa, y)[0] < 0) == fooled).all()
    best, xa = FMN(steps=15).minimize(obj, x, y, norm, max_eps=1.0 if norm == "linf" else 16.0)
    ok = torch.isfinite(best)
    assert ok.float().mean() > 0.9
    assert torch.allclose(norm_of(xa[ok] - x[ok], norm), best[ok], atol=1e-5)


def test_input_rounding_is_flagged(tiny_net, data):
    res, _ = run_check(wrap(QuantNet(tiny_net)), *data, norms=["linf"], max_samples=0)
    codes = masking_codes(res)
    assert "gradient_masking.zero_gradients" in codes, [f.message for f in res.findings]


def test_softmax_output_is_flagged(tiny_net, data):
    res, _ = run_check(wrap(SoftmaxNet(tiny_net)), *data, norms=["linf"], attacks=["fgsm", "noise"])
    assert "gradient_masking.probability_outputs" in masking_codes(res)


def test_random_model_is_flagged(tiny_net, data):
    model = wrap(DropoutNet(tiny_net))
    model.net.train()
    res, _ = run_check(model, *data, norms=["linf"], attacks=["fgsm", "noise"])
    assert "gradient_masking.stochastic_outputs" in masking_codes(res)


def test_no_gradient_model_runs_gradient_free(tiny_net, data):
    res, _ = run_check(wrap(NoGradNet(tiny_net)), *data, norms=["linf"], square_queries=20)
    assert res.error is None
    f = [f for f in res.findings if f.code == "gradient_masking.no_gradients"]
    assert f and "no_grad" in f[0].message
    attacks = {m.qualifiers.get("attack") for m in res.metrics if m.name == "robust_accuracy"}
    assert attacks == {"square", "noise", "worst"}


def test_targeted_least_likely(tiny_net, data):
    model = wrap(tiny_net)
    res, ctx = run_check(model, *data, norms=["linf"], targeted="least_likely", attacks=["fmn", "pgd"])
    ex = ctx.published["adversarial.examples"]
    target = model.logits(ex.x).argmin(1)
    assert torch.equal(ex.pred_adv, target)


def test_default_epsilons_scale_with_input():
    assert len(default_epsilons("linf", (3, 64, 64))) >= 7
    assert default_epsilons("linf", (3, 64, 64))[0] == pytest.approx(0.5 / 255)
    small, big = default_epsilons("l2", (3, 32, 32)), default_epsilons("l2", (3, 64, 64))
    assert big[-1] == pytest.approx(2 * small[-1], rel=0.01)


@pytest.mark.parametrize("opts, words", [
    ({"epsilons": {"linf": [-0.1]}}, "negative"),
    ({"epsilons": {"linf": []}}, "non-empty"),
    ({"epsilons": {"linf": [2.0]}}, "beyond the input range"),
    ({"norms": ["l7"]}, r"norms = \['l7'\]: expected a list of one of 'linf', 'l2'"),
    ({"norms": []}, "non-empty"),
    ({"epsilons": {"l1": [0.1]}}, "unknown norm"),
    ({"attacks": ["pgd", "cw"]}, "unknown attack"),
    ({"attacks": []}, "non-empty"),
    ({"pgd_steps": 0}, "pgd_steps"),
    ({"budget": "quick"}, r"budget = 'quick': expected one of 'fast', 'standard', 'thorough'"),
    ({"apgd_targets": 0}, "apgd_targets"),
    ({"square_queries": 2.5}, "square_queries"),
])
def test_bad_options(opts, words):
    with pytest.raises(ConfigError, match=words):
        AuditConfig.from_dict({"checks": {"adversarial": opts}})


def test_l2_epsilon_beyond_range_is_an_error(tiny_net, data):
    with pytest.raises(ConfigError, match="beyond the input range"):
        run_check(wrap(tiny_net), *data, norms=["l2"], epsilons={"l2": [100.0]})


def test_cli_bad_config_exits_4(tmp_path, tiny_net, pattern_folder, labels_file):
    from audit.cli import main

    torch.jit.save(torch.jit.trace(tiny_net, torch.rand(2, 3, 16, 16)), tmp_path / "ts.pt")
    cfg = tmp_path / "audit.toml"
    cfg.write_text("[checks.adversarial]\nepsilons = { linf = [-0.01] }\n")
    rc = main(["run", str(tmp_path / "ts.pt"), "--data", str(pattern_folder), "--labels", str(labels_file),
               "--config", str(cfg), "--out", str(tmp_path / "out"), "-q"])
    assert rc == ExitCode.USAGE_ERROR


def test_unreproducible_adversarials_are_reattacked_not_counted_robust(tiny_net, data, monkeypatch):
    """If the stored worst-case adversarials fail the verification pass, the samples must not
    silently count as robust: a fresh, verified PGD run re-finds them."""
    x, y = data
    model = wrap(tiny_net)
    straight, _ = run_check(model, x, y, norms=["linf"])
    real_verify = adv_engine.Engine._verify

    def verify_with_one_bad_pass(self, nr):
        real_forward = self._forward
        calls = {"n": 0}

        def forward(xs):
            calls["n"] += 1
            if calls["n"] == 1:  # the verification pass sees the clean images: nothing reproduces
                return real_forward(self.plan.x[(nr.adv_k < nr.K).nonzero().flatten()])
            return real_forward(xs)

        self._forward = forward
        try:
            real_verify(self, nr)
        finally:
            del self._forward

    monkeypatch.setattr(adv_engine.Engine, "_verify", verify_with_one_bad_pass)
    res, _ = run_check(model, x, y, norms=["linf"])
    f = [f for f in res.findings if f.code == "adversarial.unverified"]
    assert f and "re-found" in f[0].message
    eps = max(LINF)
    top_straight, top = curve(straight, "worst", "linf")[eps], curve(res, "worst", "linf")[eps]
    assert top <= top_straight + 0.2 and top < 0.5  # robustness not overestimated at the largest epsilon


def test_bf16_attacks_match_fp32_and_stay_valid(plain, data):
    """precision = "bf16": the attacks run under autocast, yet every adversarial counted is one
    the fp32 model confirms, and the curves stay within a sample or two of fp32's."""
    model, res32, _ = plain
    x, y = data
    res16, ctx = run_check(model, x, y, max_samples=0, precision="bf16")
    assert res16.data["precision"] == "bf16" and res32.data["precision"] == "fp32"
    for norm in ("linf", "l2"):
        a, b = curve(res32, "worst", norm), curve(res16, "worst", norm)
        assert all(abs(a[e] - b[e]) <= 2 / len(y) + 1e-9 for e in a), (norm, a, b)
    pub = ctx.published["adversarial.examples"]
    z = model.logits(pub.x_adv)
    assert (z.argmax(1) != pub.y).all()  # fooled in fp32, as published


def test_samples_table_is_the_worst_case_per_sample(plain):
    """res.samples: one boolean ``robust[norm=..,epsilon=..]`` column per norm and ε whose mean
    is the worst-case robust accuracy; the private per-sample layout is gone from res.data."""
    _, res, _ = plain
    outcomes = res.samples.outcomes()
    for norm in ("linf", "l2"):
        for e, v in curve(res, "worst", norm).items():
            col = outcomes[f"robust[norm={norm},epsilon={e:.4g}]"]
            assert len(col) == len(res.samples.ids) and sum(col.values()) / len(col) == pytest.approx(v)
    assert not {"ids", "timings_s"} & set(res.data) and "first_fooled" not in res.data["linf"]
    assert res.data["timings"] and all(isinstance(v, float) for v in res.data["timings"].values())


def test_unit_records_survive_a_checkpoint(tiny_net, data, tmp_path):
    """compute() returns a @record that a weights-only checkpoint stores and rebuilds."""
    from audit.records import decode, encode, is_record

    x, y = data
    model = wrap(tiny_net)
    cfg = AuditConfig(checks=["adversarial"], batch_size=8,
                      check_options={"adversarial": {"norms": ["linf"], "attacks": ["fgsm", "noise"]}})
    ctx = Context(model=model, data=AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))]), config=cfg,
                  logits=model.logits(x)).scoped("adversarial", declared=AdversarialCheck.publishes)
    check = AdversarialCheck(cfg.options_for("adversarial"))
    units = check.units(ctx)
    assert [(u.tag, u.index) for u in units] == [("samples", k) for k in range(-(-len(y) // 8))]
    rec = check.compute(units[0], ctx, torch.Generator().manual_seed(0))
    assert is_record(rec)
    torch.save(encode(rec), tmp_path / "unit.pt")
    back = decode(torch.load(tmp_path / "unit.pt", weights_only=True))
    assert type(back) is type(rec) and torch.equal(back.runs[0].first["noise"], rec.runs[0].first["noise"])


def test_options_are_typed_and_round_trip():
    assert AdversarialCheck.parse_options(asdict(AdversarialCheck.Options())) == AdversarialCheck.Options()
    bad = {"norms": ["l7"], "precision": "fp16", "budget": "most", "targeted": 3, "max_samples": -1,
           "apgd_steps": -5, "tolerance": 2.0, "epsilons": {"linf": "0.1"}, "attacks": "pgd", "examples": 1.5,
           "share_failures": "yes"}
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=key):
            AdversarialCheck.parse_options({key: value})


def test_attack_registry_feeds_options_and_docs():
    """The registry refuses a taken name; the budgets pick registered attacks (thorough all of
    them); the docs' table of attacks lists exactly the registered attacks."""
    with pytest.raises(ValueError, match="already registered"):
        register_attack(type("PGDAgain", (PGD,), {}))
    assert AdversarialCheck.Options().attacks is None  # the budget's
    assert set(AdversarialCheck.Options(budget="thorough").resolved.attacks) == set(ATTACKS)
    doc = (Path(__file__).resolve().parents[2] / "docs" / "adversarial.md").read_text()
    table = doc.split("## Attacks", 1)[1].split("###", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == list(ATTACKS)


def test_a_new_attack_is_one_class_and_one_registration(tiny_net, data):
    class Shift(BoundedAttack):
        """Every pixel moved by +ε then -ε (clipped): a gradient-free baseline."""

        name, label = "shift", "a uniform shift"
        uses_gradients = False

        def run(self, obj, x, lab, eps, norm, *, gen):
            fooled = torch.zeros(len(x), dtype=torch.bool)
            adv = x.clone()
            for sign in (1, -1):
                xa = (x + sign * eps).clamp(0, 1) if norm == "linf" else x
                hit = (obj(xa, lab)[0] < 0) & ~fooled
                adv[hit], fooled = xa[hit], fooled | hit
            return fooled, adv

    register_attack(Shift)
    try:
        res, _ = run_check(wrap(tiny_net), *data, norms=["linf"], attacks=["fgsm", "shift"])
        assert len(curve(res, "shift", "linf")) == len(LINF)
        assert {m.qualifiers["attack"] for m in res.metrics if m.name == "attack_success_rate"} == {"fgsm", "shift", "worst"}
    finally:
        del attack_registry._ATTACKS["shift"]
