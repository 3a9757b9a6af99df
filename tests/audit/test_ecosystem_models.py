"""Models of the ecosystem's formats (tests/ecosystem.py builds them offline): a timm hub folder
and ``--arch timm:NAME`` with a state_dict, transformers folders (``save_pretrained``), ONNX
exports through onnx2torch, a PyTorch Lightning checkpoint. Each loads with its own
preprocessing and class names, its clean accuracy equals the one its own library's
preprocessing gives outside the project, and the whole battery runs on it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audit import load_data, load_model, run_audit
from audit.cli import main
from audit.errors import ExitCode, ModelLoadError
from audit.model import detect_format
from tests import ecosystem as eco
from tests.audit.test_demo_run import validate_result
from tests.fast_config import fast_config_dict
from tests.tinymodels import PATTERNS, TinyNet

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytest.importorskip("onnx2torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_thread):
    """Every model once per module: folder/file paths, and the trained networks."""
    d = tmp_path_factory.mktemp("eco")
    vit = eco.timm_vit()
    tiny = eco.tiny_net()
    return {
        "timm_vit": eco.save_timm_folder(vit, d / "timm-vit"),
        "timm_vit_net": vit,
        "timm_cnn_sd": eco.timm_cnn_state_dict(d / "test_resnet.pth"),
        "hf_vit": eco.save_hf_vit(d / "hf-vit"),
        "hf_resnet": eco.save_hf_resnet(d / "hf-resnet"),
        "onnx_dyn": eco.export_onnx(tiny, d / "dyn.onnx"),
        "onnx_flatten": eco.export_onnx(tiny, d / "flatten.onnx", dynamic_batch=False, batch=3),
        "onnx_fixed": eco.export_onnx(eco.reshape_net(tiny), d / "fixed.onnx", dynamic_batch=False, batch=3),
        "ckpt": eco.save_lightning_ckpt(tiny, d / "last.ckpt"),
        "tiny": tiny,
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Image folders of the patterns at 16x16 and 32x32 (the models' input sizes)."""
    d = tmp_path_factory.mktemp("eco-data")
    return {s: eco.write_folder(d / str(s), *eco.patterns(s, 6, seed=3)) for s in (16, 32)}


def _clean_accuracy(model, folder) -> float:
    data = load_data(folder, model=model)
    res = run_audit(model, data, {"audit": {"checks": ["clean"]}})
    return next(m.value for m in res.check("clean").metrics if m.name == "accuracy" and not m.qualifiers)


def _accuracy(preds, ys) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(ys)))


# ----------------------------------------------------------------------------- timm
def test_timm_folder_takes_its_preprocessing_and_label_names(models, tmp_path):
    m = load_model(models["timm_vit"], device="cpu")
    assert detect_format(models["timm_vit"]) == "timm" and m.info["format"] == "timm"
    assert m.info["arch"] == "timm:vit_tiny_patch16_224" and m.info["weights_file"] == "model.safetensors"
    assert m.class_names == list(PATTERNS) and m.spec.sources["class_names"] == "timm config"
    assert m.spec.input_shape == (3, 32, 32) and m.spec.mean == (0.5,) * 3 and m.spec.std == (0.5,) * 3
    assert (m.spec.resize_mode, m.spec.crop_pct, m.spec.interpolation) == ("shorter-crop", 1.0, "bicubic")
    # a pytorch_model.bin folder with another crop_pct, and flags over the config
    other = eco.save_timm_folder(models["timm_vit_net"], tmp_path / "bin", crop_pct=0.9, bin_weights=True)
    m2 = load_model(other, device="cpu", mean="0.4,0.4,0.4")
    assert m2.info["weights_file"] == "pytorch_model.bin" and m2.spec.crop_pct == 0.9
    assert m2.spec.mean == (0.4,) * 3 and m2.spec.sources["mean"] == "flag"
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ref = models["timm_vit_net"]((x - 0.5) / 0.5)
    assert torch.allclose(m(x), ref, atol=1e-5)


def test_grad_cam_reads_a_timm_vits_tokens(models):
    """timm's attention passes its keys through nn.Identity (q_norm / k_norm) as (N, heads, T, d)
    tensors: not a spatial map. Grad-CAM's layer is the last block's norm1 (transformers':
    layernorm_before), the input of its attention, on the 4x4 patch grid."""
    from probes.layers import TokenGrid, last_spatial_block

    name, _, grid = last_spatial_block(models["timm_vit_net"], torch.rand(2, 3, 32, 32))
    assert (name, grid) == ("blocks.1.norm1", TokenGrid(1, 4, 4))  # not attn.qkv, the fused projections
    hf = load_model(models["hf_vit"], device="cpu")
    name, _, grid = last_spatial_block(hf, torch.rand(2, 3, 32, 32))
    assert (name, grid) == ("net.vit.layers.1.layernorm_before", TokenGrid(1, 4, 4))


