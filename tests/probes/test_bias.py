"""Tests for probes/bias/ (TCAV in tcav.py, pasting in insertion.py): a planted shortcut is found,
a clean model raises no finding, TCAV's statistics behave, the class_viz tie works, options are
typed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.model import AuditModel, ModelSpec
from audit.runner import run_audit
from probes.bias import insertion as ins
from probes.bias import tcav as tc
from tests.tinymodels import PATTERNS, TinyNet, fit, make_patterns

MARKER = torch.tensor([1.0, 0.0, 1.0])  # magenta: no pattern image has it


def add_marker(x: torch.Tensor, g: torch.Generator, size: int = 4) -> torch.Tensor:
    """A solid magenta square at a random position on each image."""
    x = x.clone()
    n, _, h, w = x.shape
    pos = torch.randint(0, h - size + 1, (n, 2), generator=g)
    for i, (r, c) in enumerate(pos.tolist()):
        x[i, :, r:r + size, c:c + size] = MARKER.view(3, 1, 1)
    return x


def train_model(shortcut: bool, *, seed: int = 0, steps: int = 250) -> AuditModel:
    """TinyNet on the pattern classes. With ``shortcut`` every training image of class 0
    (hstripes) carries the marker, and half of them show another class's pattern under it:
    the marker, not the stripes, is what makes those class 0 (a planted shortcut)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = make_patterns(60, seed=seed + 100)
    if shortcut:
        m = y == 0
        xm = x[m].clone()
        half = torch.arange(len(xm)) % 2 == 0
        xm[half] = x[~m][torch.randint(0, int((~m).sum()), (int(half.sum()),), generator=g)]
        x[m] = add_marker(xm, g)
    net = fit(TinyNet(), x, y, steps=steps, batch=64, generator=g)
    return AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize()


def write_concepts(root, seed: int = 1):
    """root/marker: the marker on plain or noisy backgrounds; root/random_0..4: pattern images
    and plain backgrounds without it."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)

    def backgrounds(n):
        base = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.1
        return (base + 0.03 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1)

    def save(folder, imgs):
        folder.mkdir(parents=True)
        for i, im in enumerate(imgs):
            a = (im.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            Image.fromarray(a).save(folder / f"{i:03d}.png")

    save(root / "marker", add_marker(backgrounds(24), g))
    for k in range(5):
        px, _ = make_patterns(3, seed=500 + k)
        save(root / f"random_{k}", torch.cat([px, backgrounds(12)]))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def concept_dir(tmp_path_factory):
    return write_concepts(tmp_path_factory.mktemp("concepts") / "concepts")


@pytest.fixture(scope="module")
def eval_data():
    from audit.data import AuditData

    x, y = make_patterns(15, seed=7)
    return AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))])


def _audit(model, data, concepts, checks=("bias",), **bias_opts):
    cfg = {"audit": {"checks": list(checks)},
           "checks": {"bias": {"concepts": str(concepts), **bias_opts}, "class_viz": {"steps": 48}}}
    return run_audit(model, data, cfg)


@pytest.fixture(scope="module")
def shortcut_result(concept_dir, eval_data):
    return _audit(train_model(True), eval_data, concept_dir, checks=("class_viz", "bias"))


def _metric(check, name, **q):
    rows = [m.value for m in check.metrics if m.name == name and all(m.qualifiers.get(k) == v for k, v in q.items())]
    assert rows, (name, q)
    return rows


# ----------------------------------------------------------------------- planted shortcut
@pytest.mark.slow
def test_planted_shortcut_is_found(shortcut_result):
    b = shortcut_result.check("bias")
    assert b.error is None, b.data.get("traceback")
    found = [f for f in b.findings if f.code == "bias.concept_dependence"]
    assert [(f.class_, f.extra["concept"]) for f in found] == [("hstripes", "marker")]
    f = found[0]
    assert b.status == "warn"
    # the message states the TCAV evidence and the counterfactual flip rate, with numbers
    assert "TCAV score" in f.message and "p = " in f.message and "%" in f.message
    assert f.extra["p_value"] < 0.05 / 8 and f.extra["tcav_score"] >= 0.7
    flip = _metric(b, "flip_rate", **{"class": "hstripes", "concept": "marker"})[0]
    ctrl = _metric(b, "flip_rate_control", **{"class": "hstripes", "concept": "marker"})[0]
    assert flip - ctrl >= 0.1 and abs(flip - f.extra["flip_rate"]) < 1e-3
    assert _metric(b, "flip_p_value", **{"class": "hstripes", "concept": "marker"})[0] < 0.05 / 4
    # every TCAV score comes with its p-value
    assert len([m for m in b.metrics if m.name == "tcav_score"]) == len([m for m in b.metrics if m.name == "tcav_p_value"]) == 8


def test_no_finding_without_the_shortcut(concept_dir, eval_data):
    r = _audit(train_model(False), eval_data, concept_dir)
    b = r.check("bias")
    assert b.error is None, b.data.get("traceback")
    assert not [f for f in b.findings if f.code == "bias.concept_dependence"]
    assert b.status == "pass"
    # the clean model is not flipped by pasting the marker
    assert max(_metric(b, "flip_rate", concept="marker")) < 0.1


@pytest.mark.slow
def test_viz_concept_score_ties_class_viz(shortcut_result):
    """With class_viz run first, the shortcut class's picture carries the marker direction
    more than the other classes' pictures."""
    b = shortcut_result.check("bias")
    layer = next(f.extra["layer"] for f in b.findings if f.code == "bias.concept_dependence")
    own = _metric(b, "viz_concept_score", **{"class": "hstripes", "concept": "marker", "layer": layer})[0]
    others = [m.value for m in b.metrics if m.name == "viz_concept_score" and m.qualifiers["layer"] == layer
              and m.qualifiers["class"] != "hstripes"]
    assert len(others) == 3 and own > max(others)
    assert "class visualization points along" in next(f.message for f in b.findings)
    names = [a.path.rsplit("/", 1)[1] for a in b.artifacts]
    assert {"tcav.png", "counterfactual_marker.png"} <= set(names)
    # the shortcut class's own picture beside the concept's examples, first in the report
    assert names[0] == "leans_hstripes_marker.png" and "leans_" not in "".join(names[1:])


