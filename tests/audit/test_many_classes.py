"""A model with thousands of outputs (ImageNet-21k, iNaturalist): the per-class checks target
the classes the data brings up (audit/targets.py), and their work -- images through the
model, classes targeted -- follows those classes, not the model's output count."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from attacks.fooling import search
from audit.model import AuditModel, ModelSpec
from audit.data import AuditData
from audit.runner import run_audit
from audit.targets import data_classes, select_classes
from tests.tinymodels import make_patterns

K = 5000
LABELS = [7, 1234, 2500, 4999]  #: the classes of the 4 pattern kinds

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting(nn.Module):
    """``net`` that counts the images it is given (forward passes x batch size)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, x):
        self.images += int(x.shape[0])
        return self.net(x)


#: images the fast path runs to size its batch from free memory and check the layout (audit.fastpath)
FAST_PATH_PROBE = 2


@pytest.fixture(scope="module")
def wide(tiny_net):
    """The trained tiny CNN with its 4 output rows moved to LABELS of K outputs (small random
    rows elsewhere), and 8 pattern images labelled with LABELS."""
    torch.manual_seed(0)
    fc = nn.Linear(64, K)
    with torch.no_grad():
        fc.weight.mul_(0.1)
        fc.bias.zero_()
        fc.weight[LABELS] = tiny_net.fc.weight
        fc.bias[LABELS] = tiny_net.fc.bias
    net = Counting(nn.Sequential(tiny_net.features, nn.Flatten(), fc)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    names = [f"c{i}" for i in range(K)]
    model = AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=names)).finalize()
    x, y = make_patterns(2, seed=3)
    return model, AuditData(x, torch.tensor(LABELS)[y], names, [str(i) for i in range(len(y))])


def _run(model, data, check, **opts):
    model.net.images = 0
    r = run_audit(model, data, {"audit": {"checks": [check], "seed": 0}, "checks": {check: opts}})
    c = r.check(check)
    assert c.error is None, c.data.get("traceback")
    return c, model.net.images


def test_fooling_targets_the_data_classes_and_its_queries_follow_them(wide):
    model, data = wide
    steps, queries = 3, 8
    c, images = _run(model, data, "fooling", steps=steps, queries_per_class=queries, children=2, garbage=[],
                     early_stop=False)
    with torch.no_grad():
        preds = set(model(data.x).argmax(1).tolist())
    targets = [model.class_names.index(n) for n in c.data["targets"]]
    # the labels first, then top-1 predictions; never more than the data can bring up
    assert set(LABELS) <= set(targets) <= set(LABELS) | preds
    assert len(targets) <= len(LABELS) + len(data)
    assert any(f.code == "fooling.classes_sampled" and "labels" in f.message for f in c.findings)
    t = len(targets)
    # gradient: (steps + 1) passes and a prediction per target; evolution: its budget per target,
    # plus the elites rendered once more; the clean pass over the data: len(data)
    bound = (steps + 2) * t + 2 * (queries * t + t) + len(data) + FAST_PATH_PROBE
    assert images <= bound, (images, bound)


def test_class_viz_visualizes_the_data_classes_only(wide):
    model, data = wide
    steps = 2
    c, images = _run(model, data, "class_viz", steps=steps)
    shown = {p["class"] for p in c.data["pictures"]}
    assert {f"c{k}" for k in LABELS} <= shown and len(shown) <= len(LABELS) + len(data)
    assert "labels" in c.data["note"]
    # steps passes and a prediction per picture; the run's own passes (the clean logits, the
    # model's checks at start-up): a few per data image
    assert images <= (steps + 1) * len(shown) + 2 * len(data) + 8, images


def test_data_classes_ranks_labels_then_predictions():
    y = torch.tensor([5, 3, 5, 9, 3, 5])
    logits = torch.full((6, 12), -5.0)
    logits[torch.arange(6), torch.tensor([5, 11, 11, 0, 3, 11])] = 5.0
    assert data_classes(y, logits) == [5, 3, 9, 11, 0]
    assert data_classes(None, None) == []
    names = [str(i) for i in range(12)]
    assert select_classes(names, [], 3, data_classes(y, logits)) == ([3, 5, 9], select_classes(
        names, [], 3, [5, 3, 9])[1])
    assert select_classes(names, [], 12, [5])[0] == list(range(12))  # small models: every class, as before
    assert select_classes(names, [], 4, [])[0] == [0, 4, 7, 11]  # no data: evenly spaced


def test_log_odds_of_many_classes_is_exact_without_the_dense_tensor():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 3000, generator=g) * 4
    z[:8, 10] = 40.0  # target 10 the argmax, its probability 1.0 in float32
    t = torch.tensor([10, 0, 2999, 1500])
    assert z.shape[0] * len(t) * z.shape[1] > search.DENSE_LIMIT
    zd = z.double()
    want = torch.stack([zd[:, i] - torch.cat([zd[:, :i], zd[:, i + 1:]], 1).logsumexp(1) for i in t.tolist()], 1)
    assert torch.allclose(search.log_odds(z, t).double(), want, atol=1e-4, rtol=1e-5)
    small = z[:4, :50]  # below the limit: the dense form, and the row form is its diagonal
    rows = torch.tensor([10, 3, 49, 0])
    assert torch.equal(search.row_log_odds(small, rows), search.log_odds(small, rows).diagonal())


def test_fooling_caps_the_targets_and_samples_them_without_data(wide):
    model, data = wide
    kw = dict(methods=["gradient"], steps=1, garbage=[])
    c, _ = _run(model, data, "fooling", max_classes=2, **kw)
    assert len(c.data["targets"]) == 2 and set(c.data["targets"]) <= {f"c{k}" for k in LABELS}
    c, images = _run(model, None, "fooling", max_classes=3, **kw)
    assert len(c.data["targets"]) == 3
    assert any(f.code == "fooling.classes_sampled" and "seeded sample" in f.message for f in c.findings)
    assert images <= 3 * 3 + 8 + FAST_PATH_PROBE, images