def test_arch_timm_builds_a_state_dict_with_timms_config(models):
    import timm

    m = load_model(models["timm_cnn_sd"], arch="timm:test_resnet", input_size="3x32x32", device="cpu")
    assert m.info["arch"] == "timm:test_resnet" and m.info["format"] == "state_dict"
    cfg = timm.data.resolve_data_config(model=timm.create_model("test_resnet"))
    assert m.spec.mean == tuple(cfg["mean"]) and m.spec.sources["mean"] == "timm config"
    assert (m.spec.crop_pct, m.spec.interpolation) == (cfg["crop_pct"], cfg["interpolation"])
    assert m.spec.input_shape == (3, 32, 32) and m.spec.sources["input_shape"] == "flag"
    net = timm.create_model("test_resnet", num_classes=4)
    net.load_state_dict(torch.load(models["timm_cnn_sd"], weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), net.eval()((x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1))
                                              / torch.tensor(cfg["std"]).view(1, 3, 1, 1)), atol=1e-5)


def test_arch_timm_with_an_imagenet_head_names_its_classes_by_wordnet_id(tmp_path):
    import timm

    p = tmp_path / "in1k.pth"
    torch.save(timm.create_model("test_resnet", num_classes=1000).state_dict(), p)
    m = load_model(p, arch="timm:test_resnet", device="cpu")
    assert m.class_names[:2] == ["n01440764", "n01443537"] and len(m.class_names) == 1000  # ImageNet's folders
    assert m.spec.input_shape == (3, 160, 160) and m.spec.sources["input_shape"] == "timm config"


def test_timm_accuracy_equals_timms_own_preprocessing(models, folders):
    import timm

    net = timm.create_model(f"local-dir:{models['timm_vit']}", pretrained=True).eval()  # timm's own loading
    tf = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
    imgs, ys = eco.read_folder(folders[32])
    with torch.no_grad():
        preds = net(torch.stack([tf(i) for i in imgs])).argmax(1)
    own = _accuracy(preds, ys)
    assert own > 0.5  # trained: the comparison means something
    assert _clean_accuracy(load_model(models["timm_vit"], device="cpu"), folders[32]) == pytest.approx(own, abs=1e-9)


# ----------------------------------------------------------------------------- transformers
def test_hf_folder_takes_its_processor_and_id2label(models):
    m = load_model(models["hf_vit"], device="cpu")
    assert detect_format(models["hf_vit"]) == "transformers" and m.info["format"] == "transformers"
    assert m.info["arch"] == "transformers:ViTForImageClassification"
    assert m.class_names == list(PATTERNS) and m.spec.sources["class_names"] == "hf config"
    assert m.spec.input_shape == (3, 32, 32) and m.spec.mean == (0.5,) * 3 and m.spec.std == (0.5,) * 3
    assert (m.spec.resize_mode, m.spec.crop_pct, m.spec.interpolation) == ("stretch", None, "bilinear")
    assert any("logits" in a for a in m.adaptations)


def test_hf_resnet_crop_fields_and_default_labels(models, tmp_path):
    m = load_model(models["hf_resnet"], device="cpu")
    assert m.class_names == list(PATTERNS)
    assert m.spec.input_shape == (3, 32, 32) and m.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    assert (m.spec.resize_mode, m.spec.crop_pct, m.spec.interpolation) == ("shorter-crop", 0.875, "bicubic")
    unnamed = load_model(eco.save_hf_resnet(tmp_path / "r", labels=False), device="cpu")
    assert unnamed.spec.class_names is None  # LABEL_0 ... are transformers' defaults, not names


def test_hf_folder_with_its_own_code_or_misfit_weights_is_refused(models, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = shutil.copytree(models["hf_resnet"], tmp_path / "custom")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "net.py").write_text("raise SystemExit('the folder's code ran')\n")
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "my_net",
                                                 "auto_map": {"AutoConfig": "net.Cfg",
                                                              "AutoModelForImageClassification": "net.Net"}}))
    with pytest.raises(ModelLoadError, match=r"own Python code \(auto_map\); it was not run.*--trust"):
        load_model(bad, device="cpu")
    misfit = shutil.copytree(models["hf_resnet"], tmp_path / "misfit")
    sd = load_file(misfit / "model.safetensors")
    save_file({k: v for k, v in sd.items() if not k.startswith("classifier")}, misfit / "model.safetensors")
    with pytest.raises(ModelLoadError, match="do not fit its config.*missing keys.*at random"):
        load_model(misfit, device="cpu")


