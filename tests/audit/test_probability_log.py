"""Probability and log-probability outputs become margins that do not saturate
(:class:`audit.model.wrapper.ProbabilityLog`): the log of ``softmax(T·z)`` has the margins and
input gradients of ``T·z`` wherever the float32 softmax has not underflowed, exact zeros are
floored only at float32's smallest positive value, and log-probabilities are used as they are."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from audit import AuditModel, ModelSpec
from audit.model.wrapper import ProbabilityLog

SHAPE = (3, 4, 4)
K = 5
LOG_FLOOR = -149 * math.log(2)  # log of float32's smallest positive value, ≈ -103.28


class Linear(nn.Module):
    """Logits ``scale · W x`` with a fixed random ``W`` (no bias): logit gaps of a few units."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(K, math.prod(SHAPE), generator=g) * scale, requires_grad=False)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


class Head(nn.Module):
    """``inner`` followed by ``softmax(T·z)`` (``kind="prob"``) or ``log_softmax(z)``
    (``kind="logprob"``), optionally in float64."""

    def __init__(self, inner: nn.Module, kind: str, T: float = 1.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.inner, self.kind, self.T, self.dtype = inner, kind, T, dtype

    def forward(self, x):
        z = self.inner(x.to(self.dtype))
        return (self.T * z).softmax(1) if self.kind == "prob" else z.log_softmax(1)


def wrap(net: nn.Module) -> AuditModel:
    return AuditModel(net, ModelSpec(input_shape=SHAPE)).finalize().eval()


def margins(z: torch.Tensor) -> torch.Tensor:
    """Top-1 minus runner-up of each row (N,)."""
    top = z.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def margin_and_grad(model: nn.Module, x: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.clone().requires_grad_(True)
    z = model(xg)
    m = z.gather(1, lab[:, None]).squeeze(1) - z.scatter(1, lab[:, None], float("-inf")).amax(1)
    (g,) = torch.autograd.grad(m.sum(), xg)
    return m.detach(), g


@pytest.fixture(scope="module")
def inputs():
    return torch.rand(16, *SHAPE, generator=torch.Generator().manual_seed(0))


def test_saturated_softmax_has_the_margins_and_gradients_of_its_logits(inputs):
    """softmax(10·z) with runner-up probabilities far below 1e-12 (the floor that used to cap
    every margin at 27.6 and zero its gradient) but above float32's smallest normal number."""
    T = 10.0
    base, soft = wrap(Linear()), wrap(Head(Linear(), "prob", T))
    assert soft.output_kind == "probabilities"
    with torch.no_grad():
        z = base(inputs)
        p = (T * z).softmax(1)
    runner_up = p.topk(2, dim=1).values[:, 1]
    assert (runner_up < 1e-12).sum() >= 4, "the test needs probabilities below the old floor"
    assert (runner_up > torch.finfo(torch.float32).tiny).all(), "and above float32's underflow"
    lab = z.argmax(1)
    m0, g0 = margin_and_grad(base, inputs, lab)
    m1, g1 = margin_and_grad(soft, inputs, lab)
    assert (m1 > 27.7).sum() >= 4  # beyond the old cap
    torch.testing.assert_close(m1, T * m0, rtol=1e-4, atol=2e-3)
    torch.testing.assert_close(g1, T * g0, rtol=1e-3, atol=1e-3)


def test_exact_zeros_are_floored_at_float32s_smallest_value_with_finite_gradients(inputs):
    model = wrap(Head(Linear(), "prob", T=1000.0))
    x = inputs.clone().requires_grad_(True)
    out = model(x)
    zero = (1000.0 * Linear()(inputs)).softmax(1) == 0
    assert zero.any()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out[zero], torch.full_like(out[zero], LOG_FLOOR))
    assert (out[~zero] > LOG_FLOOR).all()  # every nonzero probability stays above the floor
    (g,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert torch.isfinite(g).all()


def test_gradient_flows_where_probabilities_are_subnormal():
    """A probability of 1e-40 (a float32 subnormal): finite, nonzero gradient through the log
    and the softmax; an exact 0 gives a zero gradient, never NaN."""
    z = torch.tensor([[0.0, -92.1, -200.0]], requires_grad=True)  # p ≈ [1, 1e-40, 0]
    p = z.softmax(1)
    assert 0 < p[0, 1] < torch.finfo(torch.float32).tiny and p[0, 2] == 0
    out = ProbabilityLog.apply(p)
    assert float(out[0, 1].detach()) == pytest.approx(-92.1, abs=0.05)
    (g,) = torch.autograd.grad(out[0, 1], z)
    assert torch.isfinite(g).all() and g[0, 1] > 0 and g[0, 2] == 0


def test_float64_probabilities_keep_their_range(inputs):
    """A float64 output is not floored at float32's range: probabilities of 1e-100 keep their log."""
    T = 60.0
    model = wrap(Head(Linear().double(), "prob", T, dtype=torch.float64))
    with torch.no_grad():
        ref = (T * Linear().double()(inputs.double())).log_softmax(1)
        out = model(inputs)
    normal = ref > -700  # float64's own softmax underflows near -745
    assert ref[normal].min() < -300
    torch.testing.assert_close(out[normal], ref[normal].float(), rtol=1e-5, atol=1e-3)


def test_log_probabilities_are_used_as_they_are(inputs):
    base, logp = wrap(Linear(3.0)), wrap(Head(Linear(3.0), "logprob"))
    assert logp.output_kind == "log_probabilities"
    with torch.no_grad():
        z = base(inputs)
        out = logp(inputs)
    torch.testing.assert_close(out, z.log_softmax(1))
    torch.testing.assert_close(margins(out), margins(z), rtol=1e-5, atol=1e-4)
