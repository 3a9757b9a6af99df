"""Tests for probes/class_viz/ (check, optimize, param): the pictures make a trained model
confident of their class, are reproducible from the seed, and come at the model's input size."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from audit.model import AuditModel, ModelSpec
from audit.runner import run_audit
from probes.class_viz.param import FourierImage, random_views, to_input_size
from tests.tinymodels import PATTERNS, train_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model(one_thread):
    net = train_tiny(seed=1)  # trained here, on one thread (conftest's session model trains on two)
    return AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=list(PATTERNS))).finalize()


def _viz(model, seed=0, **opts):
    opts.setdefault("steps", 64)
    r = run_audit(model, None, {"audit": {"checks": ["class_viz"], "seed": seed}, "checks": {"class_viz": opts}})
    c = r.check("class_viz")
    assert c.error is None, c.data.get("traceback")
    return r, c


def _published(model, seed=0, **opts):
    """Run class_viz through the runner and catch what it publishes."""
    from audit.runner import Context

    captured = {}
    orig = Context.publish

    def spy(self, name, value):
        captured[name] = value
        orig(self, name, value)

    Context.publish = spy
    try:
        _, c = _viz(model, seed, **opts)
    finally:
        Context.publish = orig
    return captured["class_viz.images"], c


def test_target_class_reaches_high_confidence(tiny_model):
    pub, c = _published(tiny_model, steps=256)  # the default number of steps
    conf = {m.qualifiers["class"]: m.value for m in c.metrics if m.name == "target_confidence"}
    assert set(conf) == set(PATTERNS)
    assert min(conf.values()) > 0.9, conf
    assert all(m.value == 1.0 for m in c.metrics if m.name == "target_top1")
    # the published pictures really are classified as their class (recomputed here)
    with torch.no_grad():
        pred = tiny_model(pub.images).argmax(1)
    assert pred.tolist() == pub.classes == [0, 1, 2, 3]
    # a random-noise start is not already confident: the optimization did the work
    with torch.no_grad():
        noise = torch.sigmoid(0.01 * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
        p0 = tiny_model(noise).softmax(1)[torch.arange(4), torch.arange(4)]
    assert p0.max() < 0.9


def test_deterministic_for_a_seed(tiny_model):
    a, _ = _published(tiny_model, seed=3, steps=16)
    b, _ = _published(tiny_model, seed=3, steps=16)
    c, _ = _published(tiny_model, seed=4, steps=16)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images, atol=1e-3)


def test_gallery_top3_and_larger_image(tiny_model):
    pub, c = _published(tiny_model, steps=24, image_size=32, classes=["checker", "blob"], seeds=2, diversity=0.5)
    assert pub.images.shape == (4, 3, 16, 16)  # published at the model's input size
    assert pub.classes == [2, 2, 3, 3] and pub.seeds == [0, 1, 0, 1]
    assert not torch.allclose(pub.images[0], pub.images[1], atol=1e-2)  # two seeds, two pictures
    recs = c.data["pictures"]
    assert len(recs) == 4 and all(len(r["top3"]) == 3 for r in recs)
    assert all(abs(sum(p for _, p in r["top3"]) - 1) < 1 and r["top3"][0][1] >= r["top3"][1][1] for r in recs)
    assert c.data["throughput"]["image_hw"] == [32, 32] and c.data["throughput"]["image_steps"] == 4 * 24
    assert set(c.data["timings"]) == {"classes"} and c.data["timings"]["classes"] > 0
    [art] = c.artifacts
    assert art.path.endswith("gallery.png") and art.data[:4] == b"\x89PNG"
    assert {m.qualifiers.get("class") for m in c.metrics if m.name == "target_confidence"} == {"checker", "blob"}


def test_no_gradient_is_an_info_finding():
    class Hard(nn.Module):  # one-hot of the argmax: no useful input gradient
        def forward(self, x):
            s = x.mean((2, 3))
            return nn.functional.one_hot(s.argmax(1), 3).float() * 5.0

    m = AuditModel(Hard(), ModelSpec(input_shape=(3, 8, 8), class_names=["a", "b", "c"])).finalize()
    _, c = _viz(m, steps=4)
    assert [f.code for f in c.findings] == ["class_viz.no_gradient"] and not c.artifacts


def test_bad_objective_is_a_config_error(tiny_model):
    from audit.errors import ConfigError

    with pytest.raises(ConfigError, match="objective"):  # before anything runs: `audit run` exits 4
        run_audit(tiny_model, None, {"audit": {"checks": ["class_viz"]}, "checks": {"class_viz": {"objective": "nope"}}})


def test_fourier_image_and_views():
    g = torch.Generator().manual_seed(0)
    img = FourierImage(2, 3, 24, 20, generator=g)
    x = img()
    assert x.shape == (2, 3, 24, 20) and x.min() >= 0 and x.max() <= 1
    # the initial picture is close to grey (small spectrum) and low-frequency weighted
    assert (x - 0.5).abs().max() < 0.1
    v1 = random_views(x, (12, 10), torch.Generator().manual_seed(1))
    v2 = random_views(x, (12, 10), torch.Generator().manual_seed(1))
    assert v1.shape == (2, 3, 12, 10) and torch.equal(v1, v2)
    assert to_input_size(x, (12, 10)).shape == (2, 3, 12, 10)
    # gradients reach the spectrum through the views
    random_views(img(), (12, 10), g).sum().backward()
    assert img.spectrum.grad is not None and img.spectrum.grad.abs().sum() > 0


def test_few_threads_for_small_work_restores_the_setting():
    from audit.batching import few_threads_for_small_work

    torch.set_num_threads(2)
    try:
        with few_threads_for_small_work(torch.device("cpu"), 10):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with few_threads_for_small_work(torch.device("cpu"), 1 << 30):  # big work keeps its threads
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_max_classes_one_and_bad_options(tiny_model):
    from audit.config import AuditConfig
    from audit.errors import ConfigError

    res = run_audit(tiny_model, None, AuditConfig(checks=["class_viz"],
                                                  check_options={"class_viz": {"max_classes": 1, "steps": 2}}))
    c = res.check("class_viz")
    assert c.status != "error", c.error
    assert len([m for m in c.metrics if m.name == "target_confidence"]) == 1
    with pytest.raises(ConfigError, match="max_classes = 0: must be from 1 to "):
        AuditConfig(checks=["class_viz"], check_options={"class_viz": {"max_classes": 0}})


def test_channel_objective_drives_its_channel(tiny_model):
    """channels = [...]: each picture excites its own channel more than the other channels'
    pictures do, and more than a grey image does."""
    from probes.class_viz.optimize import visualize
    from probes.layers import capture, default_layers

    layer = default_layers(tiny_model.net, 1)[0]
    chans = [3, 7, 12]
    pics = visualize(tiny_model, chans, steps=64, lr=0.05, image_hw=(16, 16),
                     generator=torch.Generator().manual_seed(0), channel_layer=layer)
    with capture(tiny_model.net, [layer]) as store, torch.no_grad():
        tiny_model(torch.cat([pics, torch.full((1, 3, 16, 16), 0.5)]))
    a = store[layer].float().flatten(2).mean(2)[:, chans]  # rows: pictures (+ grey), columns: channels
    for j in range(len(chans)):
        others = torch.cat([a[:j, j], a[j + 1:, j]])  # the other pictures and the grey image
        assert a[j, j] > others.max() + 0.2, a

    # through the check: one metric, record and gallery per channel
    _, c = _viz(tiny_model, channels=[3, 7], steps=32)
    acts = {m.qualifiers["channel"]: m.value for m in c.metrics if m.name == "channel_activation"}
    assert sorted(acts) == [3, 7]
    assert {m.qualifiers["layer"] for m in c.metrics if m.name == "channel_activation"} == {layer}
    assert "channels.png" in {x.path.rsplit("/", 1)[1] for x in c.artifacts}
    assert [r["channel"] for r in c.data["channels"]] == [3, 7]


def test_channel_options_are_checked(tiny_model):
    r = run_audit(tiny_model, None, {"audit": {"checks": ["class_viz"]},
                                     "checks": {"class_viz": {"steps": 2, "channels": [999]}}})
    assert "out of range" in r.check("class_viz").error
    r = run_audit(tiny_model, None, {"audit": {"checks": ["class_viz"]},
                                     "checks": {"class_viz": {"steps": 2, "channels": [0], "layer": "nope"}}})
    assert "not a module" in r.check("class_viz").error


def test_options_round_trip_and_records_survive_a_unit_checkpoint(tmp_path):
    import dataclasses

    from audit.checkpoint import Checkpoints
    from probes.class_viz import ClassVizCheck
    from probes.class_viz.check import ChannelPictures, ClassPictures

    o = ClassVizCheck.Options()
    assert ClassVizCheck.parse_options(dataclasses.asdict(o)) == o
    store = Checkpoints(tmp_path)
    recs = [ClassPictures(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 4, 4), torch.rand(2), torch.rand(2, 3),
                          torch.zeros(2, 3, dtype=torch.long), 0.5),
            ChannelPictures(torch.rand(1, 3, 8, 8), torch.rand(1), torch.zeros(1, dtype=torch.long), torch.rand(1), 0.1)]
    for i, rec in enumerate(recs):
        store.save_unit("class_viz", f"u:{i}", "fp", rec)
        back = store.load_unit("class_viz", f"u:{i}", "fp")
        assert type(back) is type(rec)
        for f in dataclasses.fields(rec):
            a, b = getattr(rec, f.name), getattr(back, f.name)
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_channel_pictures_of_a_dynamic_batch_export(tiny_model, tmp_path):
    """A .pt2 archive with a dynamic batch is unflattened into hookable modules: channel
    visualization runs on it as on the module it was exported from."""
    import audit
    from tests.tinymodels import compile_as, save_compiled

    path = tmp_path / "tiny.pt2"
    save_compiled(compile_as(tiny_model.net, "export", torch.rand(2, 3, 16, 16), dynamic_batch=True), path)
    model = audit.load_model(path, class_names=list(PATTERNS), device="cpu")
    _, c = _viz(model, channels=[3], steps=16)
    assert c.error is None, c.data.get("traceback")
    assert [m.qualifiers["channel"] for m in c.metrics if m.name == "channel_activation"] == [3]
    assert not [f for f in c.findings if "unsupported" in f.code]
