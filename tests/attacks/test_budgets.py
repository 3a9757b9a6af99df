"""Budgets of the ``adversarial`` check and how the engine schedules the attacks: budget
resolution and overrides, ``--budget``, Square on every sample the gradient attacks left (no
gating on another attack), PGD independent of FMN, failures shared down the ε grid, the
iterative-vs-single-step comparison on the same samples, and the masking findings on a
shattered-gradient model and on none of several plain CNNs."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from attacks.adversarial import AdversarialOptions
from attacks.adversarial.budget import BUDGETS
from attacks.adversarial.engine import NormRecord
from attacks.adversarial.square import Square
from attacks.adversarial.summary import curves, masking_findings
from audit.results import CheckResult
from tests.attacks.test_adversarial import LINF, curve, masking_codes, run_check, wrap
from tests.attacks.test_oracles import gray_model, gray_patterns
from tests.tinymodels import make_patterns, train_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


class Shattered(nn.Module):
    """``inner(x + 0.001·sin(20000·x))``: the same decisions, useless input gradients
    (Athalye et al. 2018's shattered gradients)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.001 * torch.sin(20000 * x))


@pytest.fixture(scope="module")
def tiny_net(one_thread):
    return train_tiny()


@pytest.fixture(scope="module")
def data():
    return make_patterns(6, seed=7)


def test_budgets_resolve_and_options_override():
    std = AdversarialOptions().resolved
    assert AdversarialOptions().budget == "standard" and std == BUDGETS["standard"]
    # AutoAttack's standard version: APGD-CE, APGD-T over 9 targets at 100 iterations, Square 5,000
    assert {"apgd_ce", "apgd_t", "square"} <= set(std.attacks) and "apgd_dlr" not in std.attacks
    assert (std.apgd_steps, std.apgd_targets, std.square_queries) == (100, 9, 5000)
    fast, thorough = BUDGETS["fast"], BUDGETS["thorough"]
    assert fast.apgd_steps < std.apgd_steps and fast.square_queries < std.square_queries
    assert thorough.apgd_restarts > std.apgd_restarts and thorough.square_queries > std.square_queries
    o = AdversarialOptions(budget="fast", apgd_steps=7, attacks=["pgd", "square"])
    r = o.resolved
    assert (r.apgd_steps, r.attacks, r.square_queries) == (7, ("pgd", "square"), fast.square_queries)


def test_budget_flag_goes_into_the_config(tmp_path):
    from audit.cli import _config_from_args, build_parser

    parse = build_parser().parse_args
    assert _config_from_args(parse(["run", "m.pt", "--budget", "thorough"])).options_for("adversarial").budget == "thorough"
    assert _config_from_args(parse(["demo"])).options_for("adversarial").budget == "fast"  # the demo's default
    cfg = tmp_path / "audit.toml"
    cfg.write_text('[checks.adversarial]\nbudget = "fast"\napgd_steps = 3\n')
    kept = _config_from_args(parse(["run", "m.pt", "--config", str(cfg)])).options_for("adversarial")
    assert (kept.budget, kept.resolved.apgd_steps) == ("fast", 3)
    over = _config_from_args(parse(["run", "m.pt", "--config", str(cfg), "--budget", "standard"]))
    o = over.options_for("adversarial")
    assert (o.budget, o.resolved.apgd_steps, o.resolved.square_queries) == ("standard", 3, 5000)


@pytest.mark.parametrize("share", [False, True])
def test_square_runs_on_every_sample_the_gradient_attacks_left(tiny_net, data, monkeypatch, share):
    """Square at ε runs on exactly the attacked samples every gradient attack failed on at ε
    (less, with ``share_failures``, those Square itself failed on at a larger ε), whatever
    the minimum-norm attack found."""
    x, y = data
    seen: dict[float, set[tuple]] = {}
    real = Square.run

    def spy(self, obj, xs, lab, eps, norm, *, gen):
        seen.setdefault(eps, set()).update(tuple(r.flatten()[:8].tolist()) for r in xs)
        return real(self, obj, xs, lab, eps, norm, gen=gen)

    monkeypatch.setattr(Square, "run", spy)
    res, _ = run_check(wrap(tiny_net), x, y, norms=["linf"], attacks=["fgsm", "fmn", "square"], square_queries=5,
                       share_failures=share)
    rows = {tuple(r.flatten()[:8].tolist()): i for i, r in enumerate(x)}
    outcomes, n = res.samples.outcomes(), len(y)
    above: set[int] = set()
    for e in sorted(LINF, reverse=True):
        ran = {rows[k] for k in seen.get(e, set())}
        left = round(curve(res, "gradient", "linf")[e] * n)  # correct and not fooled by FGSM or FMN at e
        col = outcomes[f"robust[norm=linf,epsilon={e:.4g}]"]
        robust_now = {rows[tuple(x[i].flatten()[:8].tolist())] for i, sid in enumerate(res.samples.ids) if col[sid]}
        if share:  # every sample still robust was attacked at e, or Square failed on it at a larger ε
            assert len(ran) <= left and robust_now <= ran | above, (e, ran, robust_now, above)
        else:  # exactly the samples the gradient attacks left
            assert len(ran) == left and robust_now <= ran, (e, ran, robust_now, left)
        above |= ran
    assert any(seen.values())


def test_pgd_does_not_depend_on_fmn(tiny_net, data):
    """PGD's own curve is the same with and without FMN in the run (no warm start, no gating)."""
    x, y = data
    alone, _ = run_check(wrap(tiny_net), x, y, norms=["linf"], attacks=["pgd"], pgd_restarts=2)
    both, _ = run_check(wrap(tiny_net), x, y, norms=["linf"], attacks=["fmn", "pgd"], pgd_restarts=2)
    assert curve(alone, "pgd", "linf") == curve(both, "pgd", "linf")
    assert min(curve(both, "fmn", "linf").values()) < 0.9


@pytest.mark.slow
def test_sharing_failures_down_the_grid_changes_little_and_saves_work(tiny_net, data):
    x, y = data
    shared, _ = run_check(wrap(tiny_net), x, y, max_samples=0, share_failures=True)
    each, _ = run_check(wrap(tiny_net), x, y, max_samples=0, share_failures=False)
    for norm in ("linf", "l2"):
        a, b = curve(shared, "worst", norm), curve(each, "worst", norm)
        assert all(abs(a[e] - b[e]) <= 2 / len(y) + 1e-9 for e in a), (norm, a, b)
    work = {k: r.data["queries"]["backwards"] for k, r in (("shared", shared), ("each", each))}
    assert work["shared"] < work["each"], work


def _record(first: dict[str, list[int]], K: int = 2) -> NormRecord:
    n = len(next(iter(first.values())))
    return NormRecord(norm="linf", eps=[v / 255 for v in range(1, K + 1)],
                      first={a: torch.tensor(v) for a, v in first.items()}, adv=torch.zeros(n, 1, 2, 2),
                      adv_k=torch.full((n,), K), min_pert=torch.full((n,), float("inf")))


@pytest.mark.parametrize("fgsm, apgd, fires", [
    ([0] * 5 + [2] * 15, [2] * 5 + [0] * 5 + [2] * 10, False),  # on different samples, the same count: no
    ([0] * 6 + [2] * 14, [2] * 20, True),                       # FGSM fools 6 that APGD never does: yes
    ([0] * 6 + [2] * 14, [2] * 3 + [0] * 3 + [0] * 4 + [2] * 10, False),  # APGD fools more in all: no
    ([2] * 20, [2] * 20, False),
])
def test_iterative_weaker_counts_the_same_samples(fgsm, apgd, fires):
    nr = _record({"fgsm": fgsm, "apgd_ce": apgd})
    res = CheckResult("adversarial")
    masking_findings(res, nr, curves(nr, torch.ones(len(fgsm), dtype=torch.bool)), tol=0.05)
    found = [f for f in res.findings if f.code == "gradient_masking.iterative_weaker"]
    assert bool(found) == fires
    if fires:
        assert "same 20 samples" in found[0].message and "fooled 6 that APGD-CE did not" in found[0].message


@pytest.mark.slow
def test_shattered_gradients_are_flagged(tiny_net, data):
    """Useless gradients: the gradient attacks barely move the curve, Square finds what they
    missed (standard budget, Square at 1,000 queries for time) and the findings say so."""
    x, y = data
    res, _ = run_check(wrap(Shattered(tiny_net)), x, y, max_samples=0, norms=["linf"], budget="standard",
                       square_queries=1000)
    assert "gradient_masking.gradient_free_stronger" in masking_codes(res), [f.message for f in res.findings]
    top = max(LINF)
    assert curve(res, "worst", "linf")[top] < curve(res, "gradient", "linf")[top] - 0.25


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["rgb16", "gray20x12"])
@pytest.mark.parametrize("budget", ["fast", "standard"])
def test_plain_cnns_raise_no_masking_findings(tiny_net, budget, shape):
    if shape == "rgb16":
        model, (x, y) = wrap(tiny_net), make_patterns(6, seed=11)
    else:
        model, (x, y) = gray_model(), gray_patterns(6, seed=11)
    extra = {"square_queries": 500} if budget == "standard" else {}
    res, _ = run_check(model, x, y, max_samples=0, budget=budget, **extra)
    assert masking_codes(res) == set(), [f.message for f in res.findings]
    assert min(curve(res, "worst", "linf").values()) < 0.9  # a model the grid does break


