"""The attribution check (probes/attribution/) and its helpers: every registered method, the
paper's randomization pattern (Adebayo et al. 2018) on a small CNN trained here, deletion /
insertion (Petsiuk et al. 2018), in-place/reused ReLUs, TorchScript/export, determinism."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from audit.config import AuditConfig
from audit.data import AuditData
from audit.model import AuditModel, ModelSpec
from audit.published import AdversarialExamples
from audit.runner import Context, run_audit
from probes.attribution import AttributionCheck
from probes.attribution.hooks import hook_safe_copy
from probes.attribution.memory import choose_internal_batch
from probes.attribution.methods import (HOOK, METHOD_NAMES, METHODS, AttrMethod, AttrSettings, MethodRegistry,
                                        with_oom_retry)
from probes.attribution.sanity import auc, average_ranks, cascade, deletion_insertion, layer_groups, spearman
from probes.layers import last_conv
from tests.tinymodels import PATTERNS, NoGradNet, compile_as, fit, make_patterns

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # captum warns on every hook/grad call

#: small settings so that one check run takes seconds
FAST = {"per_class": 2, "mistakes": 1, "sanity_images": 4, "faithfulness_images": 4, "ig_steps": 8,
        "smoothgrad_samples": 4, "curve_steps": 4, "occlusion_window": 4}


class CamNet(nn.Module):
    """A small GAP CNN (the shape of the demo's GymNet): three convs, global average pooling,
    a linear layer. ``inplace``/``shared`` build the same parameters with in-place ReLUs or
    one ReLU module called three times."""

    def __init__(self, w: int = 12, *, inplace: bool = False, shared: bool = False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)
        self.c3, self.fc = nn.Conv2d(w, 2 * w, 3, padding=1), nn.Linear(2 * w, 4)
        self.shared = shared
        if shared:
            self.act = nn.ReLU(inplace=inplace)
        else:
            self.r1, self.r2, self.r3 = (nn.ReLU(inplace=inplace) for _ in range(3))

    def forward(self, x):
        a = (self.act,) * 3 if self.shared else (self.r1, self.r2, self.r3)
        x = a[1](self.c2(a[0](self.c1(x))))
        x = a[2](self.c3(F.max_pool2d(x, 2)))
        return self.fc(x.mean((2, 3)))


def _train_camnet(seed: int = 0, steps: int = 120) -> CamNet:
    torch.manual_seed(seed)
    x, y = make_patterns(32, seed=seed + 100)
    net = CamNet()
    return fit(net, x, y, steps=steps, batch=32, generator=torch.Generator().manual_seed(seed))


def _audit_model(net, fmt="pickle") -> AuditModel:
    spec = ModelSpec(input_shape=(3, 16, 16), num_classes=4, class_names=list(PATTERNS))
    model = AuditModel(net, spec, info={"format": fmt}).finalize()
    return model if fmt == "export" else model.eval()  # an exported program refuses .train()/.eval()


@pytest.fixture(scope="module")
def camnet():
    return _train_camnet()


@pytest.fixture(scope="module")
def data():
    x, y = make_patterns(6, seed=7)
    return AuditData(x, y, list(PATTERNS), [f"img{i}" for i in range(len(x))])


def _run(model, data, seed=0, **opts):
    cfg = AuditConfig(seed=seed, checks=["attribution"], check_options={"attribution": {**FAST, **opts}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_audit(model, data, cfg).check("attribution")
    assert res.error is None, res.data.get("traceback")
    return res


def _metric(res, name, **q):
    rows = [m.value for m in res.metrics if m.name == name and all(m.qualifiers.get(k) == v for k, v in q.items())]
    assert len(rows) == 1, (name, q, rows)
    return rows[0]


def _codes(res):
    return {(f.code, f.extra.get("method")) for f in res.findings}


# ----------------------------------------------------------------------------- every listed method
@pytest.mark.parametrize("method", list(METHODS), ids=METHOD_NAMES)
def test_method_explains_the_asked_class_deterministically(method, camnet):
    model = _audit_model(camnet)
    x, _ = make_patterns(2, seed=3)
    s = AttrSettings(ig_steps=8, smoothgrad_samples=4, occlusion_window=4, layer=last_conv(model)[1])
    t = model(x).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, _ = method.attribute(model, x, t, s)
        b, _ = method.attribute(model, x, t, s)
        other, _ = method.attribute(model, x, (t + 1) % 4, s)
    assert a.shape == (len(x), 16, 16)
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert torch.equal(a, b)  # SmoothGrad's noise is seeded
    assert not torch.allclose(a, other)  # the map depends on the class it explains


def test_integrated_gradients_delta_shrinks_with_steps(camnet):
    model = _audit_model(camnet)
    x, _ = make_patterns(1, seed=4)
    t = model(x).argmax(1)
    ig = next(m for m in METHODS if m.name == "integrated_gradients")
    d4 = ig.attribute(model, x, t, AttrSettings(ig_steps=4))[1]["convergence_delta"].mean()
    d64 = ig.attribute(model, x, t, AttrSettings(ig_steps=64))[1]["convergence_delta"].mean()
    assert d64 < d4


# ----------------------------------------------------------------------------- the paper's pattern
def test_randomization_reproduces_the_paper_pattern(camnet, data):
    """Adebayo et al. 2018: Gradient (saliency) and Grad-CAM change when the weights are
    randomized from the top down; Guided Backprop barely does. Default threshold."""
    model = _audit_model(camnet)
    assert (model.logits(data.x).argmax(1) == data.y).float().mean() >= 0.95  # a trained model
    res = _run(model, data, per_class=2, sanity_images=8,
               methods=["saliency", "grad_cam", "guided_backprop"])
    sim = {m: _metric(res, "randomization_similarity", method=m) for m in ("saliency", "grad_cam", "guided_backprop")}
    assert sim["guided_backprop"] > 0.5 > max(sim["saliency"], sim["grad_cam"]), sim
    assert _metric(res, "passes_randomization", method="saliency") == 1.0
    assert _metric(res, "passes_randomization", method="grad_cam") == 1.0
    assert _metric(res, "passes_randomization", method="guided_backprop") == 0.0
    gbp = [f for f in res.findings if f.code == "attribution.fails_randomization"]
    assert [f.extra["method"] for f in gbp] == ["guided_backprop"] and gbp[0].severity == "info"
    layers = [m.qualifiers["layer"] for m in res.metrics
              if m.name == "randomization_spearman" and m.qualifiers["method"] == "saliency"]
    assert layers == ["fc", "c3", "c2", "c1"]  # cascading from the top
    names = [a.path.rsplit("/", 1)[1] for a in res.artifacts]
    assert {"randomization.png", "deletion_insertion.png", "summary_table.png", "maps_01.png"} <= set(names)


def test_cascade_randomizes_from_the_top_and_leaves_the_model_alone(camnet):
    before = {k: v.clone() for k, v in camnet.state_dict().items()}
    seen = []
    for layer, net in cascade(camnet, torch.Generator().manual_seed(0)):
        changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
        seen.append((layer, sorted({k.rpartition(".")[0] for k in changed})))
    assert [s[0] for s in seen] == ["fc", "c3", "c2", "c1"]
    assert seen[0][1] == ["fc"] and seen[-1][1] == ["c1", "c2", "c3", "fc"]
    assert all(torch.equal(v, before[k]) for k, v in camnet.state_dict().items())


def test_randomization_layers_caps_the_steps_with_maps(camnet, data):
    res = _run(_audit_model(camnet), data, methods=["saliency"], randomization_layers=2)
    layers = [m.qualifiers["layer"] for m in res.metrics if m.name == "randomization_spearman"]
    assert layers == ["fc", "c1"]  # the top and the last step; c3 and c2 randomized in between
    assert set(res.data["randomization"]["saliency"]) == {"fc", "c1"}


def test_norm_layers_join_the_layer_before():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.rand(1, 3, 8, 8))
    assert [g for g, _ in layer_groups(net)] == ["0", "3", "5"]
    assert layer_groups(net)[0][1] == ["0.weight", "0.bias", "1.weight", "1.bias"]


# ----------------------------------------------------------------------------- faithfulness
class _CornerNet(nn.Module):
    """Class 0's logit is 8 x (mean of the top-left 4x4 corner of the red channel)."""

    def forward(self, x):
        s = x[:, 0, :4, :4].mean((1, 2)) * 8
        return torch.stack([s, torch.zeros_like(s) + 2], 1)


def test_deletion_and_insertion_reward_the_true_evidence():
    net = _CornerNet()
    x = torch.zeros(3, 3, 16, 16)
    x[:, 0, :4, :4] = 1
    t = torch.zeros(3, dtype=torch.long)
    good = torch.zeros(3, 16, 16)
    good[:, :4, :4] = 1
    rnd = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    d_good, i_good = deletion_insertion(net, x, t, good, steps=16)
    d_bad, i_bad = deletion_insertion(net, x, t, -good, steps=16)
    d_rnd, i_rnd = deletion_insertion(net, x, t, rnd, steps=16)
    assert d_good.shape == (3, 17)
    assert torch.allclose(d_good[:, 0], d_good.new_tensor(torch.sigmoid(torch.tensor(6.0)).item()).expand(3), atol=1e-5)
    assert (auc(d_good) < auc(d_rnd)).all() and (auc(d_rnd) < auc(d_bad)).all()
    assert (auc(i_good) > auc(i_rnd)).all() and (auc(i_rnd) > auc(i_bad)).all()


@pytest.mark.slow
def test_check_reports_aucs_against_random(camnet, data):
    model = _audit_model(camnet)
    res = _run(model, data)
    for m in METHOD_NAMES + ["random"]:
        assert 0 <= _metric(res, "deletion_auc", method=m) <= 1
        assert 0 <= _metric(res, "insertion_auc", method=m) <= 1
    for m in METHOD_NAMES:
        beats = _metric(res, "beats_random", method=m)
        flagged = ("attribution.not_better_than_random", m) in _codes(res)
        assert beats == float(not flagged)
    wrong = int((model.logits(data.x).argmax(1) != data.y).sum())
    assert _metric(res, "images", group="all") == len(res.data["images"]) == 4 * 2 + min(wrong, 1)
    assert 0 <= _metric(res, "ig_convergence_delta", method="integrated_gradients", steps=8)
    timings = res.data["timings"]  # one flat dict of seconds, no other timing keys
    assert {"maps", "randomization", "deletion_insertion", "report"} <= set(timings)
    assert all(isinstance(v, float) for v in timings.values())
    assert not {"timing_s", "phase_s", "timings_s", "timing"} & set(res.data)


# ----------------------------------------------------------------------------- awkward models
@pytest.mark.parametrize("inplace,shared", [(True, False), (False, True), (True, True)])
def test_inplace_and_reused_relus_give_the_clean_models_maps(camnet, inplace, shared):
    clean = _audit_model(camnet)
    odd_net = CamNet(inplace=inplace, shared=shared)
    odd_net.load_state_dict(camnet.state_dict())
    odd = _audit_model(odd_net.eval())
    x, _ = make_patterns(2, seed=5)
    t = clean(x).argmax(1)
    fixed, changes = hook_safe_copy(odd, x[:1])
    assert fixed is not odd and changes
    assert (any("non-inplace" in c for c in changes) == inplace) and (any("un-shared" in c for c in changes) == shared)
    assert hook_safe_copy(clean, x[:1]) == (clean, [])
    for m in (m for m in METHODS if m.kind == HOOK):
        ref, _ = m.attribute(clean, x, t, AttrSettings(layer=last_conv(clean)[1]))
        got, _ = m.attribute(fixed, x, t, AttrSettings(layer=last_conv(fixed)[1]))
        assert torch.allclose(ref, got, atol=1e-5), m.name


@pytest.mark.slow
def test_check_runs_hook_methods_on_a_copy_and_says_so(camnet, data):
    odd_net = CamNet(inplace=True, shared=True)
    odd_net.load_state_dict(camnet.state_dict())
    methods = ["grad_cam", "guided_backprop"]
    res = _run(_audit_model(odd_net.eval()), data, methods=methods)
    ref = _run(_audit_model(camnet), data, methods=methods)
    copied = [f for f in res.findings if f.code == "attribution.model_copied"]
    assert len(copied) == 1 and "non-inplace" in copied[0].message and "un-shared" in copied[0].message
    assert not any(f.code == "attribution.method_failed" for f in res.findings)
    # the same numbers as the clean model: maps, randomization and deletion/insertion
    assert len(res.metrics) == len(ref.metrics)
    for a, b in zip(res.metrics, ref.metrics):
        assert a.name == b.name and a.qualifiers == b.qualifiers and a.value == pytest.approx(b.value, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_compiled_models_skip_hook_methods_with_a_reason(camnet, data, fmt):
    net = compile_as(camnet, fmt, torch.rand(2, 3, 16, 16), dynamic_batch=True)
    net = net if fmt == "torchscript" else net.module()
    res = _run(_audit_model(net, fmt), data)
    skip = [f for f in res.findings if f.code == "attribution.hooks_unsupported"]
    assert len(skip) == 1 and fmt in skip[0].message
    assert skip[0].extra["methods"] == ["grad_cam", "guided_backprop"]
    assert not any(f.code == "attribution.method_failed" for f in res.findings)
    for m in ("saliency", "integrated_gradients", "smoothgrad", "occlusion"):
        _metric(res, "randomization_similarity", method=m)
        _metric(res, "deletion_auc", method=m)
    assert not [m for m in res.metrics if m.qualifiers.get("method") in ("grad_cam", "guided_backprop")]




def test_unusable_gradients_fall_back_to_occlusion(camnet, data):
    res = _run(_audit_model(NoGradNet(camnet)), data)
    assert any(f.code == "attribution.gradients_unusable" and f.severity == "warn" for f in res.findings)
    assert {m.qualifiers.get("method") for m in res.metrics if m.name == "deletion_auc"} == {"occlusion", "random"}


# ----------------------------------------------------------------------------- images, determinism, memory
def test_adversarial_examples_sit_next_to_their_originals(camnet, data):
    model = _audit_model(camnet)
    xo = data.x[:3]
    adv = AdversarialExamples(x=xo, x_adv=(xo + 0.1).clamp(0, 1), y=data.y[:3], pred_adv=data.y[:3], norm="linf",
                              epsilon=torch.full((3,), 8 / 255), ids=list(data.ids[:3]))
    cfg = AuditConfig(checks=["attribution"], check_options={"attribution": {**FAST, "methods": ["saliency"]}})
    ctx = Context(model=model, data=data, config=cfg, seed=0, logits=model.logits(data.x))
    ctx = ctx.scoped("attribution", declared={})
    ctx.shared.published["adversarial.examples"] = adv
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = AttributionCheck(cfg.options_for("attribution")).run(ctx)
    groups = [r["group"] for r in res.data["images"]]
    assert groups[-4:] == ["adversarial-original", "adversarial"] * 2
    assert _metric(res, "images", group="adversarial") == 4


@pytest.mark.slow
def test_same_seed_same_numbers_other_seed_other_images(camnet, data):
    model = _audit_model(camnet)
    a, b = _run(model, data, seed=3), _run(model, data, seed=3)
    assert [m.to_dict() for m in a.metrics] == [m.to_dict() for m in b.metrics]
    assert a.data["images"] == b.data["images"]
    c = _run(model, data, seed=4, methods=["saliency"])
    assert [r["id"] for r in c.data["images"]] != [r["id"] for r in a.data["images"]]


def test_out_of_memory_halves_and_retries():
    calls = []

    def fn(b):
        calls.append(b)
        if b > 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return b

    s = AttrSettings()
    assert with_oom_retry(fn, 64, s) == 4 and calls == [64, 32, 16, 8, 4] and s.oom_retries == [32, 16, 8, 4]
    with pytest.raises(ValueError):
        with_oom_retry(lambda b: (_ for _ in ()).throw(ValueError("not memory")), 8)


def test_internal_batch_follows_the_memory_budget(camnet):
    x = torch.rand(1, 3, 16, 16)
    small, big = choose_internal_batch(camnet, x, 0.5), choose_internal_batch(camnet, x, 64)
    assert 1 <= small < big <= 4096


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import rankdata, spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (200,), generator=g).float()
    b = a + torch.randint(0, 3, (200,), generator=g).float()
    assert torch.allclose(average_ranks(a), torch.tensor(rankdata(a.numpy()) - 1))
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy())[0], abs=1e-9)
    assert spearman(a, torch.ones(200)) == 0.0