def test_without_concepts_is_an_info_finding(eval_data):
    m = AuditModel(TinyNet().eval(), ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize()
    r = run_audit(m, eval_data, {"audit": {"checks": ["bias"]}})
    b = r.check("bias")
    assert b.error is None and [f.code for f in b.findings] == ["bias.no_concepts"]


def test_random_sets_from_data_when_no_random_folders(tmp_path, concept_dir, eval_data):
    import shutil

    only = tmp_path / "c"
    shutil.copytree(concept_dir / "marker", only / "marker")
    r = _audit(train_model(True), eval_data, only, runs=8)
    b = r.check("bias")
    assert b.error is None, b.data.get("traceback")
    assert "drawn from the data" in b.data["settings"]["note"]
    assert len(_metric(b, "tcav_p_value", **{"class": "hstripes"})) == 2


# --------------------------------------------------------------------------- statistics
def test_cav_points_towards_the_concept():
    g = torch.Generator().manual_seed(0)
    direction = torch.zeros(10)
    direction[3] = 1.0
    neg = torch.randn(40, 10, generator=g)
    pos = torch.randn(40, 10, generator=g) + 2 * direction
    v = tc.train_cav(pos, neg)
    assert abs(float(v.norm()) - 1) < 1e-5 and int(v.abs().argmax()) == 3 and v[3] > 0.8
    # gradients aligned with the concept give a TCAV score of 1, opposed ones 0
    grads = torch.randn(30, 10, generator=g) * 0.1 + direction
    assert tc.tcav_score(grads, v) == 1.0 and tc.tcav_score(-grads, v) == 0.0


def test_welch_p():
    assert tc.welch_p([0.9, 0.95, 1.0, 0.92], [0.4, 0.6, 0.5, 0.45, 0.55]) < 1e-3
    assert tc.welch_p([0.5, 0.6, 0.4], [0.45, 0.55, 0.5]) > 0.5
    assert tc.welch_p([1.0], [0.5, 0.5]) == 1.0  # too few runs: no evidence
    # one-sided: only a mean above the other's is evidence; NaN runs are dropped
    assert tc.welch_p([0.9, 0.95, 1.0], [0.5, 0.4, 0.6], "greater") < 0.01
    assert tc.welch_p([0.5, 0.4, 0.6], [0.9, 0.95, 1.0], "greater") > 0.99
    assert tc.welch_p([1.0, 1.0, float("nan")], [0.5, 0.5], "greater") == 0.0
    # unequal variances: a near-constant sample against a spread one is not over-confident
    from scipy import stats
    a, b = [0.80, 0.81, 0.80, 0.79, 0.80], [0.1, 0.9, 0.2, 1.0, 0.95]  # equal runs, as TCAV has
    assert tc.welch_p(a, b) > stats.ttest_ind(a, b).pvalue


def test_fit_cav_holds_out_and_measures_accuracy():
    g = torch.Generator().manual_seed(0)
    d = torch.zeros(8)
    d[1] = 1.0
    order = torch.randperm(60, generator=g)
    held, train = tc.holdout_split(order, 30)
    assert len(held) == 10 and len(train) == 20 and set((held.tolist() + train.tolist())) == set(range(30))
    sep = tc.fit_cav(torch.randn(30, 8, generator=g) + 3 * d, torch.randn(30, 8, generator=g), order)
    assert sep[1] > 0.9 and int(sep[0].abs().argmax()) == 1
    chance = [tc.fit_cav(torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g), torch.randperm(60, generator=g))[1]
              for _ in range(20)]
    assert 0.35 < sum(chance) / len(chance) < 0.65
    assert np.isnan(tc.fit_cav(torch.randn(2, 8), torch.randn(9, 8), order)[1])  # too few to hold out