@pytest.mark.parametrize("classes, shape", [(2, (1, 4, 6)), (3, (3, 8, 8))])
def test_dlr_attacks_and_square_work_with_few_classes_and_small_images(classes, shape):
    """DLR needs 3 (APGD-DLR) or 4 (APGD-T) classes; with fewer the missing order statistics
    are the smallest logit (2 classes: the plain margin). Square's L2 start needs 5 pixels a side."""
    from attacks.adversarial.apgd import APGDDLR, APGDT
    from attacks.adversarial.objective import Objective
    from attacks.adversarial.threat import norm_of

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), classes))
    x = torch.rand(16, *shape)
    y = net(x).argmax(1)
    obj = Objective(net)
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        for atk in (APGDDLR(steps=10), APGDT(steps=10), Square(queries=20)):
            fooled, xa = atk.run(obj, x, y, eps, norm, gen=torch.Generator().manual_seed(0))
            assert (norm_of(xa - x, norm) <= eps * (1 + 1e-5) + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1
            assert torch.equal(net(xa).argmax(1) != y, fooled)
            assert fooled.any(), (norm, type(atk).__name__)  # a linear model near its boundary does break


def test_square_schedule_is_rescaled_to_the_budget():
    """The reference's schedule with resc_schedule=True (torchattacks' AutoAttack): the
    10,000-query breakpoints scaled to the budget, so the squares reach p_init/512 by the end
    of any budget (at 10,000 queries: the breakpoints as they are)."""
    from attacks.adversarial.square import p_schedule

    assert [p_schedule(i, 5000, 0.8) for i in (0, 6, 26, 101, 251, 501, 1001, 2001, 3001, 4001, 4999)] == pytest.approx(
        [0.8, 0.4, 0.2, 0.1, 0.05, 0.025, 0.8 / 64, 0.8 / 128, 0.8 / 256, 0.8 / 512, 0.8 / 512])
    assert [p_schedule(i, 10000, 0.8) for i in (2001, 4001, 8001)] == pytest.approx([0.8 / 64, 0.8 / 128, 0.8 / 512])
    assert p_schedule(49, 50, 0.8) == pytest.approx(0.8 / 512)  # the last of 50 queries is the smallest
    assert p_schedule(25, 50, 0.8) == pytest.approx(0.8 / 128)  # query 25 of 50 is query 5,000 of 10,000
