"""audit/data.py: ImageFolder and tensor files, class matching, shape checks, subsets."""
import numpy as np
import pytest
import torch

from audit.data import load_data, stratified_indices
from audit.errors import DataError
from audit.model import load_model
from tests.tinymodels import PATTERNS


@pytest.fixture()
def model(model_files, labels_file):
    return load_model(model_files / "dyn.pt2", labels=labels_file, device="cpu")


def test_imagefolder_matches_folders_to_class_names(pattern_folder, pattern_data, model):
    x, y = pattern_data
    d = load_data(pattern_folder, model=model)
    assert len(d) == len(y) and d.input_shape == (3, 16, 16)
    assert d.class_names == list(PATTERNS)
    # the PNG round trip is lossless up to 8-bit quantization; order is by sorted folder
    for c in range(4):
        assert int((d.y == c).sum()) == int((y == c).sum())
    assert torch.all((d.x >= 0) & (d.x <= 1))


def test_tensor_files(tmp_path, pattern_data, model):
    x, y = pattern_data
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=(x.numpy() * 255).astype(np.uint8), y=y.numpy())
    a = load_data(tmp_path / "d.pt", model=model)
    b = load_data(tmp_path / "d.npz", model=model)
    torch.testing.assert_close(a.x, x)
    assert torch.equal(a.y, b.y) and (a.x - b.x).abs().max() < 1 / 255 + 1e-6
    torch.save({"x": x * 2, "y": y}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=r"in \[0, 1\]"):
        load_data(tmp_path / "bad.pt", model=model)


def test_empty_and_foreign_folders(tmp_path, model):
    with pytest.raises(DataError, match="no class subfolders"):
        load_data(tmp_path, model=model)
    (tmp_path / "blob").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(tmp_path, model=model)
    (tmp_path / "blob" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="notes.txt is not an image"):
        load_data(tmp_path, model=model)
    (tmp_path / "blob" / "notes.txt").unlink()
    (tmp_path / "blob" / "fake.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="fake.png is not a readable image"):
        load_data(tmp_path, model=model)


def test_unknown_class_folder_is_an_error(tmp_path, pattern_folder, model):
    import shutil

    shutil.copytree(pattern_folder, tmp_path / "d")
    (tmp_path / "d" / "blob").rename(tmp_path / "d" / "giraffe")
    with pytest.raises(DataError, match="'giraffe' is not one of the model's class names"):
        load_data(tmp_path / "d", model=model)


def _write(path, size, mode):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=128 if mode == "L" else (10, 200, 30)).save(path)


def test_size_and_channel_mismatch_name_the_flag(tmp_path, model):
    _write(tmp_path / "a" / "blob" / "0.png", (20, 20), "RGB")
    with pytest.raises(DataError, match=r"20x20 but the model takes 16x16; pass --resize"):
        load_data(tmp_path / "a", model=model)
    d = load_data(tmp_path / "a", model=model, resize=True)
    assert d.input_shape == (3, 16, 16)
    _write(tmp_path / "b" / "blob" / "0.png", (16, 16), "L")
    with pytest.raises(DataError, match=r"1 channel\(s\) but the model takes 3; pass --convert-channels"):
        load_data(tmp_path / "b", model=model)
    d = load_data(tmp_path / "b", model=model, convert_channels=True)
    assert d.input_shape == (3, 16, 16) and torch.allclose(d.x[0, 0], d.x[0, 2])


def test_stratified_subset_is_seeded_and_keeps_every_class():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    a = stratified_indices(y, 10, seed=3)
    assert len(a) == 10 and torch.equal(a, stratified_indices(y, 10, seed=3))
    assert not torch.equal(a, stratified_indices(y, 10, seed=4))
    counts = torch.bincount(y[a], minlength=3).tolist()
    assert counts == [5, 3, 2]
    assert len(stratified_indices(y, 2, seed=0)) == 2


def test_samples_option(pattern_folder, model):
    d = load_data(pattern_folder, model=model, samples=8, seed=1)
    assert len(d) == 8 and torch.bincount(d.y, minlength=4).tolist() == [2, 2, 2, 2]


def test_sixteen_bit_gray_images_keep_their_range(tmp_path):
    from PIL import Image

    from audit.data import load_data

    d = tmp_path / "d" / "0"
    d.mkdir(parents=True)
    Image.fromarray(np.linspace(0, 65535, 256).reshape(16, 16).astype(np.uint16)).save(d / "a.png")
    data = load_data(tmp_path / "d")
    assert data.input_shape == (1, 16, 16)
    assert abs(float(data.x.mean()) - 0.5) < 0.01 and float(data.x.max()) == pytest.approx(1.0)


