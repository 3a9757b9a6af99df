"""Gradient-masking findings (Carlini et al. 2019's checklist, Athalye et al. 2018) fire on
models that mask their gradients and on none of several plain CNNs of different shapes.

Plain models: small undefended CNNs trained here, 3-channel square, 1-channel square and
3-channel non-square. Masked models: the 3-channel one behind an input transform that keeps
its decisions but shatters its gradient (``x + 0.001 sin(20000 x)``), behind input
quantization (zero gradient almost everywhere), and followed by a saturated softmax."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from audit import AuditData, AuditModel, ModelSpec, run_audit
from tests.tinymodels import PATTERNS, fit, make_patterns

pytestmark = pytest.mark.slow

CONFIG = {"audit": {"checks": ["adversarial"], "seed": 0},
          "checks": {"adversarial": {"max_samples": 24, "epsilons": {"linf": [0.01, 0.03, 0.1], "l2": [0.3, 1.0]},
                                     "fmn_steps": 20}}}


class Plain(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                               nn.Linear(64, len(PATTERNS)))

    def forward(self, x):
        return self.f(x)


class Shattered(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.001 * torch.sin(20000 * x))


class Quantized(nn.Module):
    def __init__(self, inner, levels: int = 8):
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(self, x):
        return self.inner(torch.round(x * (self.levels - 1)) / (self.levels - 1))


class SaturatedSoftmax(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.softmax(10 * self.inner(x), 1)


def _data(shape):
    c, h, w = shape
    x, y = make_patterns(40, seed=11, size=max(h, w))
    x = x[:, :, :h, :w]
    if c == 1:
        x = x.mean(1, keepdim=True)
    return x, y


def _trained(shape, seed=0):
    torch.manual_seed(seed)
    x, y = _data(shape)
    return fit(Plain(shape[0]), x, y, steps=200, batch=64, generator=torch.Generator().manual_seed(seed))


def _audit(net, shape):
    x, y = _data(shape)
    model = AuditModel(net, ModelSpec(input_shape=shape, class_names=list(PATTERNS))).finalize()
    data = AuditData(x[::4], y[::4], list(PATTERNS), [f"s{i}" for i in range(len(y[::4]))])
    return run_audit(model, data, CONFIG).check("adversarial")


def _masking(res):
    return sorted({f.code for f in res.findings if f.code.startswith("gradient_masking.")})


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 16, 16), (3, 16, 24)], ids=["rgb", "gray", "non-square"])
def test_plain_cnns_raise_no_masking_finding(shape):
    res = _audit(_trained(shape), shape)
    assert res.error is None
    assert _masking(res) == [], [f.message for f in res.findings]


@pytest.mark.parametrize("wrap", [Shattered, Quantized, SaturatedSoftmax])
def test_masked_models_raise_a_masking_finding(wrap):
    shape = (3, 16, 16)
    res = _audit(wrap(_trained(shape)).eval(), shape)
    assert res.error is None
    assert _masking(res), f"no masking finding for {wrap.__name__}: {[f.code for f in res.findings]}"
