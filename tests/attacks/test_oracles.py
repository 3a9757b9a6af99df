"""The attacks of the ``adversarial`` check against reference implementations as oracles:

- each AutoAttack component we wrote (APGD-CE, APGD-DLR, APGD-T, Square) fools at least as
  many samples as torchattacks' (``APGD(loss="ce"|"dlr")``, ``APGDT``, ``Square``) on the same
  samples, ε and iteration/query budget, within 2 samples, and every adversarial it returns
  is inside the ε-ball and [0, 1] and misclassified;
- the check's worst case (budgets fast and standard) is never weaker than foolbox's
  LinfPGD / FGSM / LInfFMN and L2PGD / FGM / DDN at any ε, on two models of different shapes.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from attacks.adversarial.apgd import APGDCE, APGDDLR, APGDT
from attacks.adversarial.objective import Objective
from attacks.adversarial.square import Square
from attacks.adversarial.threat import norm_of
from tests.attacks.test_adversarial import L2, LINF, curve, run_check, wrap
from tests.tinymodels import PATTERNS, fit, make_patterns, train_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

#: ε where the tiny model is neither robust nor broken everywhere under the gradient attacks,
#: and under Square at 1,000 queries (the test checks it)
EPS = {"linf": [24 / 255, 32 / 255], "l2": [2.0, 3.0]}
SQUARE_EPS = {"linf": [32 / 255, 48 / 255], "l2": [4.0, 6.0]}
TOL = 2  # samples


@pytest.fixture(scope="module")
def tiny(one_thread):
    model = wrap(train_tiny())
    x, y = make_patterns(12, seed=7)
    ok = model(x).argmax(1) == y
    return model, x[ok], y[ok]


def _ours_and_theirs(name: str, model, norm: str, eps: float):
    ta = pytest.importorskip("torchattacks")
    n = "Linf" if norm == "linf" else "L2"
    k = model.num_classes
    return {
        "apgd_ce": (APGDCE(steps=100), ta.APGD(model, norm=n, eps=eps, steps=100, loss="ce", seed=0)),
        "apgd_dlr": (APGDDLR(steps=100), ta.APGD(model, norm=n, eps=eps, steps=100, loss="dlr", seed=0)),
        "apgd_t": (APGDT(steps=100, targets=k - 1), ta.APGDT(model, norm=n, eps=eps, steps=100, n_classes=k, seed=0)),
        "square": (Square(queries=1000), ta.Square(model, norm=n, eps=eps, n_queries=1000, seed=0)),
    }[name]


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr", "apgd_t", "square"])
def test_at_least_as_strong_as_torchattacks(tiny, name, norm):
    model, x, y = tiny
    mine_total = theirs_total = 0
    grid = (SQUARE_EPS if name == "square" else EPS)[norm]
    for eps in grid:
        ours, theirs = _ours_and_theirs(name, model, norm, eps)
        obj = Objective(model)
        fooled, xa = ours.run(obj, x, y, eps, norm, gen=torch.Generator().manual_seed(0))
        assert (norm_of(xa - x, norm) <= eps * (1 + 1e-5) + 1e-6).all(), "outside the ε-ball"
        assert xa.min() >= 0 and xa.max() <= 1, "outside [0, 1]"
        with torch.no_grad():
            assert torch.equal(model(xa).argmax(1) != y, fooled)
            theirs_fooled = model(theirs(x, y)).argmax(1) != y
        mine, ref = int(fooled.sum()), int(theirs_fooled.sum())
        assert mine >= ref - TOL, f"{name} {norm} ε={eps:.4f}: ours fooled {mine}, torchattacks {ref} of {len(y)}"
        mine_total, theirs_total = mine_total + mine, theirs_total + ref
        assert obj.forwards > 0 and (obj.backwards > 0) == ours.uses_gradients  # the passes are counted
    assert mine_total >= theirs_total - TOL
    assert 0 < theirs_total < len(y) * len(grid)  # ε where the attack decides


class Gray(nn.Module):
    """A 1-channel CNN for non-square (20x12) inputs."""

    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 1)))
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.f(x).flatten(1))


def gray_patterns(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_patterns(n_per_class, seed=seed, size=20)
    return x.mean(1, keepdim=True)[:, :, :, 4:16].contiguous(), y


def gray_model():
    from audit import AuditModel, ModelSpec

    torch.manual_seed(1)
    x, y = gray_patterns(40, seed=101)
    net = fit(Gray(), x, y, steps=200, batch=64, generator=torch.Generator().manual_seed(1))
    for p in net.parameters():
        p.requires_grad_(False)
    return AuditModel(net, ModelSpec(input_shape=(1, 20, 12), class_names=list(PATTERNS))).finalize().eval()


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["rgb16", "gray20x12"])
@pytest.mark.parametrize("budget", ["fast", "standard"])
def test_worst_case_is_never_weaker_than_foolbox(tiny, budget, shape):
    """Foolbox's attacks at their defaults, on the same samples and ε grid, never leave fewer
    samples robust than the check's worst case (standard: Square at 500 queries to bound the
    test's time; it is the gradient-free control and finds nothing here the others miss)."""
    fb = pytest.importorskip("foolbox")
    if shape == "rgb16":
        model, (x, y) = tiny[0], make_patterns(6, seed=7)
    else:
        model, (x, y) = gray_model(), gray_patterns(6, seed=7)
    extra = {"square_queries": 500} if budget == "standard" else {}
    res, _ = run_check(model, x, y, max_samples=0, budget=budget, **extra)
    assert res.error is None and res.data["budget"]["name"] == budget
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    suites = {"linf": (LINF, [fb.attacks.LinfPGD(), fb.attacks.FGSM(), fb.attacks.LInfFMNAttack()]),
              "l2": (L2, [fb.attacks.L2PGD(), fb.attacks.FGM(), fb.attacks.DDNAttack()])}
    for norm, (eps, attacks) in suites.items():
        ours = curve(res, "worst", norm)
        assert sorted(ours) == pytest.approx(eps)
        assert min(ours.values()) < 0.9  # the grid reaches ε where the model does break
        for atk in attacks:
            _, _, succ = atk(fmodel, x, y, epsilons=eps)
            theirs = (~succ).double().mean(1).tolist()  # float64, as ours: equal counts compare equal
            for e, t in zip(eps, theirs):
                mine = ours[min(ours, key=lambda k: abs(k - e))]
                assert mine <= t + 1e-9, \
                    f"{budget} {norm} ε={e:.4f}: our worst case {ours} is weaker than {type(atk).__name__} ({t:.3f})"
