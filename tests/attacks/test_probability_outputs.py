"""The adversarial check on probability and log-probability outputs (issue 13, deliverable 5):
a small CNN, the same net followed by softmax(10·z) (the same decisions, a saturated output,
as in defensive distillation) and by log_softmax get the worst-case robust accuracy of their
logits twin at every ε (within 0.075) and close minimal perturbations; the finding that the
outputs are probabilities stays, and warns only where the model's own float32 softmax
underflows."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.attacks.test_adversarial import L2, LINF, curve, run_check, wrap
from tests.tinymodels import TinyNet, make_patterns, train_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


class Softmax(nn.Module):
    def __init__(self, inner: nn.Module, T: float):
        super().__init__()
        self.inner, self.T = inner, T

    def forward(self, x):
        return torch.softmax(self.T * self.inner(x), dim=1)


class LogSoftmax(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.log_softmax(self.inner(x), dim=1)


def train_smoothed(seed: int = 0, steps: int = 150) -> TinyNet:
    """The tests' tiny CNN trained with label smoothing 0.1: its logit gaps stay below ~7, so
    softmax(10·z) puts the other classes at 1e-12 ... 1e-30 (below the 1e-12 floor the audit
    used to take, above float32's underflow near 1e-38)."""
    torch.manual_seed(seed)
    x, y = make_patterns(40, seed=seed + 100)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def data():
    return make_patterns(6, seed=7)


def medians(res) -> dict[str, float]:
    return {m.qualifiers["norm"]: m.value for m in res.metrics if m.name == "median_min_perturbation"}


def probability_finding(res):
    return [f for f in res.findings if f.code == "gradient_masking.probability_outputs"]


@pytest.mark.slow
def test_saturated_and_log_softmax_get_the_numbers_of_their_logits_twin(data):
    x, y = data
    net = train_smoothed()
    with torch.no_grad():
        p = (10 * net(x)).softmax(1)
    runner_up = p.topk(2, dim=1).values[:, 1]
    assert (runner_up < 1e-12).float().mean() > 0.5  # saturated at the old floor for most samples
    ref, _ = run_check(wrap(net), x, y)
    for head in (Softmax(net, 10.0), LogSoftmax(net)):
        res, _ = run_check(wrap(head), x, y)
        for norm in ("linf", "l2"):
            ours, twin = curve(res, "worst", norm), curve(ref, "worst", norm)
            assert ours.keys() == twin.keys()
            for e in twin:
                assert abs(ours[e] - twin[e]) <= 0.075, (type(head).__name__, norm, e, ours, twin)
            assert medians(res)[norm] == pytest.approx(medians(ref)[norm], rel=0.1)
        found = probability_finding(res)
        if isinstance(head, Softmax):
            assert len(found) == 1 and found[0].severity == "info", [f.message for f in res.findings]
            assert "float64" in found[0].message
        else:
            assert found == []


def test_underflowing_softmax_warns_with_the_count(data):
    """The plain tiny model's logit gaps reach ~28: softmax(10·z) rounds the other classes to
    exactly 0 in float32 inside the model, where no output carries the margin; the finding
    warns and counts those samples."""
    x, y = data
    net = train_tiny()
    with torch.no_grad():
        p = (10 * net(x)).softmax(1)
    correct = p.argmax(1) == y
    n_sat = int((correct & (p.topk(2, dim=1).values[:, 1] < torch.finfo(torch.float32).tiny)).sum())
    assert n_sat > 0
    res, _ = run_check(wrap(Softmax(net, 10.0)), x, y, norms=["linf"], epsilons={"linf": [8 / 255]},
                       attacks=["fgsm", "noise"])
    found = probability_finding(res)
    assert len(found) == 1 and found[0].severity == "warn"
    assert f"on {n_sat} of the {int(correct.sum())} attacked samples" in found[0].message
