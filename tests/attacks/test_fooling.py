"""The ``fooling`` check (Nguyen et al. 2015) on tiny models trained in the tests.

Anchor: on the tiny pattern CNN (``train_tiny``: 4 classes, 3x16x16, the tests' stand-in for
the paper's MNIST network) gradient ascent from noise fools every class at >= 0.99 and both
evolutions fool most classes within their default budget.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from attacks.fooling import FoolingCheck
from attacks.fooling.cppn import CPPNEncoding, DirectEncoding
from attacks.fooling.garbage import KINDS, garbage_inputs
from attacks.fooling.search import log_odds
from audit.config import AuditConfig
from audit.errors import ConfigError
from audit.model import AuditModel, ModelSpec
from audit.runner import run_audit
from tests.tinymodels import PATTERNS, train_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


def _wrap(net: nn.Module, shape=(3, 16, 16), names=None) -> AuditModel:
    for p in net.parameters():  # as load_model leaves them
        p.requires_grad_(False)
    return AuditModel(net.eval(), ModelSpec(input_shape=shape, class_names=names)).finalize()


@pytest.fixture(scope="module")
def tiny_model():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = train_tiny()
    finally:
        torch.set_num_threads(n)
    return _wrap(net, names=list(PATTERNS))


def _run(model, seed=0, **opts):
    cfg = {"audit": {"checks": ["fooling"], "seed": seed}, "checks": {"fooling": opts}}
    res = run_audit(model, None, cfg).check("fooling")
    assert res.error is None, res.data.get("traceback")
    return res


def _rows(res, name, **quals):
    return [m for m in res.metrics if m.name == name and all(m.qualifiers.get(k) == v for k, v in quals.items())]


def _value(res, name, **quals):
    rows = [m for m in _rows(res, name, **quals) if set(m.qualifiers) == set(quals)]
    assert len(rows) == 1, (name, quals, rows)
    return rows[0].value


# ----------------------------------------------------------------------------- anchor
def test_gradient_ascent_fools_every_class(tiny_model):
    res = _run(tiny_model, methods=["gradient"], garbage=[])
    assert _value(res, "fooling_rate", method="gradient") == 1.0
    best = {m.qualifiers["class"]: m.value for m in _rows(res, "best_confidence", method="gradient")}
    assert set(best) == set(PATTERNS) and min(best.values()) >= 0.99
    first = _rows(res, "steps_to_confidence", method="gradient", confidence=0.99)
    per_class = [m.value for m in first if "class" in m.qualifiers]
    steps = _value(res, "steps", method="gradient")
    assert len(per_class) == 4 and all(v is not None and 0 <= v <= steps for v in per_class)
    # first-step levels are ordered: reaching 0.9999 cannot come before reaching 0.99
    levels = res.data["per_class"]["gradient"]
    for rec in levels.values():
        s = rec["steps_to"]
        assert rec["best_confidence"] >= 0.99 and s["0.99"] is not None
        if s["0.9999"] is not None:
            assert s["0.99"] <= s["0.999"] <= s["0.9999"]
    assert any(f.code == "fooling.most_classes_fooled" and f.severity == "warn" for f in res.findings)
    gal = [a for a in res.artifacts if a.path.endswith("gallery_gradient.png")]
    assert gal and gal[0].data[:4] == b"\x89PNG"


def test_evolution_fools_most_classes_within_default_budget(tiny_model):
    opts = FoolingCheck.Options()
    res = _run(tiny_model, methods=["evolution_direct", "evolution_cppn"], garbage=[])
    for method in ("evolution_direct", "evolution_cppn"):
        rate = _value(res, "fooling_rate", method=method)
        assert rate > 0.5, (method, res.data["per_class"][method])
        assert _value(res, "queries", method=method) <= opts.queries_per_class * len(PATTERNS)
        # a fooled class's first query at 0.99 is recorded and within the budget
        for rec in res.data["per_class"][method].values():
            if rec["best_confidence"] >= 0.99:
                assert 0 < rec["queries_to"]["0.99"] <= opts.queries_per_class * len(PATTERNS)
    assert res.status == "warn"


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_numbers(tiny_model):
    opts = dict(steps=10, queries_per_class=48, children=4, garbage=["black", "stripes"], garbage_samples=4,
                early_stop=False)
    a, b = _run(tiny_model, seed=3, **opts), _run(tiny_model, seed=3, **opts)
    c = _run(tiny_model, seed=4, **opts)
    rows = lambda r: [(m.name, tuple(sorted(m.qualifiers.items())), m.value) for m in r.metrics]  # noqa: E731
    assert rows(a) == rows(b)
    assert [x.data for x in a.artifacts] == [x.data for x in b.artifacts]
    assert rows(a) != rows(c)


def test_method_numbers_do_not_depend_on_other_methods(tiny_model):
    opts = dict(queries_per_class=60, children=4, garbage=[])
    both = _run(tiny_model, methods=["evolution_direct", "evolution_cppn"], **opts)
    alone = _run(tiny_model, methods=["evolution_cppn"], **opts)
    assert [m.value for m in _rows(both, "best_confidence", method="evolution_cppn")] == \
           [m.value for m in _rows(alone, "best_confidence", method="evolution_cppn")]


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("bad", [
    {"methods": ["gradient", "genetic"]}, {"threshold": 1.0}, {"threshold": 0}, {"steps": 0},
    {"queries_per_class": 0}, {"children": -1}, {"lr": 0.0}, {"l2_decay": 1.0}, {"garbage": ["plaid"]},
    {"max_classes": -1}, {"blur_sigma": 0}, {"mutation_rate": 1.5}, {"most_classes": 2.0},
    {"classes": [[1]]}, {"garbage_samples": 0}, {"max_classes": 0}, {"children": 0},
])
def test_bad_options_are_config_errors(bad):
    with pytest.raises(ConfigError):
        FoolingCheck.parse_options(bad)
    with pytest.raises(ConfigError):
        AuditConfig.from_dict({"checks": {"fooling": bad}})


def test_unknown_option_key_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown key"):
        AuditConfig.from_dict({"checks": {"fooling": {"budget": 5}}})


def test_unknown_named_class_is_a_config_error(tiny_model):
    cfg = {"audit": {"checks": ["fooling"]}, "checks": {"fooling": {"classes": ["zebra"], "garbage": []}}}
    res = run_audit(tiny_model, None, cfg).check("fooling")
    assert res.status == "error" and "zebra" in res.error


# ----------------------------------------------------------------------------- targets and scale
class _Wide(nn.Module):
    """150 classes, a linear read-out of a 4x4 pooled image."""

    def __init__(self, k=150):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(48, k)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(k, 48, generator=g) * 3)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_many_classes_sample_targets_plus_named_ones():
    model = _wrap(_Wide(), names=[f"c{i}" for i in range(150)])
    opts = dict(methods=["evolution_cppn"], max_classes=5, classes=["c7", 140], queries_per_class=20,
                children=2, garbage=[])
    res = _run(model, **opts)
    targets = res.data["targets"]
    assert len(targets) == 5 and {"c7", "c140"} <= set(targets)
    assert len(_rows(res, "best_confidence", method="evolution_cppn")) == 5
    assert any(f.code == "fooling.classes_sampled" for f in res.findings)
    assert _run(model, **opts).data["targets"] == targets
    assert _run(model, seed=9, **opts).data["targets"] != targets


def test_images_have_the_model_input_size():
    class Pool(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            assert x.shape[1:] == (3, 12, 20)
            return self.inner(x)

    model = _wrap(Pool(_Wide(6)), shape=(3, 12, 20))
    res = _run(model, steps=3, queries_per_class=16, children=2, garbage_samples=2, early_stop=False)
    assert res.error is None
    cppn = CPPNEncoding((1, 12, 20), layers=2, width=4)
    assert cppn.render(cppn.random(3, torch.Generator().manual_seed(0))).shape == (3, 1, 12, 20)


# ----------------------------------------------------------------------------- models that resist
class _Flat(nn.Module):
    """Nearly uniform outputs whatever the input: nothing can fool it, nothing is overconfident."""

    def forward(self, x):
        return 0.01 * x.mean((1, 2, 3)).unsqueeze(1) * torch.arange(4.0, device=x.device)


class _Blackfan(nn.Module):
    """Near-certain 'class 0' for dark images, uniform otherwise."""

    def forward(self, x):
        dark = (0.3 - x.mean((1, 2, 3))).clamp_min(0) * 100
        return torch.stack([dark, 0 * dark, 0 * dark, 0 * dark], 1)


def test_resistant_model_has_no_findings():
    res = _run(_wrap(_Flat()), steps=10, queries_per_class=32, children=4, garbage_samples=4)
    assert res.status == "pass" and not res.findings
    for method in ("gradient", "evolution_direct", "evolution_cppn"):
        assert _value(res, "fooling_rate", method=method) == 0.0
        assert _value(res, "median_best_confidence", method=method) < 0.3
    assert _value(res, "garbage_share_confident", input="all", confidence=0.9) == 0.0


def test_garbage_table_and_overconfidence_finding():
    res = _run(_wrap(_Blackfan()), methods=[], garbage_samples=8)
    for kind in KINDS:
        share = _value(res, "garbage_share_confident", input=kind, confidence=0.99)
        assert 0.0 <= share <= 1.0
        assert _value(res, "garbage_median_confidence", input=kind) is not None
    assert _value(res, "garbage_share_confident", input="black", confidence=0.99) == 1.0
    assert _value(res, "garbage_share_confident", input="white", confidence=0.9) == 0.0
    f = [f for f in res.findings if f.code == "fooling.overconfident_on_garbage"]
    assert f and f[0].severity == "warn" and "black" in f[0].extra["kinds"] and "white" not in f[0].extra["kinds"]
    names = {a.path.rsplit("/", 1)[1] for a in res.artifacts}
    assert {"garbage_confidence.png", "garbage_examples.png"} <= names


class _Detached(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.detach())


def test_model_without_input_gradient_skips_gradient_method(tiny_model):
    res = _run(_wrap(_Detached(tiny_model.net)), queries_per_class=16, children=2, garbage=[])
    assert any(f.code == "fooling.gradient_unavailable" for f in res.findings)
    assert not _rows(res, "fooling_rate", method="gradient")
    assert _rows(res, "fooling_rate", method="evolution_cppn")


# ----------------------------------------------------------------------------- building blocks
def test_log_odds_matches_float64_formula():
    z = torch.randn(5, 7) * 6
    t = torch.tensor([0, 3, 6])
    p = z.double().softmax(1)[:, t]
    want = torch.log(p / (1 - p))
    assert torch.allclose(log_odds(z, t).double(), want, atol=1e-4)
    # still ordered where float32 probabilities are all 1.0
    big = torch.tensor([[40.0, 0.0], [45.0, 0.0]])
    assert big.softmax(1)[0, 0] == big.softmax(1)[1, 0] == 1.0
    lo = log_odds(big, torch.tensor([0]))
    assert lo[1, 0] > lo[0, 0]


def test_cppn_images_are_regular_patterns_and_direct_ones_noise():
    g = torch.Generator().manual_seed(0)
    cppn = CPPNEncoding((3, 32, 32))
    imgs = cppn.render(cppn.random(16, g))
    assert imgs.shape == (16, 3, 32, 32) and imgs.min() >= 0 and imgs.max() <= 1
    direct = DirectEncoding((3, 32, 32)).random(16, g)

    def roughness(x):  # mean absolute difference of neighbouring pixels
        return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., 1:] - x[..., :-1]).abs().mean())

    assert roughness(imgs) < 0.5 * roughness(direct)
    assert imgs.flatten(1).std(1).median() > 0.02  # not blank
    child = cppn.render(cppn.mutate(cppn.take(cppn.random(4, g), torch.arange(4)), g))
    assert child.shape == (4, 3, 32, 32)


def test_garbage_inputs_are_in_bounds_and_shaped():
    g = torch.Generator().manual_seed(0)
    for kind in KINDS:
        x = garbage_inputs(kind, 5, (1, 9, 11), g)
        assert x.shape[1:] == (1, 9, 11) and x.min() >= 0 and x.max() <= 1
        assert len(x) == (1 if kind in ("black", "gray", "white") else 5)
    with pytest.raises(ValueError):
        garbage_inputs("plaid", 2, (3, 8, 8), g)


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_runs_on_saved_formats(tiny_model, tmp_path, fmt):
    """Gradient and evolution work through a TorchScript archive and a torch.export program."""
    from audit.model import load_model
    from tests.tinymodels import compile_as, save_compiled

    path = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    save_compiled(compile_as(tiny_model.net, fmt, torch.rand(3, 3, 16, 16)), path)  # an export fixed at batch 3
    model = load_model(path, input_size="3x16x16", class_names=list(PATTERNS), device="cpu")
    assert model.info["format"] == fmt
    res = _run(model, steps=20, queries_per_class=40, garbage=["black"])
    assert not any(f.code == "fooling.gradient_unavailable" for f in res.findings)
    assert _value(res, "fooling_rate", method="gradient") == 1.0


# ----------------------------------------------------------------------------- contract
def test_method_registry_refuses_duplicates_and_docs_list_every_method():
    from pathlib import Path

    from attacks.fooling.methods import FoolingMethod, register_method, registered_methods

    assert list(registered_methods()) == ["gradient", "evolution_direct", "evolution_cppn"]
    with pytest.raises(ValueError, match="already registered"):
        @register_method
        class Again(FoolingMethod):
            name = "gradient"
    assert registered_methods()["gradient"].__name__ == "GradientAscent"
    # the options accept exactly the registered names
    assert FoolingCheck.parse_options({"methods": list(registered_methods())}).methods == list(registered_methods())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "fooling.md").read_text()
    for name in registered_methods():
        assert f"| `{name}` |" in doc, f"docs/fooling.md: no row for method {name}"


def test_options_round_trip():
    import dataclasses

    o = FoolingCheck.Options()
    assert FoolingCheck.parse_options(dataclasses.asdict(o)) == o


def test_records_survive_a_unit_checkpoint(tmp_path):
    from attacks.fooling.check import GarbageRecord, SearchRecord
    from attacks.fooling.garbage import GarbageKind
    from attacks.fooling.search import SearchResult
    from audit.checkpoint import Checkpoints

    r = SearchResult([1, 2], torch.rand(2, 3, 4, 4), [0.5, 0.9], [1, 0], [0.5, 0.9],
                     {0.99: [None, 3], 0.999: [None, None]}, 7)
    g = GarbageKind("black", torch.rand(1), torch.zeros(1, dtype=torch.long), torch.rand(3, 4, 4))
    store = Checkpoints(tmp_path)
    for i, rec in enumerate([SearchRecord("gradient", r, "", 1.5), SearchRecord("gradient", None, "no gradient"),
                             GarbageRecord([g], 0.2)]):
        store.save_unit("fooling", f"u:{i}", "fp", rec)
        back = store.load_unit("fooling", f"u:{i}", "fp")
        assert type(back) is type(rec), (i, back)
        if isinstance(rec, SearchRecord):
            assert (back.method, back.unavailable, back.seconds) == (rec.method, rec.unavailable, rec.seconds)
            if rec.result is not None:
                assert torch.equal(back.result.images, r.images) and back.result.first == r.first
                assert (back.result.targets, back.result.best, back.result.used) == (r.targets, r.best, r.used)
        else:
            [bk] = back.kinds
            assert isinstance(bk, GarbageKind) and torch.equal(bk.example, g.example) and bk.kind == "black"


def test_unrecognizable_is_measured_against_real_images():
    """Images near the real examples of their class are "synthesized images", images far from
    every real one are "unrecognizable"; without data nothing is claimed."""
    from attacks.fooling.report import report_distances, report_most_fooled
    from attacks.fooling.search import SearchResult
    from audit.results import CheckResult

    class M:
        name, cost = "gradient", "steps"

    g = torch.Generator().manual_seed(0)
    real = torch.rand(20, 3, 8, 8, generator=g) * 0.1 + torch.arange(2).repeat(10).view(20, 1, 1, 1) * 0.8
    y = torch.arange(2).repeat(10)
    near = SearchResult([0, 1], torch.stack([real[0] + 0.01, real[1] + 0.01]), [0.999, 0.999], [0, 1],
                        [0.999, 0.999], {0.99: [1, 1]}, 10)
    far = SearchResult([0, 1], torch.stack([1 - real[0], 1 - real[1]]), [0.999, 0.999], [0, 1], [0.999, 0.999],
                       {0.99: [1, 1]}, 10)
    for result, word in ((near, "Synthesized images (some as close"), (far, "Unrecognizable")):
        res = CheckResult("fooling")
        flags = report_distances(res, {M: result}, ["a", "b"], real, y)
        report_most_fooled(res, {M: result}, 2, 0.99, 0.5, flags, 2)
        msg = next(f.message for f in res.findings if f.code == "fooling.most_classes_fooled")
        assert msg.startswith(word) and "chance level 50.0%" in msg, msg
    res = CheckResult("fooling")
    report_most_fooled(res, {M: near}, 2, 0.99, 0.5, report_distances(res, {M: near}, ["a", "b"], None, None), 2)
    assert res.findings[0].message.startswith("Synthesized images (not compared")
