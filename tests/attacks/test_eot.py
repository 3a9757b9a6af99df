"""Expectation over Transformation for randomized models (issue 13, deliverable 3; Athalye et
al. 2018): the Objective's EOT (worst margin over draws, mean gradient), the clean correctness
over draws, a randomized defence that EOT rates lower (truer) than single draws, and a plain
model whose numbers EOT leaves untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from audit import AuditConfig
from audit.errors import ConfigError
from attacks.adversarial.objective import Objective, correct_on_draws, decide_eot
from tests.attacks.test_adversarial import curve, run_check, wrap
from tests.tinymodels import make_patterns, train_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"linf": [8 / 255, 16 / 255, 32 / 255], "l2": [1.0, 2.0, 4.0]}


class Replay(nn.Module):
    """``inner(x + shifts[k]) + biases[k]`` with ``k`` cycling over a fixed list at each call:
    a randomized model whose draws the test can replay one by one (``k`` reset to 0)."""

    def __init__(self, inner: nn.Module, shifts: list[float], biases: list[torch.Tensor]):
        super().__init__()
        self.inner, self.shifts, self.biases, self.k = inner, shifts, biases, 0

    def forward(self, x):
        j = self.k % len(self.shifts)
        self.k += 1
        return self.inner(x + self.shifts[j]) + self.biases[j].to(x.device)


class Noisy(nn.Module):
    """Gaussian noise of std ``sigma`` added to the input at every call (a randomized defence)."""

    def __init__(self, inner: nn.Module, sigma: float):
        super().__init__()
        self.inner, self.sigma = inner, sigma

    def forward(self, x):
        return self.inner(x + self.sigma * torch.randn_like(x))


class ResizePad(nn.Module):
    """Random resize to r×r (r from the input size to ``out``) and random zero padding to
    out×out, as in Xie et al. 2018 ("Mitigating adversarial effects through randomization")."""

    def __init__(self, inner: nn.Module, out: int = 20):
        super().__init__()
        self.inner, self.out = inner, out

    def forward(self, x):
        r = int(torch.randint(x.shape[-1], self.out + 1, (1,)))
        z = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        p = self.out - r
        left, top = (int(v) for v in torch.randint(0, p + 1, (2,)))
        return self.inner(F.pad(z, (left, p - left, top, p - top)))


@pytest.fixture(scope="module")
def tiny_net(one_thread):
    net = train_tiny()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def data():
    return make_patterns(6, seed=7)


def replay(tiny_net) -> Replay:
    g = torch.Generator().manual_seed(5)
    biases = [torch.randn(4, generator=g) * 3 for _ in range(4)]
    return Replay(tiny_net, [0.0, 0.05, -0.05, 0.1], biases)


def test_objective_eot_is_the_worst_margin_and_the_mean_gradient(tiny_net, data):
    x, y = data
    model = replay(tiny_net)
    one = Objective(model)
    draws = []
    model.k = 0
    for _ in range(4):
        draws.append(one(x, y, grad=True))
    model.k = 0
    m, g = Objective(model, eot=4)(x, y, grad=True)
    torch.testing.assert_close(m, torch.stack([d[0] for d in draws]).amin(0))
    torch.testing.assert_close(g, torch.stack([d[1] for d in draws]).mean(0))
    model.k = 0
    m_nograd, none = Objective(model, eot=4)(x, y)
    assert none is None
    torch.testing.assert_close(m_nograd, m)
    # the verification pass: the worst margin and the logits of the draw that gave it
    model.k = 0
    mv, zv = Objective(model, eot=4).verify(x, y, lambda xs: model(xs).detach())
    torch.testing.assert_close(mv, m)
    model.k = 0
    per_draw = torch.stack([model(x).detach() for _ in range(4)])
    worst = torch.stack([d[0] for d in draws]).argmin(0)
    torch.testing.assert_close(zv, per_draw[worst, torch.arange(len(y))])


def test_objective_without_eot_is_one_plain_pass(tiny_net, data):
    x, y = data
    obj = Objective(tiny_net)
    m, g = obj(x, y, grad=True)
    z = tiny_net(x)
    top_other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    torch.testing.assert_close(m, z.gather(1, y[:, None]).squeeze(1) - top_other)
    assert obj.passes == (len(y), len(y))
    with pytest.raises(ValueError, match="eot"):
        Objective(tiny_net, eot=0)


def test_clean_correctness_needs_every_draw(tiny_net, data):
    x, y = data
    model = wrap(replay(tiny_net))
    model.net.k = 0
    expected = torch.ones(len(y), dtype=torch.bool)
    for _ in range(4):
        expected &= model.logits(x).argmax(1) == y
    assert not expected.all() and expected.any()
    model.net.k = 0
    assert torch.equal(correct_on_draws(model, x, y, 4, batch_size=len(y)), expected)


def test_eot_gradient_is_closer_to_the_expected_gradient(tiny_net, data):
    """Under input noise one draw's gradient is a poor estimate of the expected gradient; the
    mean over 20 draws (EOT) is a much better one (cosine to a 400-draw reference)."""
    x, y = data
    model = Noisy(tiny_net, 0.1)
    torch.manual_seed(0)
    _, ref = Objective(model, eot=400)(x, y, grad=True)

    def cosine(g):
        return F.cosine_similarity(g.flatten(1), ref.flatten(1)).mean().item()

    _, one = Objective(model)(x, y, grad=True)
    _, eot = Objective(model, eot=20)(x, y, grad=True)
    assert cosine(eot) > cosine(one) + 0.2 and cosine(eot) > 0.9, (cosine(one), cosine(eot))


def test_decide_eot():
    assert not decide_eot(20, False).enabled and decide_eot(20, False).draws == 1
    on = decide_eot(20, True, "x")
    assert on.enabled and on.draws == 20 and "20 draws" in on.reason
    off = decide_eot(1, True)
    assert not off.enabled and off.draws == 1 and "eot_samples = 1" in off.reason


@pytest.mark.slow
@pytest.mark.parametrize("defence", ["noise", "resize_pad"])
def test_randomized_model_is_rated_lower_with_eot(tiny_net, data, defence):
    x, y = data
    model = wrap(Noisy(tiny_net, 0.1) if defence == "noise" else ResizePad(tiny_net))
    out = {}
    for s in (1, 10):
        torch.manual_seed(0)
        out[s], _ = run_check(model, x, y, epsilons=EPS, eot_samples=s)
    on, off = out[10].data["eot"], out[1].data["eot"]
    assert on["enabled"] and on["samples"] == 10 and "10 draws" in on["reason"]
    assert not off["enabled"] and off["samples"] == 1 and "eot_samples = 1" in off["reason"]
    finding = [f for f in out[10].findings if f.code == "gradient_masking.stochastic_outputs"]
    assert finding and "Expectation over Transformation" in finding[0].message and "10 draws" in finding[0].message
    lower = 0.0
    for norm in ("linf", "l2"):
        eot, single = curve(out[10], "worst", norm), curve(out[1], "worst", norm)
        for e in single:  # attacks are random: EOT may lose a sample at one ε, never more
            assert eot[e] <= single[e] + 1.5 / len(y), (norm, e, eot, single)
            lower += single[e] - eot[e]
    assert lower >= 4 / len(y), (defence, lower)  # and is lower by 4 samples or more over the 6 ε


@pytest.mark.slow
def test_plain_model_is_unaffected(tiny_net, data):
    x, y = data
    model = wrap(tiny_net)
    runs = [run_check(model, x, y, epsilons=EPS, eot_samples=s)[0] for s in (20, 1)]
    rows = [[(m.name, sorted(m.qualifiers.items()), m.value) for m in r.metrics] for r in runs]
    assert rows[0] == rows[1]
    assert [f.message for f in runs[0].findings] == [f.message for f in runs[1].findings]
    for r in runs:
        assert r.data["eot"]["enabled"] is False and r.data["eot"]["samples"] == 1
        assert "deterministic" in r.data["eot"]["reason"]
        assert not any(f.code == "gradient_masking.stochastic_outputs" for f in r.findings)


@pytest.mark.parametrize("value", [0, 2.5, "20"])
def test_eot_samples_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match="eot_samples"):
        AuditConfig.from_dict({"checks": {"adversarial": {"eot_samples": value}}})


def test_gradient_free_attacks_query_one_draw_and_are_confirmed_on_every_draw(tiny_net, data):
    """Under EOT Square costs one draw per query, not eot_samples (its passes are within its
    query budget per sample), and whatever it reports fooled survives the verification on
    fresh draws (none is dropped as unverified)."""
    x, y = data
    model = wrap(Noisy(tiny_net, 0.1))
    torch.manual_seed(0)
    res, _ = run_check(model, x, y, epsilons=EPS, norms=["linf"], eot_samples=10, attacks=["square"],
                       square_queries=40, probe_samples=0)
    assert res.data["eot"]["samples"] == 10
    fwd, bwd = res.data["queries"]["per_attack"]["square_linf"]
    attacked = len(y)
    # one draw per query and sample (41 per ε at most), plus 10 draws per confirmed candidate
    assert bwd == 0 and fwd <= attacked * 41 * len(EPS["linf"]) + 10 * attacked * len(EPS["linf"]), fwd
    assert res.error is None and not any(f.code == "adversarial.unverified" for f in res.findings)
