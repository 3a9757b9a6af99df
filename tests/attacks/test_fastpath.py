"""The attacks' fast path (audit/model/layout.py) and the diagnostics (attacks/adversarial/
diagnostics.py): channels-last weights that are put back exactly, a fallback for models that
break under it, a compiled forward that falls back when compilation fails, the per-ε and
convergence probes' scheduling, and the findings they raise."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from attacks.adversarial.diagnostics import independent_success, longer_attack
from attacks.adversarial.engine import NormRecord
from attacks.adversarial.summary import diagnostic_findings
from audit import AuditModel, ModelSpec
from audit.model.layout import CompiledForward, channels_last
from audit.results import CheckResult
from tests.attacks.test_adversarial import curve, run_check, wrap
from tests.tinymodels import make_patterns, train_tiny


class Conv(nn.Module):
    def __init__(self, flatten_with_view: bool = False):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)
        self.view = flatten_with_view

    def forward(self, x):
        h = torch.relu(self.c(x))
        return self.fc(h.view(h.shape[0], -1) if self.view else h.flatten(1))


def _model(net):
    torch.manual_seed(0)
    return AuditModel(net, ModelSpec(input_shape=(3, 8, 8), class_names=["a", "b", "c"])).finalize().eval()


def test_channels_last_converts_and_restores_the_same_tensors():
    m = _model(Conv())
    x = torch.rand(5, 3, 8, 8)
    before = m(x)
    w = m.net.c.weight
    orig = w.data
    with channels_last(m, x) as layout:
        assert layout == "channels_last"
        assert w.data.is_contiguous(memory_format=torch.channels_last) and not w.data.is_contiguous()
        torch.testing.assert_close(m(x), before, rtol=1e-5, atol=1e-5)
    assert w.data_ptr() == orig.data_ptr() and w.is_contiguous()


def test_channels_last_falls_back_when_the_model_breaks_and_restores_on_error():
    m = _model(Conv(flatten_with_view=True))  # .view on a channels-last activation raises
    x = torch.rand(5, 3, 8, 8)
    orig = m.net.c.weight.data
    with channels_last(m, x) as layout:
        assert layout.startswith("contiguous (channels-last failed: RuntimeError")
        assert m.net.c.weight.data_ptr() == orig.data_ptr()
    m2 = _model(Conv())
    orig2 = m2.net.c.weight.data
    with pytest.raises(KeyError):
        with channels_last(m2, x):
            raise KeyError("boom")
    assert m2.net.c.weight.data_ptr() == orig2.data_ptr() and m2.net.c.weight.is_contiguous()
    with channels_last(_model(nn.Sequential(nn.Flatten(), nn.Linear(192, 3))), x) as layout:
        assert layout == "contiguous (no nn.Conv2d in the model)"


def test_compiled_forward_falls_back_to_eager_when_compilation_fails(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", broken)
    fast = CompiledForward(_model(Conv()), torch.rand(2, 3, 8, 8))
    assert fast.net is None and fast(torch.rand(2, 3, 8, 8)) is None
    assert fast.status == "eager (torch.compile failed: RuntimeError: no C++ compiler)"


@pytest.mark.slow
def test_compiled_square_gives_the_numbers_of_the_eager_one(one_thread):
    """compile = "on" against "off" on the tiny model: the same worst-case curve (every
    compiled candidate is confirmed by the eager model), and the run says it compiled."""
    model = wrap(train_tiny())
    x, y = make_patterns(4, seed=7)
    opts = dict(max_samples=0, norms=["linf"], budget="fast", square_queries=200, probe_samples=0)
    on, _ = run_check(model, x, y, compile="on", **opts)
    off, _ = run_check(model, x, y, compile="off", **opts)
    assert on.data["compiled"].startswith("compiled"), on.data["compiled"]
    assert off.data["compiled"] == 'eager (compile = "off")'
    assert curve(on, "worst", "linf") == curve(off, "worst", "linf")


def test_independent_success_runs_every_epsilon_on_every_sample():
    calls = []

    def runner(rows, eps):
        calls.append((rows.tolist(), eps))
        return rows % 2 == 0, None

    out = independent_success(torch.tensor([4, 5, 6]), [0.1, 0.2], runner)
    assert calls == [([4, 5, 6], 0.1), ([4, 5, 6], 0.2)]
    assert out.tolist() == [[True, True], [False, False], [True, True]]


def test_longer_attack_runs_downward_and_drops_a_sample_where_it_fails():
    """Sample 0 is robust (in the ensemble) at every ε and falls to the longer attack only at
    the largest, so it is not tried below the middle ε where it resists; sample 1 resists at
    the largest and is not tried below; sample 2 was already fooled by the ensemble at the
    largest ε, falls at the middle one and is tried again at the smallest."""
    fools_at = {0: 0.3, 1: 9.0, 2: 0.2}
    calls = []

    def runner(rows, eps):
        calls.append((rows.tolist(), eps))
        return torch.tensor([eps >= fools_at[r] for r in rows.tolist()]), None

    robust = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])
    tried, fooled = longer_attack(torch.tensor([0, 1, 2]), robust, [0.1, 0.2, 0.3], runner)
    assert calls == [([0, 1], 0.3), ([0, 2], 0.2), ([2], 0.1)]
    assert fooled.tolist() == [[False, False, True], [False, False, False], [False, True, False]]
    assert tried.tolist() == [[False, True, True], [False, False, True], [True, True, False]]


def _record(independent, longer_tried, longer_fooled):
    n, K = independent.shape
    return NormRecord(norm="linf", eps=[0.01 * (k + 1) for k in range(K)], first={}, adv=torch.zeros(n, 1, 1, 1),
                      adv_k=torch.full((n,), K), min_pert=torch.full((n,), float("inf")), independent=independent,
                      longer_tried=longer_tried, longer_fooled=longer_fooled)


def _codes(res):
    return sorted(f.code for f in res.findings)


def test_diagnostic_findings_fire_on_falling_success_and_missed_adversarials_only():
    n, K = 16, 3
    none = torch.zeros(n, K, dtype=torch.bool)
    rising = torch.zeros(n, K, dtype=torch.bool)
    rising[:4, 0], rising[:9, 1], rising[:14, 2] = True, True, True
    res = CheckResult("adversarial")
    diagnostic_findings(res, _record(rising, none, none), n, 0.02)
    assert _codes(res) == [] and res.data["diagnostics"]["linf"]["independent_fooled"] == [4, 9, 14]
    falling = rising.clone()
    falling[:, 2] = False
    falling[:6, 2] = True  # 9 fooled at the middle ε, 6 at the largest
    res = CheckResult("adversarial")
    diagnostic_findings(res, _record(falling, none, none), n, 0.02)
    assert _codes(res) == ["gradient_masking.success_not_monotone"]
    assert "fooled 9" in res.findings[0].message and "only 6" in res.findings[0].message
    one_drop = rising.clone()
    one_drop[13, 2] = one_drop[12, 2] = one_drop[11, 2] = one_drop[10, 2] = one_drop[9, 2] = False
    one_drop[8, 2] = False  # 8 at the largest vs 9: one sample, sampling noise
    res = CheckResult("adversarial")
    diagnostic_findings(res, _record(one_drop, none, none), n, 0.02)
    assert _codes(res) == []
    tried, found = none.clone(), none.clone()
    tried[:5, 1], found[:3, 1] = True, True
    res = CheckResult("adversarial")
    diagnostic_findings(res, _record(rising, tried, found), n, 0.02)
    assert _codes(res) == ["adversarial.not_converged"]
    assert "fooled 3 of the 5 probe samples" in res.findings[0].message
    tried, found = none.clone(), none.clone()
    tried[0, :], found[0, :] = True, True  # one sample fooled at every ε: one sample, not three
    res = CheckResult("adversarial")
    diagnostic_findings(res, _record(rising, tried, found), n, 0.02)
    assert _codes(res) == []
