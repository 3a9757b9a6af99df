"""Models saved in train mode, in another dtype, or with prefixed state_dict keys: each saving
route gives its documented outcome (loaded with a note, flagged, or refused naming the fix)."""
import warnings

import pytest
import torch
import torch.nn as nn

from audit.errors import ModelLoadError
from audit.model import load_model
from tests.tinymodels import TinyNet

SHAPE = (3, 16, 16)


class ModeNet(nn.Module):
    """A small CNN with BatchNorm and/or Dropout (``layers``: ``bn``, ``dropout``, ``both``)."""

    def __init__(self, layers: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6) if layers in ("bn", "both") else nn.Identity()
        self.drop = nn.Dropout(0.5) if layers in ("dropout", "both") else nn.Identity()
        self.fc = nn.Linear(6 * 4, 4)

    def forward(self, x):
        h = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2).flatten(1)
        return self.fc(self.drop(h))


def _save(net: nn.Module, route: str, path):
    x = torch.rand(4, *SHAPE)
    if route == "traced":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BatchNorm's batch-size test in train mode: a TracerWarning
            torch.jit.save(torch.jit.trace(net, x, check_trace=False), str(path))
    elif route == "scripted":
        torch.jit.save(torch.jit.script(net), str(path))
    elif route == "exported":
        ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("b", min=2, max=1024)},))
        torch.export.save(ep, str(path))
    else:
        torch.save(net, path)


def _train_mode_net(layers: str) -> nn.Module:
    torch.manual_seed(0)
    net = ModeNet(layers)
    with torch.no_grad():  # running statistics unlike any batch's: batch dependence is visible
        net(torch.rand(8, *SHAPE) * 3)
    return net.train()


# route -> layers -> "ok" (eval applied, deterministic), "stochastic" (flagged), "refused"
OUTCOMES = {
    "pickled": {"bn": "ok", "dropout": "ok", "both": "ok"},
    "scripted": {"bn": "ok", "dropout": "ok", "both": "ok"},
    "traced": {"bn": "refused", "dropout": "stochastic", "both": "refused"},
    "exported": {"bn": "refused", "dropout": "stochastic", "both": "refused"},
}


@pytest.mark.parametrize("route", list(OUTCOMES))
@pytest.mark.parametrize("layers", ["bn", "dropout", "both"])
def test_train_mode_model_by_saving_route(route, layers, tmp_path):
    net = _train_mode_net(layers)
    path = tmp_path / ("m.pt2" if route == "exported" else "m.pt")
    _save(net, route, path)
    outcome = OUTCOMES[route][layers]
    if outcome == "refused":
        with pytest.raises(ModelLoadError, match=r"depends on the other images in its batch.*re-export the model in "
                                                 r"eval mode \(model.eval\(\) before torch.jit.trace/torch.export\)"):
            load_model(path, trust=True, input_size="3x16x16", device="cpu")
        return
    model = load_model(path, trust=True, input_size="3x16x16", device="cpu")
    info = model.describe()
    assert info["stochastic"] is (outcome == "stochastic")
    if route in ("pickled", "scripted"):
        assert info["saved_in_train_mode"] is True
        assert any("saved in train mode; eval() was applied" in n for n in info["adaptations"])
    x = torch.rand(10, *SHAPE, generator=torch.Generator().manual_seed(1))
    if outcome == "ok":  # numbers never depend on --batch-size
        torch.testing.assert_close(model.logits(x, batch_size=1), model.logits(x, batch_size=7))
        net.eval()
        with torch.no_grad():
            torch.testing.assert_close(model.logits(x), net(x), rtol=1e-4, atol=1e-5)
    else:
        assert any("outputs are random" in n for n in info["adaptations"])


def test_eval_mode_models_are_neither_refused_nor_flagged(tmp_path):
    net = _train_mode_net("both").eval()
    for route in ("traced", "exported"):
        path = tmp_path / f"{route}.pt"
        _save(net, route, path)
        info = load_model(path, input_size="3x16x16", device="cpu").describe()
        assert info["stochastic"] is False and not info.get("saved_in_train_mode")


