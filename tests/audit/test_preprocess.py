"""The evaluation preprocessing: an image of another size is fitted as the model expects
(stretch, or the shorter side resized then center-cropped), with the model's interpolation;
flags override; what was done is a data note."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from audit.data import load_data
from audit.errors import DataError, UsageError
from audit.model import AuditModel
from audit.model.spec import ModelSpec
from audit.preprocess import Preprocess, resolve_preprocess

NAMES = ["square", "wide"]


class Aspect(nn.Module):
    """Hand-made classifier of the bright region's shape: logit of "wide" = (bright columns)
    - 1.5 x (bright rows), a soft count so that it is deterministic and smooth."""

    def forward(self, x):
        m = torch.sigmoid((x.mean(1) - 0.5) * 40)  # (N, H, W) soft mask of bright pixels
        rows = torch.sigmoid((m.amax(2) - 0.5) * 40).sum(1)
        cols = torch.sigmoid((m.amax(1) - 0.5) * 40).sum(1)
        wide = cols - 1.5 * rows
        return torch.stack([-wide, wide], 1)


def _scene(c: int, k: int) -> np.ndarray:
    """A 48x96 RGB image: at the centre a square (class 0, 12x12) or a wide bar (class 1, 6x18),
    sizes jittered by ``k``; tall bright bars near the left and right borders (decoys that a
    center crop removes and a stretch keeps)."""
    a = np.zeros((48, 96, 3), np.uint8) + np.uint8(20 + 5 * k)
    h, w = (12 + k % 2 * 2, 12 + k % 2 * 2) if c == 0 else (6, 18 + k % 3 * 2)
    a[24 - h // 2:24 - h // 2 + h, 48 - w // 2:48 - w // 2 + w] = 230 - 10 * k
    a[6:42, 3:9] = 220
    a[6:42, 87:93] = 220
    return a


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    for c, name in enumerate(NAMES):
        (root / name).mkdir()
        for k in range(4):
            Image.fromarray(_scene(c, k)).save(root / name / f"{k}.png")
    return root


def _model(**prep) -> AuditModel:
    spec = ModelSpec(input_shape=(3, 16, 16), class_names=list(NAMES))
    for k, v in prep.items():
        spec.set(k, v, "sidecar")
    return AuditModel(Aspect(), spec, info={"format": "test"}).finalize()


def _accuracy(model, data) -> float:
    return float((model.logits(data.x).argmax(1) == data.y).float().mean())


def test_stretching_where_the_model_expects_a_center_crop_lowers_accuracy_and_the_faithful_pipeline_restores_it(scenes):
    """The model was made for 'resize the shorter side to 32, center-crop 16x16' (crop_pct 0.5):
    on 48x96 scenes that pipeline keeps the central shape and drops the border decoys (every
    image right); stretching squeezes the shapes 3x vertically and 6x horizontally and keeps
    the decoys (every image read as tall: class 0)."""
    model = _model(resize_mode="shorter-crop", crop_pct=0.5, interpolation="bilinear")
    faithful = load_data(scenes, model=model)  # the model's own preprocessing: no --resize needed
    stretched = load_data(scenes, model=model, resize_mode="stretch")
    acc_faithful, acc_stretched = _accuracy(model, faithful), _accuracy(model, stretched)
    assert acc_faithful == 1.0
    assert acc_stretched <= 0.5 < acc_faithful
    assert any("shorter side resized to 32, center-cropped to 16x16 (crop_pct 0.5, bilinear), from the model "
               "(sidecar); applied to 8 of 8 images" in n for n in faithful.notes), faithful.notes
    assert any("stretched to 16x16 (bilinear, aspect ratio not kept), from --resize-mode, the rest from the model (sidecar)"
               in n for n in stretched.notes), stretched.notes

    # the same pixels as the model's own pipeline written with torchvision's classic transforms
    from torchvision import transforms as T

    ref_tf = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(16), T.ToTensor()])
    for i, sid in enumerate(faithful.ids):
        ref = ref_tf(Image.open(scenes / sid).convert("RGB"))
        assert torch.allclose(faithful.x[i], ref, atol=1e-6), sid
    # and that pipeline, run outside the project, gives the model the same accuracy
    ref_x = torch.stack([ref_tf(Image.open(scenes / sid).convert("RGB")) for sid in faithful.ids])
    assert float((model.logits(ref_x).argmax(1) == faithful.y).float().mean()) == acc_faithful


def test_torchvision_weights_give_their_resize_crop_and_interpolation(tmp_path):
    """--weights fills resize_mode / crop_pct / interpolation from the weights' transforms();
    the loaded images equal what those transforms compute (before their normalization)."""
    from torchvision.models import get_weight

    from audit.model.spec import resolve_spec

    w = get_weight("EfficientNet_B3_Weights.IMAGENET1K_V1")  # resize 320, crop 300, bicubic
    spec = resolve_spec(None, weights="EfficientNet_B3_Weights.IMAGENET1K_V1").spec
    assert (spec.resize_mode, spec.crop_pct, spec.interpolation) == ("shorter-crop", 300 / 320, "bicubic")
    assert spec.sources["crop_pct"] == "weights"
    g = np.random.default_rng(0)
    cats = w.meta["categories"]
    for i, (h, wd) in enumerate([(330, 400), (420, 340)]):
        d = tmp_path / cats[i]
        d.mkdir()
        small = g.integers(0, 256, (h // 10, wd // 10, 3)).astype(np.uint8)  # smooth enough to test interpolation
        Image.fromarray(small).resize((wd, h), Image.BILINEAR).save(d / f"{i}.png")

    class Head(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)) @ torch.ones(3, 1000)

    model = AuditModel(Head(), spec, info={"format": "test"}).finalize()
    data = load_data(tmp_path, model=model)
    tr = w.transforms()
    mean, std = torch.tensor(tr.mean).view(3, 1, 1), torch.tensor(tr.std).view(3, 1, 1)
    for i, sid in enumerate(data.ids):
        ref = tr(Image.open(tmp_path / sid).convert("RGB")) * std + mean
        assert data.x[i].shape == ref.shape == (3, 300, 300)
        assert float((data.x[i] - ref).abs().max()) < 1e-5, sid
    assert any("shorter side resized to 320, center-cropped to 300x300 (crop_pct 0.9375, bicubic), from the model "
               "(weights)" in n for n in data.notes), data.notes


def test_flags_override_the_model_and_default_to_todays_stretch(scenes, tmp_path):
    """--resize-mode / --crop-pct / --interpolation win over the model's; without a model's
    preprocessing or a flag, another size is refused naming --resize; --resize alone stretches
    (bilinear, as before)."""
    model = _model(resize_mode="shorter-crop", crop_pct=0.5, interpolation="bilinear")
    d = load_data(scenes, model=model, crop_pct=1.0, interpolation="bicubic")
    assert any("shorter side resized to 16, center-cropped to 16x16 (crop_pct 1, bicubic), from --crop-pct and "
               "--interpolation, the rest from the model (sidecar)" in n for n in d.notes), d.notes
    plain = _model()
    with pytest.raises(DataError, match=r"0\.png is 48x96 but the model takes 16x16; pass --resize .*--resize-mode "
                                        r"shorter-crop"):
        load_data(scenes, model=plain)
    d = load_data(scenes, model=plain, resize=True)
    assert any("stretched to 16x16 (bilinear, aspect ratio not kept), from --resize (the model declares no "
               "preprocessing: the default stretch)" in n for n in d.notes), d.notes
    ref = torch.nn.functional.interpolate(torch.from_numpy(_scene(0, 0) / 255.0).permute(2, 0, 1)[None].float(),
                                          size=(16, 16), mode="bilinear", antialias=True)[0]
    assert float((d.x[d.ids.index("square/0.png")] - ref).abs().max()) < 2 / 255  # PIL's 8-bit resize, as before
    d = load_data(scenes, model=plain, crop_pct=0.5)  # a crop fraction alone means shorter-crop
    assert _accuracy(plain, d) == 1.0
    d = load_data(scenes, model=plain, resize_mode="shorter-crop")
    assert any("shorter side resized to 18, center-cropped to 16x16 (crop_pct 0.875, bilinear), from --resize-mode; "
               "crop_pct is the default 0.875" in n for n in d.notes), d.notes

    with pytest.raises(UsageError, match=r"--crop-pct applies to --resize-mode shorter-crop"):
        resolve_preprocess(None, resize_mode="stretch", crop_pct=0.9)
    with pytest.raises(UsageError, match=r"--crop-pct 1\.5 is not a fraction in \(0, 1\]"):
        resolve_preprocess(None, crop_pct=1.5)
    with pytest.raises(UsageError, match=r"the model's interpolation 'cubic' is not one of .*; pass --interpolation "
                                         r"bilinear"):
        resolve_preprocess(ModelSpec(resize_mode="stretch", interpolation="cubic"))
    assert resolve_preprocess(ModelSpec(resize_mode="stretch", interpolation="cubic"), interpolation="bilinear")


def test_a_tensor_file_is_fitted_by_the_same_pipeline_and_pil_only_filters_are_refused(tmp_path):
    x = torch.from_numpy(np.stack([_scene(c, 0) for c in (0, 1)])).permute(0, 3, 1, 2).float() / 255
    torch.save({"x": x, "y": torch.tensor([0, 1])}, tmp_path / "d.pt")
    model = _model(resize_mode="shorter-crop", crop_pct=0.5)
    d = load_data(tmp_path / "d.pt", model=model)
    assert d.x.shape == (2, 3, 16, 16) and _accuracy(model, d) == 1.0
    ref = Preprocess("shorter-crop", 0.5)._transform((16, 16))(x)
    assert torch.equal(d.x, ref.clamp(0, 1))
    with pytest.raises(DataError, match=r"d\.pt: lanczos interpolation resizes 8-bit image files only.*pass "
                                        r"--interpolation bicubic"):
        load_data(tmp_path / "d.pt", model=model, interpolation="lanczos")


def test_images_at_the_input_size_are_used_as_they_are_with_a_note(tmp_path):
    (tmp_path / "square").mkdir()
    (tmp_path / "wide").mkdir()
    Image.fromarray(_scene(0, 0)[16:32, 40:56]).save(tmp_path / "square" / "a.png")
    Image.fromarray(_scene(1, 0)).save(tmp_path / "wide" / "b.png")
    d = load_data(tmp_path, model=_model(resize_mode="shorter-crop", crop_pct=0.5))
    assert any("applied to 1 of 2 images (the others were already 16x16)" in n for n in d.notes), d.notes


def test_sidecar_and_cli_flags_reach_the_report(scenes, tmp_path):
    """A sidecar declares the model's preprocessing; the CLI flag overrides it; the note is in
    results.json's data notes and in the report's Data table."""
    from audit.cli import main

    torch.jit.save(torch.jit.trace(Aspect(), torch.rand(1, 3, 16, 16)), tmp_path / "m.pt")
    (tmp_path / "m.pt.json").write_text(json.dumps({"input_size": "3x16x16", "class_names": NAMES,
                                                    "resize_mode": "shorter-crop", "crop_pct": 0.5}))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "m.pt"), "--data", str(scenes), "--checks", "clean", "--out", str(out),
                 "--quiet", "--interpolation", "bicubic"]) == 0
    res = json.loads((out / "results.json").read_text())
    note = next(n for n in res["data"]["notes"] if n.startswith("preprocessing:"))
    assert "center-cropped to 16x16 (crop_pct 0.5, bicubic), from --interpolation, the rest from the model (sidecar)" \
        in note
    assert "center-cropped to 16x16" in (out / "report.html").read_text()
    assert main(["run", str(tmp_path / "m.pt"), "--data", str(scenes), "--checks", "clean", "--out", str(out),
                 "--quiet", "--crop-pct", "2"]) == 4