def test_unknown_method_is_a_config_error():
    from audit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method"):
        AuditConfig(checks=["attribution"], check_options={"attribution": {"methods": ["lime"]}})


def test_a_method_is_one_registered_class_and_a_name_is_taken_once():
    class Lime(AttrMethod):
        name, title = "lime", "LIME"

    class Saliency2(AttrMethod):
        name = "saliency"

    reg = MethodRegistry("probes.attribution.methods", ["saliency.Saliency"])
    reg.register(Lime)
    assert reg.names() == ["saliency", "lime"] and reg.get("lime").title == "LIME"
    with pytest.raises(ValueError, match="already registered"):
        reg.register(Saliency2)
    with pytest.raises(KeyError, match="known: saliency, lime"):
        reg.get("shap")
    assert AttributionCheck.Options().methods == METHOD_NAMES == [m.name for m in METHODS]


def test_no_data_means_no_images():
    model = _audit_model(CamNet().eval())
    cfg = AuditConfig(checks=["attribution"])
    ctx = Context(model=model, data=None, config=cfg).scoped("attribution")
    res = AttributionCheck().run(ctx)
    assert [f.code for f in res.findings] == ["attribution.no_images"] and res.summary == "no images"


def _same(a, b) -> bool:
    """Records equal field by field (tensors exactly)."""
    import dataclasses

    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_unit_records_survive_a_checkpoint(tmp_path, data):
    """Every unit's record is a @record that --resume loads back as it was (no pickled code)."""
    from audit.checkpoint import Checkpoints

    model = _audit_model(CamNet().eval())
    cfg = AuditConfig(checks=["attribution"], check_options={"attribution": FAST})
    ctx = Context(model=model, data=data, config=cfg, logits=model.logits(data.x)).scoped("attribution")
    check, store = AttributionCheck(cfg.options_for("attribution")), Checkpoints(tmp_path)
    units = check.units(ctx)
    assert [u.tag for u in units] == ["methods"] * len(METHODS) + ["randomization"] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for u in units:
            rec = check.compute(u, ctx, torch.Generator())
            store.save_unit("attribution", u.key, "fp", rec)
            assert _same(store.load_unit("attribution", u.key, "fp"), rec), u.key


