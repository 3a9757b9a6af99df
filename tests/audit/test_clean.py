"""The clean check's numbers against values computed by hand for six samples."""
import math

import pytest
import torch
import torch.nn as nn

from audit import AuditData, AuditModel, ModelSpec, run_audit
from audit.clean import expected_calibration_error

# softmax rows of six samples (labels 0, 0, 1, 1, 2, 2); the model returns log(p) + 1, whose
# softmax is p exactly and whose rows are not log-probabilities
P = torch.tensor([[0.90, 0.05, 0.05],   # a, right, confidence .90
                  [0.20, 0.70, 0.10],   # a -> b, wrong, .70
                  [0.10, 0.80, 0.10],   # b, right, .80
                  [0.30, 0.60, 0.10],   # b, right, .60
                  [0.45, 0.15, 0.40],   # c -> a, wrong, .45
                  [0.05, 0.05, 0.90]])  # c, right, .90
Y = torch.tensor([0, 0, 1, 1, 2, 2])


class Lookup(nn.Module):
    """Sample k is an image filled with k/10; its output is row k of log(P) + 1."""

    def forward(self, x):
        k = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 5)  # the load-time probe sends random images
        return torch.log(P)[k] + 1.0 + 0 * x.sum((1, 2, 3))[:, None]


@pytest.fixture(scope="module")
def result():
    model = AuditModel(Lookup(), ModelSpec(input_shape=(1, 2, 2), class_names=["a", "b", "c"])).finalize()
    x = (torch.arange(6).float() / 10).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    data = AuditData(x, Y, ["a", "b", "c"], [f"s{i}" for i in range(6)])
    cfg = {"audit": {"checks": ["clean"]},
           "checks": {"clean": {"ece_bins": 2, "ece_warn": 0.05, "weak_class_ratio": 0.8}}}
    return run_audit(model, data, cfg).check("clean")


def _metric(res, name, **q):
    return next(m.value for m in res.metrics if m.name == name and all(m.qualifiers.get(k) == v for k, v in q.items())
                and (q or "class" not in m.qualifiers))


def test_accuracy_confidence_nll(result):
    assert _metric(result, "accuracy") == pytest.approx(4 / 6)
    assert _metric(result, "accuracy", **{"class": "a"}) == pytest.approx(0.5)
    assert _metric(result, "accuracy", **{"class": "b"}) == pytest.approx(1.0)
    assert _metric(result, "accuracy", **{"class": "c"}) == pytest.approx(0.5)
    assert _metric(result, "mean_confidence") == pytest.approx((0.9 + 0.7 + 0.8 + 0.6 + 0.45 + 0.9) / 6, abs=1e-6)
    nll = -sum(math.log(p) for p in (0.9, 0.2, 0.8, 0.6, 0.4, 0.9)) / 6
    assert _metric(result, "nll") == pytest.approx(nll, abs=1e-6)
    assert _metric(result, "samples") == 6


def test_ece_by_hand(result):
    # bin (0, .5]: sample 4 alone, accuracy 0, confidence .45 -> 1/6 * .45
    # bin (.5, 1]: five samples, accuracy 4/5, mean confidence 3.9/5 -> 5/6 * |.8 - .78|
    ece = 1 / 6 * 0.45 + 5 / 6 * abs(0.8 - 0.78)
    assert _metric(result, "expected_calibration_error", bins=2) == pytest.approx(ece, abs=1e-6)
    bins = result.data["calibration_bins"]
    assert [b["n"] for b in bins] == [1, 5]
    value, _ = expected_calibration_error(torch.tensor([0.45, 0.9]), torch.tensor([False, True]), bins=2)
    assert value == pytest.approx(0.5 * 0.45 + 0.5 * 0.1, abs=1e-6)


def test_findings_and_per_sample_table(result):
    codes = sorted((f.code, f.class_) for f in result.findings)
    assert codes == [("clean.miscalibrated", None), ("clean.weak_class", "a"), ("clean.weak_class", "c")]
    mis = next(f for f in result.findings if f.code == "clean.miscalibrated")
    assert "overconfident" in mis.message
    assert result.status == "warn"
    assert result.samples.ids == [f"s{i}" for i in range(6)]
    assert result.samples.columns["correct"] == [True, False, True, True, False, True]
    assert result.samples.columns["pred"] == [0, 1, 1, 1, 0, 2]


def test_near_chance_fails(result):
    model = AuditModel(Lookup(), ModelSpec(input_shape=(1, 2, 2), class_names=["a", "b", "c"])).finalize()
    x = (torch.arange(6).float() / 10).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    data = AuditData(x, torch.tensor([2, 2, 0, 0, 1, 1]), ["a", "b", "c"], [f"s{i}" for i in range(6)])
    res = run_audit(model, data, {"audit": {"checks": ["clean"]}}).check("clean")
    assert _metric(res, "accuracy") == pytest.approx(0.0)
    assert sorted(f.code for f in res.findings) == ["clean.miscalibrated", "clean.near_chance"]
    assert res.status == "fail"