def test_batch_dependence_found_when_the_shape_comes_from_the_data(tmp_path):
    path = tmp_path / "m.pt"
    _save(_train_mode_net("bn"), "traced", path)
    model = load_model(path, device="cpu")  # no input size: finalized later, by the runner
    with pytest.raises(ModelLoadError, match="re-export the model in eval mode"):
        model.finalize(SHAPE, "data")


# ----------------------------------------------------------------------------- dtypes
def _reference() -> TinyNet:
    torch.manual_seed(3)
    return TinyNet().eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("route", ["pickled", "state_dict", "torchscript"])
def test_models_in_other_dtypes_run(dtype, route, tmp_path):
    ref = _reference()
    x = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ref(x)
    net = TinyNet()
    net.load_state_dict(ref.state_dict())
    net = net.to(dtype).eval()
    path = tmp_path / "m.pt"
    kw = {}
    if route == "pickled":
        torch.save(net, path)
        kw["trust"] = True
    elif route == "state_dict":
        torch.save(net.state_dict(), path)
        kw["arch"] = "tinynet"
    else:
        torch.jit.save(torch.jit.trace(net, x.to(dtype)), str(path))
    model = load_model(path, input_size="3x16x16", device="cpu", **kw)
    info = model.describe()
    assert dtype_name(dtype) in info["weights_dtype"]
    assert info["adaptations"]
    got = model.logits(x)
    assert got.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    xg = x[:2].clone().requires_grad_(True)  # gradients reach the pixels (attacks, attributions)
    model(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def dtype_name(dt):
    return str(dt).replace("torch.", "")


# ----------------------------------------------------------------------------- state_dict prefixes
@pytest.mark.parametrize("prefix", ["model.", "module.", "net.", "_orig_mod.", "module._orig_mod.", "module.model.",
                                    "_orig_mod.net."])
def test_state_dict_prefixes_are_removed(prefix, tmp_path):
    ref = _reference()
    path = tmp_path / "sd.pt"
    torch.save({prefix + k: v for k, v in ref.state_dict().items()}, path)
    model = load_model(path, arch="tinynet", input_size="3x16x16", device="cpu")
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), ref(x))


def test_lightning_checkpoint_with_resnet18(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(num_classes=10).eval()
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.2.0",
            "state_dict": {"model." + k: v for k, v in net.state_dict().items()} | {"criterion.weight": torch.ones(10)},
            "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}}
    path = tmp_path / "epoch=3.ckpt"
    torch.save(ckpt, path)
    model = load_model(path, arch="resnet18", input_size="3x32x32", device="cpu")
    assert any("'model.'" in n and "1 keys outside it were ignored" in n for n in model.adaptations)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(x), net(x), rtol=1e-4, atol=1e-4)


def test_prefixed_weights_of_another_network_name_the_prefix_and_the_fix(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"model." + k: v for k, v in _reference().state_dict().items()}, path)
    with pytest.raises(ModelLoadError, match=r"after removing the prefix 'model\.'.*pass the --arch it was trained with"):
        load_model(path, arch="resnet18", input_size="3x16x16", device="cpu")
    torch.save({"encoder." + k.replace(".", "_"): v for k, v in _reference().state_dict().items()}, path)
    with pytest.raises(ModelLoadError, match=r"its keys all start with 'encoder\.'.*--arch it was trained with") as e:
        load_model(path, arch="tinynet", input_size="3x16x16", device="cpu")
    assert "\n" not in str(e.value)


class _Counter(nn.Module):
    """Random by a call counter, not torch's generator: flagged, never refused as batch-dependent."""

    def __init__(self):
        super().__init__()
        self.inner, self.k = TinyNet(), 0

    def forward(self, x):
        self.k += 1
        return self.inner(x) + 0.5 * (self.k % 3)


def test_randomness_outside_torchs_seed_is_flagged_not_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_Counter(), path)
    info = load_model(path, trust=True, input_size="3x16x16", device="cpu").describe()
    assert info["stochastic"] is True