class _Bowl(nn.Module):
    """Logit 0 = -Σ (x - 0.5)², logit 1 = 0: at x = 0.5 the gradient of logit 0 is zero and
    flips sign with any noise around it."""

    def forward(self, x):
        z = -((x - 0.5) ** 2).flatten(1).sum(1)
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_smoothgrad_is_the_magnitude_of_the_mean_gradient():
    """Smilkov et al. average the signed gradient: at the bowl's centre noisy gradients cancel
    (|mean g| ≈ 0), where mean |g| would read about 2·σ·√(2/π) per channel."""
    x = torch.full((1, 3, 8, 8), 0.5)
    s = AttrSettings(smoothgrad_samples=400, smoothgrad_noise=0.2)
    m, _ = METHODS.get("smoothgrad").attribute(_Bowl(), x, torch.tensor([0]), s)
    abs_mean = 3 * 2 * 0.2 * (2 / torch.pi) ** 0.5  # summed over 3 channels
    assert float(m.mean()) < 0.25 * abs_mean, float(m.mean())


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class _TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(_Block(8), _Block(8))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.layer1(F.relu(self.stem(x)))).flatten(1))


def test_grad_cam_layer_is_the_last_block_output_not_a_conv_inside_the_residual_branch():
    from probes.layers import last_spatial_block

    net = _TinyResNet().eval()
    assert last_conv(net)[0] == "layer1.1.conv2"  # what the old rule took: before the skip-add
    assert last_spatial_block(net, torch.rand(2, 3, 8, 8))[0] == "layer1"
    model = AuditModel(net, ModelSpec(input_shape=(3, 8, 8), class_names=list("abcd"))).finalize()
    assert last_spatial_block(model, torch.rand(2, 3, 8, 8))[0] == "net.layer1"