def test_class_folders_are_checked_against_a_model_of_unknown_input_size(model_files, tmp_path, pattern_folder):
    import shutil

    from audit.model import load_model

    m = load_model(model_files / "ts.pt", device="cpu")  # TorchScript: input size unknown until the data
    assert not m.ready
    shutil.copytree(pattern_folder / "blob", tmp_path / "d" / "a")
    shutil.copytree(pattern_folder / "checker", tmp_path / "d" / "c")
    with pytest.raises(DataError, match="2 class folders but the model has 4 outputs"):
        load_data(tmp_path / "d", model=m)


# ---------------------------------------------------------------- hostile labels and tensor files
def test_npz_float_labels_are_refused_not_truncated(tmp_path):
    x = np.random.rand(4, 1, 2, 2).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0.0, 1.0, 1.5, 0.0]))
    with pytest.raises(DataError, match=r"1\.5 at index 2 is not a class index; store y as integers") as e:
        load_data(tmp_path / "f.npz", input_shape=(1, 2, 2), num_classes=2)
    assert e.value.exit_code == 4
    np.savez(tmp_path / "w.npz", x=x, y=np.array([0.0, 1.0, 1.0, 0.0]))  # whole numbers are labels
    assert load_data(tmp_path / "w.npz", input_shape=(1, 2, 2), num_classes=2).y.tolist() == [0, 1, 1, 0]


def test_npz_object_array_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.random.rand(2, 1, 2, 2), y=np.array([0, {"a": 1}], dtype=object))
    with pytest.raises(DataError, match=r"o\.npz is not a readable \.npz file of numeric arrays") as e:
        load_data(tmp_path / "o.npz", input_shape=(1, 2, 2), num_classes=2)
    assert "\n" not in str(e.value)


def test_labels_file_bom_is_dropped_and_latin1_is_named(tmp_path):
    from audit.errors import UsageError
    from audit.model.spec import read_labels

    (tmp_path / "bom.txt").write_bytes("\ufeffcat\ndog\n".encode("utf-8"))
    assert read_labels(tmp_path / "bom.txt") == ["cat", "dog"]
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\ndog\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin1.txt is not UTF-8 \(byte 0xe9 at offset 3\); save it as UTF-8"):
        read_labels(tmp_path / "latin1.txt")


def test_an_oversized_image_is_refused_by_its_header_with_its_name(tmp_path, monkeypatch):
    """A decompression bomb (a few KB of PNG claiming a huge canvas) is refused from its header,
    before any pixel is decoded: exit 4, one line naming the file and the fix."""
    from PIL import Image

    from audit.data import load_data
    from audit.errors import DataError

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / cls / "ok.png")
    Image.new("RGB", (3000, 2000), (0, 0, 0)).save(tmp_path / "a" / "bomb.png")  # ~20 KB on disk
    monkeypatch.setenv("AUDIT_MAX_IMAGE_PIXELS", "1000000")  # 6 MP over a 1 MP limit
    with pytest.raises(DataError, match=r"bomb\.png is 3000x2000 pixels, over the limit of 1,000,000.*downscale"):
        load_data(tmp_path, input_shape=(3, 8, 8), resize=True)


def test_a_large_image_is_reduced_before_it_becomes_float(tmp_path):
    """With --resize, an image many times the model's input is reduced in 8-bit first: the
    result matches the plain float resize to within a few 8-bit levels."""
    import numpy as np
    import torch
    from PIL import Image

    from audit.images import decode_image as _decode_image, image_tensor as _to_tensor

    g = np.random.default_rng(0)
    big = (np.kron(g.integers(0, 256, (16, 16, 3)), np.ones((64, 64, 1)))).astype(np.uint8)  # 1024 px, blocky
    Image.fromarray(big).save(tmp_path / "big.png")
    im = _decode_image(tmp_path / "big.png", (16, 16))
    assert im.size[0] < 1024 // 4  # reduced before decoding to float
    t = _to_tensor(im, 3, (16, 16), tmp_path / "big.png", False, True)
    ref = torch.nn.functional.interpolate(torch.from_numpy(big / 255.0).permute(2, 0, 1)[None].float(), size=(16, 16),
                                          mode="bilinear", antialias=True)[0]
    assert float((t - ref).abs().max()) < 4 / 255