def test_hf_accuracy_equals_the_image_processors(models, folders):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = models["hf_vit"]
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    net = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    imgs, ys = eco.read_folder(folders[32])
    with torch.no_grad():
        preds = net(**proc(imgs, return_tensors="pt")).logits.argmax(1)
    own = _accuracy(preds, ys)
    assert own > 0.5
    assert _clean_accuracy(load_model(folder, device="cpu"), folders[32]) == pytest.approx(own, abs=1e-9)


# ----------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("name,fixed", [("onnx_dyn", None), ("onnx_flatten", None), ("onnx_fixed", 3)])
def test_onnx_converts_and_matches_onnxruntime(models, name, fixed):
    """A dynamic batch; a batch fixed at 3 in the graph's input but not in its computation
    (Flatten): any batch size; fixed in a Reshape's constant: chunks of 3."""
    import onnxruntime as ort

    m = load_model(models[name], device="cpu")
    assert detect_format(models[name]) == "onnx" and m.info["format"] == "onnx"
    assert m.spec.input_shape == (3, 16, 16) and m.spec.sources["input_shape"] == "onnx" and m.fixed_batch == fixed
    assert m.info["onnxruntime_difference"] <= 1e-4
    assert any("runs at any batch size" in a for a in m.adaptations) == (name == "onnx_flatten")
    x = torch.rand(5, 3, 16, 16)  # not a multiple of a fixed batch: chunks, padded
    sess = ort.InferenceSession(str(models["onnx_dyn"]), providers=["CPUExecutionProvider"])
    ref = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    assert torch.allclose(m.logits(x, batch_size=5), ref, atol=1e-4)
    x.requires_grad_(True)
    m(x).sum().backward()  # gradients: every check runs
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_onnx_accuracy_equals_onnxruntimes(models, folders):
    import onnxruntime as ort

    imgs, ys = eco.read_folder(folders[16])
    x = np.stack([np.asarray(i, dtype=np.float32).transpose(2, 0, 1) / 255 for i in imgs])
    sess = ort.InferenceSession(str(models["onnx_dyn"]), providers=["CPUExecutionProvider"])
    own = _accuracy(sess.run(None, {"image": x})[0].argmax(1), ys)
    assert own > 0.5
    model = load_model(models["onnx_dyn"], device="cpu", class_names=list(PATTERNS))
    assert _clean_accuracy(model, folders[16]) == pytest.approx(own, abs=1e-9)


def test_onnx_custom_domain_is_refused_without_trust(models, tmp_path):
    import onnx

    proto = onnx.load(str(models["onnx_dyn"]))
    proto.graph.node.append(onnx.helper.make_node("Exfiltrate", ["image"], ["side"], domain="com.example.ops"))
    proto.opset_import.append(onnx.helper.make_opsetid("com.example.ops", 1))
    p = tmp_path / "custom.onnx"
    onnx.save(proto, str(p))
    with pytest.raises(ModelLoadError, match=r"custom domain\(s\) com\.example\.ops.*--trust"):
        load_model(p, device="cpu")


def test_onnx_conversion_that_differs_from_onnxruntime_is_refused(models, monkeypatch):
    import onnx2torch

    real = onnx2torch.convert

    class Off(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) + 1e-3

    monkeypatch.setattr(onnx2torch, "convert", lambda proto: Off(real(proto)))
    with pytest.raises(ModelLoadError, match="differs from onnxruntime"):
        load_model(models["onnx_dyn"], device="cpu")


# ----------------------------------------------------------------------------- Lightning
def test_lightning_checkpoint_loads_without_running_its_hyper_parameters(models, tmp_path):
    ran = tmp_path / "ran"
    ckpt = eco.save_lightning_ckpt(models["tiny"], tmp_path / "trip.ckpt", tripwire=ran)
    m = load_model(ckpt, arch="tinynet", input_size="3x16x16", device="cpu")
    assert not ran.exists()  # the pickled call in hyper_parameters never ran
    assert m.info["checkpoint"] == "lightning" and m.info["lightning_version"] == "2.4.0"
    notes = " ".join(m.adaptations)
    assert "'hyper_parameters'" in notes and "tests.ecosystem.TrainConfig" in notes and "--trust" in notes
    assert "prefix 'model.'" in notes
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(m(x), models["tiny"](x), atol=1e-6)
    trusted = load_model(ckpt, arch="tinynet", input_size="3x16x16", device="cpu", trust=True)
    assert ran.exists() and any("loaded with their code" in a for a in trusted.adaptations)