def test_integrated_gradients_completeness_is_pooled_over_images():
    """One image whose f(x) equals f(baseline) must not dominate: the pooled error is the sum
    of errors over the sum of |f(x) - f(baseline)|."""
    from audit.results import CheckResult
    from probes.attribution.summary import ig_delta

    class Const(nn.Module):  # the target logit is x[0, 0, 0] (baseline 0)
        def forward(self, x):
            v = x[:, 0, 0, 0]
            return torch.stack([v, -v], 1)

    model = AuditModel(Const(), ModelSpec(input_shape=(1, 2, 2), class_names=["a", "b"])).finalize()
    x = torch.zeros(3, 1, 2, 2)
    x[0, 0, 0, 0], x[1, 0, 0, 0], x[2, 0, 0, 0] = 1.0, 1.0, 1e-7  # the third: f(x) ≈ f(baseline)
    res = CheckResult("attribution")
    ig_delta(res, model, x, torch.zeros(3, dtype=torch.long), torch.tensor([0.01, 0.01, 0.01]), steps=8, warn=0.1)
    rel = next(m.value for m in res.metrics if m.name == "ig_convergence_delta")
    assert rel == pytest.approx(0.03 / 2.0, rel=1e-3)  # a mean of ratios would be ~3,000


@pytest.mark.slow
def test_randomization_verdicts_are_the_same_for_every_seed(camnet):
    """Five seeds (different images, cascade draws and bootstrap resamples) at the default 32
    sanity images: every method gets the same verdict under every seed, Guided Backprop
    failing and Saliency and Grad-CAM passing (Adebayo et al. 2018's pattern); each similarity
    carries its interval, and the verdict is the one the interval gives."""
    model = _audit_model(camnet)
    x, y = make_patterns(8, seed=11)
    data32 = AuditData(x, y, list(PATTERNS), [f"i{k}" for k in range(len(x))])
    methods = ["saliency", "grad_cam", "guided_backprop"]
    seen = {m: set() for m in methods}
    for seed in range(5):
        res = _run(model, data32, seed=seed, per_class=8, sanity_images=32, faithfulness_images=0, methods=methods)
        for m in methods:
            met = next(r for r in res.metrics if r.name == "randomization_similarity" and r.qualifiers["method"] == m)
            assert met.n is None and met.has_interval and met.ci_low <= met.value <= met.ci_high
            verdict = {1.0: "pass", 0.0: "fail", None: "inconclusive"}[_metric(res, "passes_randomization", method=m)]
            expect = "pass" if met.ci_high <= 0.5 else "fail" if met.ci_low > 0.5 else "inconclusive"
            assert verdict == expect, (m, met)
            seen[m].add(verdict)
    assert seen == {"saliency": {"pass"}, "grad_cam": {"pass"}, "guided_backprop": {"fail"}}, seen


