"""Refusals of the data, class maps and files: each names a fix, and the fix works
(:mod:`tests.audit.refusal_kit`); a few through ``audit run`` (exit 4, one line on stderr, then
exit 0 with the fix)."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from audit.cli import main
from audit.data import load_data
from audit.errors import ExitCode, split_fix
from tests.audit.refusal_kit import MLP, check_refusal, folder, intensity, load, registry, tensors, tiny, trace, xy
from tests.tinymodels import TinyNet, intensity_image

pytestmark = pytest.mark.usefixtures("one_thread")

REFUSALS, refusal = registry()


# ----------------------------------------------------------------------------- data
@refusal("over the limit of 10 for one image", "raise AUDIT_MAX_IMAGE_PIXELS")
def image_over_pixel_limit(d, mp):
    p, data = intensity(d), folder(d / "data", {"a": 0, "b": 1})
    mp.setenv("AUDIT_MAX_IMAGE_PIXELS", "10")
    (d / "labels.txt").write_text("\n".join(["a", "b"] + [f"c{i}" for i in range(10)]))

    def fixed():
        mp.setenv("AUDIT_MAX_IMAGE_PIXELS", "1000")
        return load_data(data, model=load(p, labels=d / "labels.txt"))

    return lambda: load_data(data, model=load(p, labels=d / "labels.txt")), fixed


@refusal("is not a readable image", "remove it")
def unreadable_image(d, mp):
    p, data = intensity(d), folder(d / "data", {str(i): i for i in range(12)})
    (data / "3" / "broken.png").write_bytes(b"not a png")
    return (lambda: load_data(data, model=load(p)),
            lambda: ((data / "3" / "broken.png").unlink(), load_data(data, model=load(p))))


@refusal(r"has 1 channel\(s\) but the model takes 3", "--convert-channels")
def gray_images_rgb_model(d, mp):
    p, data = intensity(d), folder(d / "data", {str(i): i for i in range(12)}, mode="L")
    return (lambda: load_data(data, model=load(p, input_size="3x8x8")),
            lambda: load_data(data, model=load(p, input_size="3x8x8"), convert_channels=True))


@refusal("is 16x16 but the model takes 8x8", "--resize")
def image_size(d, mp):
    p, data = intensity(d), folder(d / "data", {str(i): i for i in range(12)}, size=16)
    return (lambda: load_data(data, model=load(p, input_size="3x8x8")),
            lambda: load_data(data, model=load(p, input_size="3x8x8"), resize=True))


@refusal(r"images have 1 channel\(s\) but the model takes 3", "--convert-channels")
def tensor_file_channels(d, mp):
    x, y = xy(4, (1, 8, 8))
    f, p = tensors(d / "x.pt", x=x, y=y), intensity(d)
    return (lambda: load_data(f, model=load(p, input_size="3x8x8")),
            lambda: load_data(f, model=load(p, input_size="3x8x8"), convert_channels=True))


@refusal("images are 16x16 but the model takes 8x8", "--resize")
def tensor_file_size(d, mp):
    x, y = xy(4, (3, 16, 16))
    f, p = tensors(d / "x.pt", x=x, y=y), intensity(d)
    return (lambda: load_data(f, model=load(p, input_size="3x8x8")),
            lambda: load_data(f, model=load(p, input_size="3x8x8"), resize=True))


@refusal("does not exist", "check the path")
def data_path_missing(d, mp):
    folder(d / "data", {"a": 0})
    return lambda: load_data(d / "dta"), lambda: load_data(d / "data")


@refusal("has no class subfolders .the images must sit", "put the images in one subfolder per class")
def loose_images(d, mp):
    (d / "data").mkdir()
    intensity_image(0, 4).save(d / "data" / "0.png")

    def fixed():
        (d / "data" / "a").mkdir()
        os.replace(d / "data" / "0.png", d / "data" / "a" / "0.png")
        return load_data(d / "data")

    return lambda: load_data(d / "data"), fixed


@refusal("is not a regular file", "remove it")
def fifo_in_data(d, mp):
    data = folder(d / "data", {"a": 0})
    os.mkfifo(data / "a" / "pipe.png")
    return lambda: load_data(data), lambda: ((data / "a" / "pipe.png").unlink(), load_data(data))


@refusal("notes.csv is not an image", "remove it")
def non_image_in_data(d, mp):
    data = folder(d / "data", {"a": 0})
    (data / "a" / "notes.csv").write_text("x\n")
    return lambda: load_data(data), lambda: ((data / "a" / "notes.csv").unlink(), load_data(data))


@refusal("has class subfolders but no images", "put the images")
def class_folders_empty(d, mp):
    (d / "data" / "a").mkdir(parents=True)
    return lambda: load_data(d / "data"), lambda: (intensity_image(0, 4).save(d / "data" / "a" / "0.png"),
                                                   load_data(d / "data"))


@refusal("is not a readable .npz file of numeric arrays", "numpy.savez")
def npz_object_array(d, mp):
    np.savez(d / "x.npz", x=np.array([np.zeros((3, 4, 4)), None], dtype=object), y=np.array([0, 1]))
    return (lambda: load_data(d / "x.npz"),
            lambda: (np.savez(d / "x.npz", x=np.zeros((2, 3, 4, 4), np.float32), y=np.array([0, 1])),
                     load_data(d / "x.npz")))


@refusal("is not a tensor file this tool reads", "torch.save({'x': images, 'y': labels}, path)")
def pt_needs_code(d, mp):
    torch.save(TinyNet(), d / "x.pt")
    x, y = xy()
    return lambda: load_data(d / "x.pt"), lambda: (tensors(d / "x.pt", x=x, y=y), load_data(d / "x.pt"))


@refusal("holds no dict with 'x' and 'y'", "save it as {'x': images")
def pt_without_x_y(d, mp):
    x, y = xy()
    f = tensors(d / "x.pt", images=x, labels=y)
    return lambda: load_data(f), lambda: (tensors(f, x=x, y=y), load_data(f))


@refusal("holds torch.float32 labels, 0.5 at index 1", "store y as integers")
def float_labels(d, mp):
    x, _ = xy()
    f = tensors(d / "x.pt", x=x, y=torch.tensor([0.0, 0.5, 1.0, 2.0]))
    return lambda: load_data(f), lambda: (tensors(f, x=x, y=torch.tensor([0, 1, 1, 2])), load_data(f))


@refusal(r"x has shape \[0, 3, 8, 8\], no images", "N > 0")
def no_images(d, mp):
    x, y = xy()
    f = tensors(d / "x.pt", x=x[:0], y=y[:0])
    return lambda: load_data(f), lambda: (tensors(f, x=x, y=y), load_data(f))


@refusal("x has 4 samples but y has 3 labels", "one label per image")
def label_count(d, mp):
    x, y = xy()
    f = tensors(d / "x.pt", x=x, y=y[:3])
    return lambda: load_data(f), lambda: (tensors(f, x=x, y=y), load_data(f))


@refusal(r"x must be finite and in \[0, 1\]", "scaled to [0, 1]")
def pixels_out_of_range(d, mp):
    x, y = xy()
    f = tensors(d / "x.pt", x=x * 255, y=y)
    return lambda: load_data(f), lambda: (tensors(f, x=x, y=y), load_data(f))


@refusal("labels range 0..5 outside the model's 4 classes", "output indices 0..3")
def labels_out_of_range(d, mp):
    x, y = xy(6)
    f = tensors(d / "x.pt", x=x, y=torch.arange(6))
    return lambda: load_data(f, num_classes=4), lambda: (tensors(f, x=x, y=y), load_data(f, num_classes=4))


@refusal(r"x has shape \[2, 1, 3, 8, 8\]", "store the images as")
def five_dims(d, mp):
    x, y = xy(2)
    f = tensors(d / "x.pt", x=x[:, None], y=y)
    return lambda: load_data(f), lambda: (tensors(f, x=x, y=y), load_data(f))


@refusal(r"neither \(N, C, H, W\) nor \(N, H, W, C\)", "store the images as")
def two_channels(d, mp):
    f = tensors(d / "x.pt", x=torch.rand(2, 2, 8, 8), y=torch.tensor([0, 1]))
    return lambda: load_data(f), lambda: (tensors(f, x=torch.rand(2, 8, 8), y=torch.tensor([0, 1])), load_data(f))


@refusal("holds only the training split folder", "--data")
def training_split_only(d, mp):
    folder(d / "data" / "train", {"a": 0, "b": 1})
    return lambda: load_data(d / "data"), lambda: load_data(d / "data" / "train")


@refusal("holds split folders .* with no class folders in them", "put each split's images in one subfolder")
def split_folders_of_loose_images(d, mp):
    for s in ("train", "val"):
        (d / "data" / s).mkdir(parents=True)
        intensity_image(0, 4).save(d / "data" / s / "0.png")

    def fixed():
        (d / "data" / "val" / "a").mkdir()
        os.replace(d / "data" / "val" / "0.png", d / "data" / "val" / "a" / "0.png")
        return load_data(d / "data" / "val")

    return lambda: load_data(d / "data"), fixed


@refusal(r"fails on 1, 3, 4 channels at 8x8 too", "--input-size CxHxW")
def no_channel_count_runs(d, mp):
    p, data = trace(MLP(), d / "mlp.pt"), folder(d / "data", {"0": 0, "1": 1, "2": 2, "3": 3})
    return (lambda: load_data(data, model=load(p)),
            lambda: load_data(data, model=load(p, input_size="3x16x16"), resize=True))


# ----------------------------------------------------------------------------- class maps
@refusal("class order 'bogus'", "--class-order auto")
def class_order_unknown(d, mp):
    data = folder(d / "data", {"a": 0, "b": 1})
    return lambda: load_data(data, class_order="bogus"), lambda: load_data(data, class_order="auto")


@refusal("--class-order numeric needs class folders named by number", "--class-order auto")
def numeric_order_for_names(d, mp):
    data = folder(d / "data", {"a": 0, "b": 1})
    return lambda: load_data(data, class_order="numeric"), lambda: load_data(data, class_order="auto")


@refusal("data class folder 'yak' is not one of the model's class names", "--labels FILE")
def folder_not_a_class_name(d, mp):
    p, data = intensity(d, 4), folder(d / "data", {"zebra": 0, "yak": 1}, 4)
    (d / "old.txt").write_text("a\nb\nc\nd\n")
    (d / "new.txt").write_text("zebra\nyak\nc\nd\n")
    return (lambda: load_data(data, model=load(p, labels=d / "old.txt")),
            lambda: load_data(data, model=load(p, labels=d / "new.txt")))


@refusal("the data has 2 class folders but the model has 4 outputs", "--labels FILE")
def fewer_folders_no_names(d, mp):
    p, data = intensity(d, 4), folder(d / "data", {"yak": 1, "zebra": 0}, 4)
    (d / "labels.txt").write_text("zebra\nyak\nc\nd\n")

    def fixed():
        got = load_data(data, model=load(p, labels=d / "labels.txt"))
        assert got.class_map == {"yak": 1, "zebra": 0}

    return lambda: load_data(data, model=load(p)), fixed


def _without(data, name: str, p):
    """The fix those refusals name: remove class folder ``name``, then load again."""
    shutil.rmtree(data / name)
    return load_data(data, model=load(p))


@refusal("the data has class folders 0..2 but the model has 2 outputs", "remove the folders 2..2")
def more_numbered_folders_than_outputs(d, mp):
    p, data = intensity(d, 2), folder(d / "data", {"0": 0, "1": 1, "2": 1}, 2)
    return lambda: load_data(data, model=load(p)), lambda: _without(data, "2", p)


@refusal("--class-order sorted maps the 2 class folders", "--class-order numeric")
def sorted_order_with_gaps(d, mp):
    p, data = intensity(d), folder(d / "data", {"0": 0, "10": 10})
    return (lambda: load_data(data, model=load(p), class_order="sorted"),
            lambda: load_data(data, model=load(p), class_order="numeric"))


@refusal("data class folder 3 is out of range for a model with 3 classes", "--class-order sorted")
def numeric_order_out_of_range(d, mp):
    p, data = intensity(d, 3), folder(d / "data", {"1": 0, "2": 1, "3": 2}, 3)
    return (lambda: load_data(data, model=load(p), class_order="numeric"),
            lambda: load_data(data, model=load(p), class_order="sorted"))


@refusal("data class folder 20 is out of range", r"remove the folder(s) 20")
def numbered_folder_beyond_outputs(d, mp):
    p, data = intensity(d), folder(d / "data", {"0": 0, "20": 11})
    return lambda: load_data(data, model=load(p)), lambda: _without(data, "20", p)


# ----------------------------------------------------------------------------- files
@refusal("is a folder without a config.json", "give the model file itself")
def model_path_is_a_folder(d, mp):
    p = tiny(d)
    return lambda: load(d), lambda: load(p, input_size="3x16x16")


@refusal("is not a regular file .a FIFO", "give a regular file")
def model_path_is_a_fifo(d, mp):
    p = tiny(d)
    os.mkfifo(d / "pipe.pt")
    return lambda: load(d / "pipe.pt"), lambda: load(p, input_size="3x16x16")


# ----------------------------------------------------------------------------- data loaded apart (API)
@refusal("the data is 3x16x16 but the model takes 3x8x8", "resize=True")
def api_data_loaded_without_the_model(d, mp):
    from audit.runner import check_fit

    x, y = xy(4, (3, 16, 16))
    f, p = tensors(d / "x.pt", x=x, y=y), intensity(d, 4)
    model = load(p, input_size="3x8x8")
    return (lambda: check_fit(model, load_data(f)),
            lambda: check_fit(model, load_data(f, model=model, resize=True)))


@refusal("the data's labels run 0..5 but the model has 4 outputs", "store labels 0..3")
def api_labels_beyond_outputs(d, mp):
    from audit.runner import check_fit

    x, y = xy(6)
    f, p = tensors(d / "x.pt", x=x, y=torch.arange(6)), intensity(d, 4)
    model = load(p, input_size="3x8x8")
    return (lambda: check_fit(model, load_data(f)),
            lambda: (tensors(f, x=x, y=y), check_fit(model, load_data(f))))


@pytest.mark.parametrize("name", list(REFUSALS))
def test_the_fix_a_refusal_names_works(name, tmp_path, monkeypatch):
    check_refusal(REFUSALS[name], tmp_path, monkeypatch)


# ----------------------------------------------------------------------------- through `audit run`
CLI = [  # the fix named, the data, the failing flags, the flags that fix it
    ("--convert-channels", "gray", ["--input-size", "3x8x8"], ["--input-size", "3x8x8", "--convert-channels"]),
    ("--resize", "big", ["--input-size", "3x8x8"], ["--input-size", "3x8x8", "--resize"]),
    ("--data", "splits", [], None),
    ("--class-order numeric", "gaps", ["--class-order", "sorted"], ["--class-order", "numeric"]),
]


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("refusals-cli")
    intensity(d)
    folder(d / "gray", {str(i): i for i in range(12)}, mode="L")
    folder(d / "big", {str(i): i for i in range(12)}, size=16)
    folder(d / "splits" / "train", {str(i): i for i in range(12)})
    folder(d / "gaps", {"0": 0, "10": 10})
    return d


@pytest.mark.parametrize("fix,data,bad,good", CLI, ids=[c[0] for c in CLI])
def test_audit_run_refuses_in_one_line_then_the_fix_runs(cli_inputs, tmp_path, capsys, fix, data, bad, good):
    d = cli_inputs
    argv = ["run", str(d / "intensity12.pt"), "--checks", "clean", "--out", str(tmp_path / "out"), "-q"]
    rc = main(argv + ["--data", str(d / data)] + bad)
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.USAGE_ERROR and len(err.splitlines()) == 1 and err.startswith("audit: error: "), err
    assert fix in split_fix(err)[1], err
    data = d / data / "train" if good is None else d / data  # the split the message names
    assert main(argv + ["--data", str(data)] + (good or [])) == ExitCode.OK, capsys.readouterr().err