def test_checkpoint_without_state_dict_that_needs_code_is_still_refused(tmp_path):
    p = tmp_path / "module.pt"
    torch.save({"model": TinyNet(), "note": eco.TrainConfig()}, p)
    with pytest.raises(ModelLoadError, match="needs Python code.*--trust"):
        load_model(p, device="cpu")


def test_lightning_accuracy_equals_plain_pytorch(models, folders):
    imgs, ys = eco.read_folder(folders[16])
    x = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32).transpose(2, 0, 1) / 255) for i in imgs])
    with torch.no_grad():
        own = _accuracy(models["tiny"](x).argmax(1), ys)
    assert own > 0.5
    model = load_model(models["ckpt"], arch="tinynet", device="cpu", class_names=list(PATTERNS))
    assert _clean_accuracy(model, folders[16]) == pytest.approx(own, abs=1e-9)


# ----------------------------------------------------------------------------- nothing downloads
@pytest.mark.parametrize("given,expect", [
    ("timm/resnet18.a1_in1k", r"nothing is downloaded.*hf download timm/resnet18\.a1_in1k --local-dir DIR"
                              r".*save_for_hf"),
    ("google/vit-base-patch16-224", r"nothing is downloaded.*hf download google/vit-base-patch16-224.*save_pretrained"),
    ("hf-hub:timm/vit_small_patch16_224.augreg_in1k", r"hf download timm/vit_small_patch16_224\.augreg_in1k"),
])
def test_a_hub_id_is_an_error_saying_how_to_save_it(given, expect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=expect):
        load_model(given, device="cpu")


def test_missing_file_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("models/net.pt", device="cpu")


