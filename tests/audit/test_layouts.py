"""audit/layouts.py: array layouts, split folders, and channel counts between data and model."""
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.data import load_data
from audit.errors import DataError, UsageError
from audit.layouts import convert_channels_tensor, to_nchw
from audit.model import load_model
from tests.tinymodels import intensity_folder, intensity_image, save_intensity_net

P = Path("x.npz")


# --------------------------------------------------------------------------- array layouts
@pytest.mark.parametrize("shape,channels,n_labels,out,noted", [
    ((5, 3, 8, 8), None, 5, (5, 3, 8, 8), False),  # NCHW
    ((5, 8, 8, 3), None, 5, (5, 3, 8, 8), True),  # NHWC
    ((5, 8, 8, 1), None, 5, (5, 1, 8, 8), True),  # NHWC gray
    ((5, 8, 8, 4), None, 5, (5, 4, 8, 8), True),  # NHWC RGBA
    ((5, 4, 4, 3), 3, 5, (5, 3, 4, 4), True),  # ambiguous: the model's channel count settles it
    ((5, 3, 4, 4), 3, 5, (5, 3, 4, 4), False),
    ((5, 8, 8), None, 5, (5, 1, 8, 8), False),  # (N, H, W) gray
    ((8, 8, 3), None, 1, (1, 3, 8, 8), True),  # one (H, W, C) image
    ((3, 8, 8), None, 1, (1, 3, 8, 8), True),  # one (C, H, W) image
])
def test_array_layouts_load(shape, channels, n_labels, out, noted):
    x = torch.rand(shape)
    y, note = to_nchw(x, n_labels, channels, P)
    assert tuple(y.shape) == out and (note is not None) == noted
    if len(shape) == 4 and noted:
        torch.testing.assert_close(y, x.permute(0, 3, 1, 2))


@pytest.mark.parametrize("shape", [(5, 16, 16, 16), (5, 2, 8, 8, 3), (5, 64)])
def test_other_array_layouts_are_refused_naming_those_that_load(shape):
    with pytest.raises(DataError, match=r"\(N, C, H, W\), \(N, H, W, C\)"):
        to_nchw(torch.rand(shape), 5, None, P)


@pytest.fixture(scope="module")
def net3(tmp_path_factory):
    return save_intensity_net(tmp_path_factory.mktemp("n3") / "net3.pt", num_classes=4, channels=3)


@pytest.mark.parametrize("ready", [False, True])
@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_channels_last_tensor_file_loads_with_a_note(tmp_path, net3, ready, suffix):
    x = torch.rand(6, 3, 8, 8)
    y = torch.arange(6) % 4
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    p = tmp_path / f"d{suffix}"
    if suffix == ".npz":
        np.savez(p, x=nhwc.numpy(), y=y.numpy())
    else:
        torch.save({"x": nhwc, "y": y}, p)
    model = load_model(net3, device="cpu", input_size="3x8x8" if ready else None)
    data = load_data(p, model=model)
    torch.testing.assert_close(data.x, x)
    assert any("channels-last" in n for n in data.notes)


def test_npy_is_refused_naming_the_files_that_load(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"\.pt with x and y, or \.npz"):
        load_data(tmp_path / "x.npy", num_classes=4)


# --------------------------------------------------------------------------- split folders
def _splits(root: Path, names):
    for s in names:
        intensity_folder(root / s, {"a": 0, "b": 1}, 4, per_class=1)
    return root


@pytest.mark.parametrize("splits,chosen", [
    (["train", "val"], "val"),
    (["train", "validation"], "validation"),
    (["train", "valid", "test"], "valid"),  # Roboflow's names
    (["train", "test"], "test"),
    (["train", "val", "test"], "val"),
    (["Train", "Val"], "Val"),
    (["val"], "val"),
])
def test_split_folders_load_the_evaluation_split(tmp_path, splits, chosen):
    data = load_data(_splits(tmp_path / "ds", splits), num_classes=2)
    assert Path(data.source) == tmp_path / "ds" / chosen and data.class_map == {"a": 0, "b": 1}
    assert f"the {chosen}/ split is evaluated" in data.notes[0]


def test_a_training_split_alone_is_refused_naming_the_data_flag(tmp_path):
    with pytest.raises(DataError, match=r"pass --data .*ds/train\b") as e:
        load_data(_splits(tmp_path / "ds", ["train"]), num_classes=2)
    assert "\n" not in str(e.value)