def test_foreground_mask_finds_the_object_not_the_background():
    g = torch.Generator().manual_seed(0)
    yy = torch.linspace(0, 1, 16).view(1, 1, 16, 1)
    bg = (0.2 + 0.5 * yy).expand(2, 3, 16, 16).clone()  # a vertical gradient
    img = bg.clone()
    img[:, :, 6:10, 6:10] = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
    m = ins.foreground_mask(img)
    assert m[:, :, 7:9, 7:9].min() > 0.9 and m[:, :, :3].max() < 0.1 and m[:, :, :, 12:].max() < 0.1
    pasted, masks = ins.paste(torch.zeros(3, 3, 16, 16), img, g)
    assert pasted[:, 0, 7:9, 7:9].min() > 0.9 and pasted[:, :, :3].abs().max() < 0.1 and masks.shape == (3, 1, 16, 16)


def test_mcnemar_p():
    assert ins.mcnemar_p(0, 0) == 1.0
    assert ins.mcnemar_p(20, 1) < 1e-4
    assert ins.mcnemar_p(5, 5) == 1.0


@pytest.mark.parametrize("shortcut", [True, False], ids=["shortcut", "clean"])
def test_unhookable_model_is_not_tested_by_tcav_and_found_by_counterfactuals(concept_dir, eval_data, shortcut):
    """A TorchScript model: TCAV cannot run, which is said ("not tested"), never read as "no
    dependence"; the planted shortcut is still found on the counterfactual evidence alone, with
    wording that names it, and its clean twin is not blamed."""
    m = train_model(shortcut)
    ts = torch.jit.trace(m.net, torch.rand(2, 3, 16, 16))
    model = AuditModel(ts, ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize()
    b = _audit(model, eval_data, concept_dir).check("bias")
    assert b.error is None, b.data.get("traceback")
    assert not [m for m in b.metrics if m.name == "tcav_score"]
    assert len([m for m in b.metrics if m.name == "flip_rate"]) == 4  # counterfactuals still measured
    no_layer = [f for f in b.findings if f.code == "bias.no_layer"]
    assert len(no_layer) == 1 and no_layer[0].message.startswith("TCAV not tested")
    found = [f for f in b.findings if f.code == "bias.concept_dependence"]
    if shortcut:
        assert [(f.class_, f.extra["concept"]) for f in found] == [("hstripes", "marker")]
        assert "counterfactual evidence alone" in found[0].message and "TCAV" in found[0].message
        assert "TCAV not tested" in b.summary and b.status == "warn"
    else:
        assert found == [] and "no class depends" not in b.summary and "TCAV not tested" in b.summary


@pytest.mark.parametrize("key,value", [("space", "bogus"), ("severity", "high"), ("runs", 0), ("classes", [1.5])])
def test_bad_options_are_refused_at_config_read(key, value):
    from audit.config import AuditConfig
    from audit.errors import ConfigError, ExitCode

    with pytest.raises(ConfigError, match=rf"\[checks.bias\] {key} = ") as e:
        AuditConfig.from_dict({"checks": {"bias": {key: value}}})
    assert e.value.exit_code == ExitCode.USAGE_ERROR


def test_paste_is_the_picked_exemplars_pasted_at():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    base, ex = torch.rand(5, 3, 16, 16), torch.rand(4, 3, 16, 16)
    usable = ins.usable_exemplars(ex)
    a, _ = ins.paste(base, ex, g1)
    b, _ = ins.paste_at(base, usable[ins.pick_exemplars(usable, len(base), g2)])
    assert torch.equal(a, b)


def test_unit_records_survive_a_checkpoint(tmp_path, concept_dir, eval_data):
    """Every unit's record is a @record that --resume loads back as it was (no pickled code)."""
    import dataclasses

    from audit.checkpoint import Checkpoints
    from audit.config import AuditConfig
    from audit.context import Context
    from probes.bias import BiasCheck

    model = AuditModel(TinyNet().eval(), ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize()
    cfg = AuditConfig.from_dict({"checks": {"bias": {"concepts": str(concept_dir), "runs": 3, "max_base": 8}}})
    ctx = Context(model=model, data=eval_data, config=cfg, logits=model.logits(eval_data.x)).scoped("bias")
    check, store = BiasCheck(cfg.options_for("bias")), Checkpoints(tmp_path)
    units = check.units(ctx)
    assert [u.key for u in units] == ["tcav:0", "tcav:1", "control:0", "paste:0"]
    for u in units:
        rec = check.compute(u, ctx, torch.Generator())
        store.save_unit("bias", u.key, "fp", rec)
        back = store.load_unit("bias", u.key, "fp")
        assert type(back) is type(rec) and repr(dataclasses.asdict(back)) == repr(dataclasses.asdict(rec)), u.key


@pytest.mark.slow
def test_dynamic_batch_export_gets_tcav(concept_dir, eval_data, tmp_path):
    """A .pt2 archive with a dynamic batch is unflattened into hookable modules: TCAV runs on
    its convolutions and finds the planted shortcut, as on the original module."""
    import audit
    from tests.tinymodels import compile_as, save_compiled

    m = train_model(True)
    path = tmp_path / "shortcut.pt2"
    save_compiled(compile_as(m.net, "export", torch.rand(2, 3, 16, 16), dynamic_batch=True), path)
    model = audit.load_model(path, class_names=list(PATTERNS), device="cpu")
    b = _audit(model, eval_data, concept_dir).check("bias")
    assert b.error is None, b.data.get("traceback")
    assert not [f for f in b.findings if f.code == "bias.no_layer"]
    assert [m.qualifiers["layer"] for m in b.metrics if m.name == "tcav_score"][:1]
    found = [f for f in b.findings if f.code == "bias.concept_dependence"]
    assert [(f.class_, f.extra["concept"]) for f in found] == [("hstripes", "marker")]
    assert "TCAV score" in found[0].message


def _random_images(n: int, g: torch.Generator) -> torch.Tensor:
    """Random counter-examples like write_concepts's random folders: pattern images and plain
    noisy backgrounds, one distribution."""
    px, _ = make_patterns((n + 1) // 2 // len(PATTERNS) + 1, seed=int(torch.randint(0, 10**6, (1,), generator=g)))
    px = px[torch.randperm(len(px), generator=g)[: n // 2]]
    nb = n - len(px)
    bg = (torch.rand(nb, 3, 1, 1, generator=g) * 0.8 + 0.1 + 0.03 * torch.randn(nb, 3, 16, 16, generator=g)).clamp(0, 1)
    return torch.cat([px, bg])[torch.randperm(n, generator=g)]


def test_tcav_is_calibrated_on_random_pseudo_concepts():
    """Kim et al.'s exact null: "concepts" that are random sets drawn from the same images as
    the random pool. At most ~alpha of the (class, concept, layer) tests may reach p < 0.05,
    and the CAVs are at chance; the score test alone (the paper's and this check's old rule: a
    fixed positive set against the random-vs-random null) is far from calibrated on the same
    rows."""
    from probes.bias.layers import probe_layers

    model = train_model(False, steps=150)
    g = torch.Generator().manual_seed(11)
    pool = _random_images(120, g)
    concepts = {f"pseudo_{i}": _random_images(20, g) for i in range(8)}
    layers, fired = probe_layers(model, [], 2, pool[:1])
    assert fired and len(layers) == 2
    runs = 20
    draws = [torch.randperm(len(pool), generator=g) for _ in range(runs)]
    splits = [torch.randperm(len(pool), generator=g) for _ in range(runs)]
    x, y = make_patterns(12, seed=21)
    class_x = {k: x[y == k] for k in range(len(PATTERNS))}
    rows = [r for ln in layers for r in tc.layer_tcav(model, ln, concepts=concepts, pool=pool, draws=draws,
                                                        splits=splits, class_x=class_x, space="pooled",
                                                        cav_alpha=0.01).rows]
    assert len(rows) == 8 * 4 * 2
    significant = [r for r in rows if r.p_cav < 0.05 and r.p < 0.05]  # the check's rule at alpha 0.05
    assert len(significant) / len(rows) <= 0.10, len(significant)  # 64 tests at 5 %: above the binomial 95 % bound
    accs = [tc.cav_accuracy(r) for r in rows]
    assert all(abs(a - 0.5) < 0.15 and abs(a0 - 0.5) < 0.15 for a, a0 in accs), accs
    assert sum(r.p < 0.05 for r in rows) / len(rows) > 0.3  # the score test alone: what the CAV condition prevents