def test_arch_timm_without_weights_says_how_to_give_them(tmp_path, folders, capsys):
    with pytest.raises(ModelLoadError, match=r"give that file.*nothing is downloaded.*hf download timm/resnet18"):
        load_model(arch="timm:resnet18", device="cpu")
    rc = main(["run", "--arch", "timm:resnet18", "--data", str(folders[16]), "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == ExitCode.USAGE_ERROR and "nothing is downloaded" in capsys.readouterr().err


def test_a_folder_without_a_model_config_names_what_it_needs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ModelLoadError, match="timm's .*'architecture'.*transformers' .*'model_type'"):
        load_model(tmp_path, device="cpu")
    with pytest.raises(ModelLoadError, match="without a config.json"):
        load_model(tmp_path.parent, device="cpu")


# ----------------------------------------------------------------------------- the whole battery
BATTERY = {  # model, load options, data size, what Grad-CAM reads: "tokens", "map", or None (not run)
    "timm folder (ViT)": ("timm_vit", {}, 32, "tokens"),
    "--arch timm:test_resnet": ("timm_cnn_sd", {"arch": "timm:test_resnet", "input_size": "3x32x32"}, 32, "map"),
    "transformers folder (ViT)": ("hf_vit", {}, 32, "tokens"),
    "ONNX (batch fixed in the input only)": ("onnx_flatten", {"class_names": list(PATTERNS)}, 16, "map"),
    "ONNX (batch fixed in a reshape)": ("onnx_fixed", {"class_names": list(PATTERNS)}, 16, None),
    "Lightning checkpoint": ("ckpt", {"arch": "tinynet", "class_names": list(PATTERNS)}, 16, "map"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BATTERY))
def test_the_whole_battery_runs(models, folders, case):
    key, opts, size, cam = BATTERY[case]
    model = load_model(models[key], device="cpu", **opts)
    res = run_audit(model, load_data(folders[size], model=model), fast_config_dict())
    for c in res.checks:
        assert c.error is None, f"{c.name}: {c.error}"
    assert res.check("adversarial").metrics and res.check("clean").metrics
    att = res.check("attribution")
    methods = {m.qualifiers.get("method") for m in att.metrics}
    assert {"saliency", "integrated_gradients"} <= methods
    if cam is None:  # layer hooks would see one chunk of the fixed batch at a time: said, not run
        assert "grad_cam" not in methods and any(f.code == "attribution.hooks_unsupported" for f in att.findings)
    else:
        assert "grad_cam" in methods and att.data.get("grad_cam_layer")
        assert ("grad_cam_tokens" in att.data) == (cam == "tokens")


@pytest.mark.slow
def test_the_cli_audits_a_transformers_folder(models, folders, tmp_path):
    out = tmp_path / "out"
    rc = main(["run", str(models["hf_vit"]), "--data", str(folders[32]), "--out", str(out), "--quiet",
               "--device", "cpu", "--checks", "clean,attribution"])
    assert rc == ExitCode.OK
    res = json.loads((out / "results.json").read_text())
    validate_result(res)
    assert res["model"]["format"] == "transformers" and res["model"]["class_names"] == list(PATTERNS)
    assert res["model"]["spec_sources"]["mean"] == "hf config" and res["model"]["sha256"]


@pytest.mark.parametrize("side", [(40, 40), (36, 48)])
def test_timm_crop_pct_on_other_image_sizes_equals_timms_own_pipeline(models, tmp_path, side):
    """Images larger than the input (square and not): the folder's crop_pct 0.9 and bicubic
    resize are applied as timm's own create_transform applies them (shorter side to
    32 / 0.9, center crop 32), pixel for pixel, so the clean accuracy is timm's."""
    import timm
    from PIL import Image

    folder = eco.save_timm_folder(models["timm_vit_net"], tmp_path / "m", crop_pct=0.9)
    x, y = eco.patterns(32, 4, seed=5)
    data_dir = tmp_path / "d"
    for i, (img, c) in enumerate(zip(x, y.tolist())):
        (data_dir / eco.PATTERNS[c]).mkdir(parents=True, exist_ok=True)
        a = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(a).resize((side[1], side[0]), Image.BICUBIC).save(data_dir / eco.PATTERNS[c] / f"{i}.png")
    net = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = timm.data.resolve_data_config(model=net)
    assert cfg["crop_pct"] == 0.9
    tf = timm.data.create_transform(**cfg)
    model = load_model(folder, device="cpu")
    data = load_data(data_dir, model=model)
    theirs = torch.stack([tf(Image.open(data_dir / i).convert("RGB")) for i in data.ids])  # in our order
    ys = [eco.PATTERNS.index(i.split("/")[0]) for i in data.ids]
    assert any("preprocessing: shorter side" in n for n in data.notes), data.notes
    ours = (data.x - model.mean) / model.std  # the same tensor the network sees
    assert torch.allclose(ours, theirs, atol=2e-5), float((ours - theirs).abs().max())
    with torch.no_grad():
        own = _accuracy(net(theirs).argmax(1), ys)
    assert _clean_accuracy(model, data_dir) == pytest.approx(own, abs=1e-9)


@pytest.mark.parametrize("height", [43, 48])
def test_hf_shortest_edge_crop_on_other_image_sizes_matches_the_image_processor(models, tmp_path, height):
    """A ConvNeXt-style processor (shortest edge 32 / crop_pct 0.875, then a 32x32 center
    crop, bicubic) on 43x40 and 48x40 images (resized to 38x36 and 43x36: an even and an odd
    crop margin, where transformers' offset (h - 32) // 2 differs from torchvision's rounding):
    the pixels the network sees are the processor's within one 8-bit level."""
    from PIL import Image
    from transformers import AutoImageProcessor

    folder = models["hf_resnet"]
    x, y = eco.patterns(32, 3, seed=6)
    data_dir = tmp_path / "d"
    for i, (img, c) in enumerate(zip(x, y.tolist())):
        (data_dir / eco.PATTERNS[c]).mkdir(parents=True, exist_ok=True)
        a = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(a).resize((40, height), Image.BICUBIC).save(data_dir / eco.PATTERNS[c] / f"{i}.png")
    proc = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    model = load_model(folder, device="cpu")
    data = load_data(data_dir, model=model)
    theirs = proc([Image.open(data_dir / i).convert("RGB") for i in data.ids], return_tensors="pt")["pixel_values"]
    ours = (data.x - model.mean) / model.std
    assert ours.shape == theirs.shape
    step = float((1 / 255) / model.std.min())  # one 8-bit level after normalization
    assert float((ours - theirs).abs().max()) <= step + 1e-5


def test_a_sharded_timm_folder_is_refused_naming_one_file(models, tmp_path):
    """timm loads one weights file from a folder: sharded weights would load one shard."""
    import json

    folder = eco.save_timm_folder(models["timm_vit_net"], tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(ModelLoadError, match="sharded weights .*save the model as one file") as e:
        load_model(folder, device="cpu")
    assert "\n" not in str(e.value)