def test_split_folders_of_loose_images_are_refused_naming_the_layout(tmp_path):
    for s in ("train", "val"):
        (tmp_path / "ds" / s).mkdir(parents=True)
        intensity_image(0, 4).save(tmp_path / "ds" / s / "0.png")
    with pytest.raises(DataError, match=r"one subfolder per class .*--data .*ds/val"):
        load_data(tmp_path / "ds", num_classes=2)


# --------------------------------------------------------------------------- channel counts
def _gray_model(tmp_path, channels: int, ready: bool):
    path = save_intensity_net(tmp_path / f"net{channels}.pt", num_classes=4, channels=channels)
    return load_model(path, device="cpu", input_size=f"{channels}x8x8" if ready else None)


@pytest.mark.parametrize("ready", [False, True])
@pytest.mark.parametrize("data_mode,model_c", [("L", 3), ("RGB", 1), ("RGB", 4), ("L", 4), ("RGBA", 1)])
def test_image_channel_mismatch_needs_and_obeys_convert_channels(tmp_path, data_mode, model_c, ready):
    folder = intensity_folder(tmp_path / "d", {"0": 0, "1": 1, "2": 2, "3": 3}, 4, mode=data_mode)
    with pytest.raises(DataError, match=f"--convert-channels to convert the images to {model_c}") as e:
        load_data(folder, model=_gray_model(tmp_path, model_c, ready))
    assert "\n" not in str(e.value) and "--input-size" not in str(e.value)
    model = _gray_model(tmp_path, model_c, ready)
    data = load_data(folder, model=model, convert_channels=True)
    assert data.input_shape == (model_c, 8, 8) and model.spec.input_shape == (model_c, 8, 8)
    if model_c == 4:  # an opaque alpha is added
        assert torch.all(data.x[:, 3] == 1)
    else:  # conversion keeps the intensity the model reads
        assert model.logits(data.x).argmax(1).tolist() == data.y.tolist()
    assert ready or any("found by probing" in n for n in data.notes)


def test_rgba_images_keep_their_alpha_for_a_4_channel_model(tmp_path):
    folder = intensity_folder(tmp_path / "d", {"0": 0, "1": 1}, 4, mode="RGBA")
    data = load_data(folder, model=_gray_model(tmp_path, 4, False))
    assert data.input_shape == (4, 8, 8) and torch.all(data.x[:, 3] == 1)


@pytest.mark.parametrize("have,want", [(4, 3), (3, 4), (1, 4), (4, 1), (1, 3), (3, 1)])
def test_tensor_file_channel_mismatch(tmp_path, have, want):
    p = tmp_path / "d.pt"
    torch.save({"x": torch.rand(4, have, 8, 8), "y": torch.arange(4)}, p)
    with pytest.raises(DataError, match="--convert-channels"):
        load_data(p, model=_gray_model(tmp_path, want, True))
    data = load_data(p, model=_gray_model(tmp_path, want, True), convert_channels=True)
    assert data.input_shape == (want, 8, 8)


def test_unconvertible_channels_name_what_converts():
    with pytest.raises(DataError, match=r"between 1 \(gray\), 3 \(RGB\) and 4 \(RGBA\)"):
        convert_channels_tensor(torch.rand(1, 2, 4, 4), 3)


class _Flat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_model_failing_on_every_channel_count_names_input_size(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(_Flat().eval(), torch.rand(1, 3, 16, 16)), tmp_path / "flat.pt")
    folder = intensity_folder(tmp_path / "d", {"0": 0, "1": 1}, 2, mode="L")  # 1x8x8: no channel count fits
    with pytest.raises(UsageError, match=r"--input-size CxHxW .*--convert-channels") as e:
        load_data(folder, model=load_model(tmp_path / "flat.pt", device="cpu"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["ts.pt", "dyn.pt2", "pickle.pt"])
def test_gray_data_rgb_model_in_every_format(tmp_path, model_files, pattern_data, name):
    """Gray images for the 3-channel tiny model as TorchScript, torch.export and a pickle."""
    from PIL import Image

    x, y = pattern_data
    for i, (img, c) in enumerate(zip(x[::5], y[::5].tolist())):
        (tmp_path / f"c{c}").mkdir(exist_ok=True)
        Image.fromarray((img.mean(0).numpy() * 255).astype(np.uint8), "L").save(tmp_path / f"c{c}" / f"{i}.png")
    with pytest.raises(DataError, match="pass --convert-channels"):
        load_data(tmp_path, model=load_model(model_files / name, device="cpu", trust=True))
    data = load_data(tmp_path, model=load_model(model_files / name, device="cpu", trust=True), convert_channels=True)
    assert data.input_shape == (3, 16, 16) and torch.equal(data.x[:, 0], data.x[:, 2])