@pytest.mark.slow
def test_demo_randomization_verdicts_are_the_same_for_every_seed(tmp_path):
    """The shipped demo model at the demo's own settings (8 sanity images): each of five seeds
    draws other demo images, cascade weights and bootstrap resamples, and every method gets
    the same verdict under every seed, Guided Backprop failing and the others passing."""
    from audit.demo.run import load_demo

    seen = {}
    for seed in range(5):
        cfg = AuditConfig(seed=seed, checks=["attribution"],
                          check_options={"attribution": {"faithfulness_images": 0}})
        model, data, cfg = load_demo(tmp_path / str(seed), cfg, log=lambda *a: None)
        assert cfg.check_options["attribution"]["sanity_images"] == 8  # the demo's setting
        res = run_audit(model, data, cfg).check("attribution")
        for met in (m for m in res.metrics if m.name == "passes_randomization"):
            seen.setdefault(met.qualifiers["method"], set()).add(met.value)
    assert seen.pop("guided_backprop") == {0.0}, seen
    assert seen and all(v == {1.0} for v in seen.values()), seen


def test_beats_random_needs_a_paired_win_beyond_the_random_orders_spread():
    """On 10 images whose class lives in the top-left corner: the map of the corner beats the
    random orders (Wilcoxon over images), a random map does not, and a map pointing away from
    the corner is flagged; deleted pixels become the blurred image by default."""
    from audit.results import CheckResult
    from probes.attribution.summary import faithfulness

    class Corner(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _CornerNet()
            self.spec = ModelSpec(input_shape=(3, 16, 16), class_names=["a", "b"])

        def forward(self, x):
            return self.net(x)

    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.rand(10, 3, 16, 16, generator=g)
    x[:, 0, :4, :4] = 1
    t = torch.zeros(10, dtype=torch.long)
    good = torch.zeros(10, 16, 16)
    good[:, :4, :4] = 1
    maps = {"good": good + 0.01 * torch.rand(10, 16, 16, generator=g), "noise": torch.rand(10, 16, 16, generator=g),
            "away": -good}
    methods = [type(n, (AttrMethod,), {"name": n, "title": n})() for n in maps]
    res = CheckResult("attribution")
    out = faithfulness(res, methods, maps, x, t, Corner(), generator=torch.Generator().manual_seed(1), steps=16,
                       batch_size=64)
    assert out["beats"] == {"good": True, "noise": False, "away": False}
    assert out["tests"]["good"]["deletion_p"] < 0.01 and out["settings"]["random_orders"] == 8
    flagged = sorted(f.extra["method"] for f in res.findings if f.code == "attribution.not_better_than_random")
    assert flagged == ["away", "noise"]


@pytest.mark.slow
def test_dynamic_batch_export_is_unflattened_and_hooked(camnet, data, tmp_path):
    """A .pt2 archive with a dynamic batch loads as torch.export.unflatten's module tree:
    Grad-CAM runs on a named layer, with the same maps as on the original module; Guided
    Backprop, which needs nn.ReLU modules, is skipped with the reason and what to ship."""
    import audit
    from tests.tinymodels import save_compiled

    path = tmp_path / "camnet.pt2"
    save_compiled(compile_as(camnet, "export", torch.rand(2, 3, 16, 16), dynamic_batch=True), path)
    model = audit.load_model(path, class_names=list(PATTERNS), device="cpu")
    res = _run(model, data, methods=["saliency", "grad_cam", "guided_backprop"])
    ref = _run(_audit_model(camnet), data, methods=["saliency", "grad_cam", "guided_backprop"])
    assert res.data["grad_cam_layer"] == ref.data["grad_cam_layer"]
    got = _metric(res, "randomization_similarity", method="grad_cam")
    assert got == pytest.approx(_metric(ref, "randomization_similarity", method="grad_cam"), abs=0.05)
    skip = [f for f in res.findings if f.code == "attribution.hooks_unsupported"]
    assert [f.extra["methods"] for f in skip] == [["guided_backprop"]] and "nn.ReLU" in skip[0].message


class _ViTBlock(nn.Module):
    """A pre-norm transformer block with timm's names (norm1, attn, norm2, mlp)."""

    def __init__(self, d: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class _TinyViT(nn.Module):
    """ViT-style: 4×4-pixel patches of a 16×16 image as 16 tokens after a class token, two
    blocks, a final norm; the head reads the class token (``pool="cls"``) or the patch tokens'
    mean (``pool="mean"``)."""

    def __init__(self, d: int = 8, pool: str = "cls"):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        self.blocks = nn.Sequential(_ViTBlock(d), _ViTBlock(d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 4)
        self.pool = pool

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = self.norm(self.blocks(torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1) + self.pos))
        return self.head(t[:, 0] if self.pool == "cls" else t[:, 1:].mean(1))


def test_grad_cam_on_a_vit_uses_its_tokens_on_the_patch_grid():
    """A ViT's Grad-CAM layer is a token layer reshaped to the patch grid with the class token
    dropped: the last one the class score depends on through the patch tokens (the class-token
    ViT: the last block's norm1, the input of its attention; a mean-pooling one: the final
    norm), never the patch embedding (the last 4-D map)."""
    from probes.layers import TokenGrid, last_spatial_block

    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    name, _, grid = last_spatial_block(_TinyViT(pool="cls").eval(), x)
    assert (name, grid) == ("blocks.1.norm1", TokenGrid(1, 4, 4))
    assert last_spatial_block(_TinyViT(pool="mean").eval(), x)[0::2] == ("norm", TokenGrid(1, 4, 4))
    assert last_spatial_block(_TinyResNet().eval(), torch.rand(2, 3, 8, 8))[2] is None  # CNNs: maps


def test_grad_cam_on_tokens_lights_the_patch_that_raises_the_score():
    """Blocks made identity, tokens [s, -s, 0, ...] with s a patch's mean brightness − 0.5, the
    head reading the patch tokens' mean along [1, −1, 0, ...]: only the one bright patch (grid
    row 1, column 3) raises class 0. The map must light exactly that patch (a transposed grid or
    an undropped class token would light another)."""
    from probes.attribution.methods.grad_cam import GradCam
    from probes.layers import last_spatial_block

    vit = _TinyViT(d=4, pool="mean").eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.zero_()
        for b in vit.blocks:
            b.norm1.weight.fill_(1), b.norm2.weight.fill_(1)
        vit.norm.weight.fill_(1)
        vit.patch_embed.weight[0].fill_(1 / 48), vit.patch_embed.weight[1].fill_(-1 / 48)
        vit.patch_embed.bias[:2] = torch.tensor([-0.5, 0.5])
        vit.head.weight[0, :2] = torch.tensor([1.0, -1.0])
    x = torch.full((1, 3, 16, 16), 0.2)
    x[:, :, 4:8, 12:16] = 0.9
    name, layer, grid = last_spatial_block(vit, x)
    cam = GradCam().attribute(vit, x, torch.tensor([0]), AttrSettings(layer=layer, tokens=grid))[0][0]
    assert cam.shape == (16, 16)
    r, c = divmod(int(cam.argmax()), 16)
    assert 4 <= r < 8 and 12 <= c < 16, (r, c)
    assert float(cam[:, :8].abs().max()) == 0 and float(cam[12:].abs().max()) == 0  # patches two away: dark


def test_attribution_check_runs_grad_cam_on_a_vit(data):
    x, y = data.x, data.y
    model = AuditModel(_TinyViT().eval(), ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize()
    res = _run(model, data, methods=["grad_cam", "saliency"])
    assert res.data["grad_cam_layer"] == "net.blocks.1.norm1"
    assert "4×4 patch grid, 1 leading token(s) dropped" in res.data["grad_cam_tokens"]
    assert not [f for f in res.findings if f.code == "attribution.no_conv_layer"]
    caption = next(a.caption for a in res.artifacts if a.path.endswith("maps_01.png"))
    assert "Grad-CAM on layer net.blocks.1.norm1 (transformer tokens" in caption
