"""Every refusal of the loaders names a fix, and that fix works: each case builds the failing
input, checks the one-line message (exit code 4) and the fix it names
(:func:`audit.errors.split_fix`), then applies that fix (the flag, the re-save, the move) and
checks that loading now succeeds. A few go through ``audit run`` (exit 4, one line on stderr,
then exit 0 with the fix)."""
from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from audit.cli import main
from audit.data import load_data
from audit.errors import ExitCode, UsageError, split_fix
from audit.model import AuditModel, ModelSpec, load_model, resolve_device
from tests.tinymodels import IntensityNet, TinyNet, intensity_image

pytestmark = pytest.mark.usefixtures("one_thread")

REFUSALS: dict = {}


def refusal(match: str, fix: str):
    """Register a case: ``fn(d, mp) -> (bad, fixed)``; ``bad()`` must raise a one-line
    :class:`UsageError` matching ``match`` whose fix contains ``fix``; ``fixed()`` applies the fix."""
    def deco(fn):
        REFUSALS[fn.__name__] = (fn, match, fix)
        return fn
    return deco


# ----------------------------------------------------------------------------- helpers
def _trace(net: nn.Module, path: Path, shape=(3, 16, 16), n: int = 2) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net.eval(), torch.rand(n, *shape)), str(path))
    return path


def _tiny(d: Path) -> Path:
    torch.manual_seed(0)
    return _trace(TinyNet(), d / "tiny.pt")


def _intensity(d: Path, classes: int = 12, channels: int = 3) -> Path:
    return _trace(IntensityNet(classes, channels), d / f"intensity{classes}.pt", (channels, 8, 8))


def _folder(root: Path, mapping: dict, classes: int = 12, *, mode: str = "RGB", size: int = 8) -> Path:
    for name, idx in mapping.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        im = intensity_image(idx, classes, mode)
        (im.resize((size, size)) if size != 8 else im).save(root / name / "0.png")
    return root


def _tensors(path: Path, **arrays) -> Path:
    torch.save(arrays, path)
    return path


def _xy(n: int = 4, shape=(3, 8, 8)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)), torch.arange(n) % 4


def _load(path, **kw):
    kw.setdefault("device", "cpu")
    return load_model(path, **kw)


class MLP(nn.Module):
    """Takes 3x16x16 only (a Linear on the flattened image)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(768, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


# ----------------------------------------------------------------------------- model files
@refusal("not a model file this tool reads", "torch.jit.save")
def text_file(d, mp):
    (d / "m.pt").write_text("hello\n")
    return lambda: _load(d / "m.pt"), lambda: (_trace(TinyNet(), d / "m.pt"), _load(d / "m.pt"))


@refusal("is empty", "re-save")
def empty_file(d, mp):
    (d / "m.pt").write_bytes(b"")
    return lambda: _load(d / "m.pt"), lambda: (_trace(TinyNet(), d / "m.pt"), _load(d / "m.pt"))


@refusal("truncated or corrupt", "re-save")
def truncated_archive(d, mp):
    data = _tiny(d).read_bytes()
    (d / "m.pt").write_bytes(data[: len(data) // 3])
    return lambda: _load(d / "m.pt"), lambda: (_trace(TinyNet(), d / "m.pt"), _load(d / "m.pt"))


@refusal("zip file but not a PyTorch model", "torch.jit.save")
def foreign_zip(d, mp):
    with zipfile.ZipFile(d / "m.pt", "w") as z:
        z.writestr("readme.txt", "hi")
    return lambda: _load(d / "m.pt"), lambda: (_trace(TinyNet(), d / "m.pt"), _load(d / "m.pt"))


def _save_safetensors(path):
    from safetensors.torch import save_file

    save_file(TinyNet().state_dict(), str(path))


@refusal("fails its checksum", "re-save")
def member_checksum(d, mp):
    src = _tiny(d)
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    raw = bytearray(src.read_bytes())
    with open(src, "rb") as f:  # the member's data starts after its local header
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    raw[info.header_offset + 30 + n + m] ^= 0xFF
    (d / "m.pt").write_bytes(bytes(raw))
    return lambda: _load(d / "m.pt"), lambda: (_trace(TinyNet(), d / "m.pt"), _load(d / "m.pt", input_size="3x16x16"))


def _sample_inputs(marker: str):
    """Unpickled from an archive: creates ``marker`` (code ran) and returns export sample inputs."""
    Path(marker).touch()
    return (torch.rand(2, 3, 16, 16),), {}


class _Inputs:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_sample_inputs, (self.marker,))


@refusal("torch.export archive holding pickled objects that need code", "--trust")
def export_with_pickled_code(d, mp):
    import io

    buf = io.BytesIO()
    torch.save(_Inputs(d / "ran"), buf)
    _rewrite(_export(d / "ok.pt2"), d / "m.pt2", "sample_inputs/model.pt", buf.getvalue())

    def fixed():  # --trust: the archive's code runs (here: it creates a file), and the model loads
        assert _load(d / "m.pt2", trust=True).num_classes == 4 and (d / "ran").exists()

    def bad():
        try:
            _load(d / "m.pt2")
        finally:
            assert not (d / "ran").exists(), "the archive's code ran without --trust"

    return bad, fixed


@refusal("truncated safetensors", "re-save")
def truncated_safetensors(d, mp):
    (d / "w.safetensors").write_bytes((1000).to_bytes(8, "little") + b'{"a": 1}')
    return (lambda: _load(d / "w.safetensors", arch="tinynet"),
            lambda: (_save_safetensors(d / "w.safetensors"), _load(d / "w.safetensors", arch="tinynet",
                                                                  input_size="3x16x16")))


@refusal("corrupt safetensors", "re-save")
def corrupt_safetensors(d, mp):
    header = b'{"w": {"dtype": "F32", "shape": [9], "data_offsets": [0, 36]}}'
    (d / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    return (lambda: _load(d / "w.safetensors", arch="tinynet"),
            lambda: (_save_safetensors(d / "w.safetensors"), _load(d / "w.safetensors", arch="tinynet",
                                                                  input_size="3x16x16")))


@refusal("cannot be read as a PyTorch file", "re-save")
def corrupt_legacy_pickle(d, mp):
    (d / "m.pt").write_bytes(b"\x80\x02garbage that is no pickle")
    return (lambda: _load(d / "m.pt", arch="tinynet"),
            lambda: (torch.save(TinyNet().state_dict(), d / "m.pt"), _load(d / "m.pt", arch="tinynet",
                                                                            input_size="3x16x16")))


@refusal("holds a list, neither a model nor a state_dict", "torch.save(model.state_dict(), path)")
def neither_model_nor_weights(d, mp):
    torch.save([1, 2, 3], d / "m.pt")
    return (lambda: _load(d / "m.pt", arch="tinynet"),
            lambda: (torch.save(TinyNet().state_dict(), d / "m.pt"), _load(d / "m.pt", arch="tinynet",
                                                                            input_size="3x16x16")))


@refusal("pickle that needs Python code", "re-run with --trust")
def pickle_without_trust(d, mp):
    torch.save(TinyNet(), d / "m.pt")

    def fixed():
        assert _load(d / "m.pt", trust=True, input_size="3x16x16").ready
        _trace(TinyNet(), d / "m.pt")  # the other fix it names: save it as TorchScript
        assert _load(d / "m.pt", input_size="3x16x16").ready

    return lambda: _load(d / "m.pt"), fixed


@refusal("whose code cannot be imported", "on PYTHONPATH")
def pickle_code_not_importable(d, mp):
    (d / "code").mkdir()
    (d / "code" / "i16_pickled_net.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 4)\n    def forward(self, x):\n        return self.fc(x.mean((2, 3)))\n")
    mp.syspath_prepend(str(d / "code"))
    import importlib

    mod = importlib.import_module("i16_pickled_net")
    torch.save(mod.Net(), d / "m.pt")
    mp.delitem(__import__("sys").modules, "i16_pickled_net")
    mp.setattr(__import__("sys"), "path", [p for p in __import__("sys").path if p != str(d / "code")])

    def fixed():
        mp.syspath_prepend(str(d / "code"))
        assert _load(d / "m.pt", trust=True, input_size="3x8x8").num_classes == 4

    return lambda: _load(d / "m.pt", trust=True), fixed


@refusal("whose graph calls aten::from_file", "--trust")
def graph_touches_files(d, mp):
    from tests.audit.test_model import _MapsAFile

    (d / "victim.bin").write_bytes(b"\0" * 16)
    torch.jit.script(_MapsAFile(str(d / "victim.bin"))).save(str(d / "m.pt"))
    return (lambda: _load(d / "m.pt", input_size="3x8x8"),
            lambda: _load(d / "m.pt", input_size="3x8x8", trust=True))


@refusal("not in the local torch hub cache", "fetch them once")
def torchvision_weights_not_cached(d, mp):
    import torchvision

    mp.setenv("TORCH_HOME", str(d / "torch"))
    name = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"

    def fetch():  # what fetching them once puts there
        cache = d / "torch" / "hub" / "checkpoints"
        cache.mkdir(parents=True)
        torch.save(torchvision.models.mobilenet_v3_small().state_dict(), cache / "mobilenet_v3_small-047dcff4.pth")
        assert _load(None, weights=name, input_size="3x32x32").num_classes == 1000

    return lambda: _load(None, weights=name), fetch


def _rewrite(src: Path, dst: Path, member_suffix: str, data: bytes) -> Path:
    """A copy of the zip archive ``src`` whose member ending in ``member_suffix`` holds ``data``."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, data if info.filename.endswith(member_suffix) else z.read(info.filename))
    return dst


@refusal("is a TorchScript archive that fails to load", "re-save it with torch")
def torchscript_that_fails_to_load(d, mp):
    _rewrite(_tiny(d), d / "m.pt", "/data.pkl", b"\x80\x02garbage")
    return lambda: _load(d / "m.pt"), lambda: (_trace(TinyNet(), d / "m.pt"), _load(d / "m.pt", input_size="3x16x16"))


def _export(path: Path) -> Path:
    torch.export.save(torch.export.export(TinyNet().eval(), (torch.rand(2, 3, 16, 16),)), str(path))
    return path


@refusal("is a torch.export archive that fails to load", "re-export it with torch")
def export_that_fails_to_load(d, mp):
    _rewrite(_export(d / "ok.pt2"), d / "m.pt2", "models/model.json", b'{"graph_module": 1}')
    return lambda: _load(d / "m.pt2"), lambda: (_export(d / "m.pt2"), _load(d / "m.pt2"))


@refusal("no model file given", "--weights NAME")
def no_model_file(d, mp):
    p = _tiny(d)
    return lambda: _load(None), lambda: _load(p, input_size="3x16x16")


# ----------------------------------------------------------------------------- flags and spec files
@refusal("asked for a GPU, but torch sees none", "--device cpu")
def cuda_without_gpu(d, mp):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    return lambda: resolve_device("cuda"), lambda: resolve_device("cpu")


@refusal("is not a device this tool runs on", "--device auto")
def unknown_device(d, mp):
    return lambda: resolve_device("tpu"), lambda: resolve_device("auto")


@refusal("under torchrun each process takes its own GPU", "--device cuda or auto")
def device_index_under_torchrun(d, mp):
    mp.setenv("WORLD_SIZE", "2")
    return lambda: resolve_device("cuda:1"), lambda: resolve_device("auto")


@refusal("is not CxHxW", "--input-size 3x224x224")
def input_size_not_cxhxw(d, mp):
    p = _tiny(d)
    return lambda: _load(p, input_size="big"), lambda: _load(p, input_size="3x16x16")


@refusal("with C in 1, 3, 4", "--input-size 3x224x224")
def input_size_two_channels(d, mp):
    p = _tiny(d)
    return lambda: _load(p, input_size="2x16x16"), lambda: _load(p, input_size="3x16x16")


@refusal("--mean 'a,b' is not a list of numbers", "comma-separated numbers")
def mean_not_numbers(d, mp):
    p = _tiny(d)
    return (lambda: _load(p, input_size="3x16x16", mean="a,b"),
            lambda: _load(p, input_size="3x16x16", mean="0.5,0.5,0.5"))


@refusal("is not finite", "finite numbers")
def std_not_finite(d, mp):
    p = _tiny(d)
    return lambda: _load(p, input_size="3x16x16", std="nan"), lambda: _load(p, input_size="3x16x16", std="0.25")


@refusal("has 2 values but the model takes 3 channels", "one value per channel")
def mean_count(d, mp):
    p = _tiny(d)
    return (lambda: _load(p, input_size="3x16x16", mean="0.5,0.5"),
            lambda: _load(p, input_size="3x16x16", mean="0.5"))


@refusal("std values must be positive", "positive per-channel std")
def std_zero(d, mp):
    p = _tiny(d)
    return lambda: _load(p, input_size="3x16x16", std="0"), lambda: _load(p, input_size="3x16x16", std="0.25")


@refusal("is not UTF-8", "save it as UTF-8")
def labels_latin1(d, mp):
    p = _tiny(d)
    names = ["café", "thé", "jus", "eau"]
    (d / "labels.txt").write_bytes("\n".join(names).encode("latin-1"))

    def fixed():
        (d / "labels.txt").write_text("\n".join(names), encoding="utf-8")
        assert _load(p, input_size="3x16x16", labels=d / "labels.txt").class_names == names

    return lambda: _load(p, input_size="3x16x16", labels=d / "labels.txt"), fixed


@refusal("labels file .* is empty", "one class name a line")
def labels_empty(d, mp):
    p = _tiny(d)
    (d / "labels.txt").write_text("\n\n")
    return (lambda: _load(p, input_size="3x16x16", labels=d / "labels.txt"),
            lambda: ((d / "labels.txt").write_text("a\nb\nc\nd\n"), _load(p, input_size="3x16x16",
                                                                          labels=d / "labels.txt")))


@refusal("names class 'a' twice", "its own name")
def labels_duplicate(d, mp):
    p = _tiny(d)
    (d / "labels.txt").write_text("a\nb\na\nd\n")
    return (lambda: _load(p, input_size="3x16x16", labels=d / "labels.txt"),
            lambda: ((d / "labels.txt").write_text("a\nb\nc\nd\n"), _load(p, input_size="3x16x16",
                                                                          labels=d / "labels.txt")))


@refusal("is not valid JSON", "remove it")
def sidecar_not_json(d, mp):
    p = _tiny(d)
    (d / "tiny.pt.json").write_text("{input_size: 3x16x16")
    return (lambda: _load(p),
            lambda: ((d / "tiny.pt.json").write_text('{"input_size": "3x16x16"}'), _load(p).ready))


@refusal("holds a JSON list, not an object", "remove the file")
def sidecar_not_object(d, mp):
    p = _tiny(d)
    (d / "tiny.pt.json").write_text("[3, 16, 16]")
    return lambda: _load(p), lambda: ((d / "tiny.pt.json").unlink(), _load(p, input_size="3x16x16"))


@refusal("unknown key 'inputsize'", "remove it or use a known key")
def sidecar_unknown_key(d, mp):
    p = _tiny(d)
    (d / "tiny.pt.json").write_text('{"inputsize": "3x16x16"}')
    return (lambda: _load(p),
            lambda: ((d / "tiny.pt.json").write_text('{"input_size": "3x16x16"}'), _load(p).ready))


@refusal("is not a torchvision weights name", "ResNet50_Weights.IMAGENET1K_V2")
def weights_name_unknown(d, mp):
    from audit.model.spec import torchvision_weights

    return (lambda: torchvision_weights("ResNet50_Weights.BEST"),
            lambda: torchvision_weights("ResNet50_Weights.IMAGENET1K_V2"))


# ----------------------------------------------------------------------------- state_dicts
@refusal("holds only weights", "--arch NAME")
def state_dict_without_arch(d, mp):
    torch.save(TinyNet().state_dict(), d / "sd.pt")
    return lambda: _load(d / "sd.pt"), lambda: _load(d / "sd.pt", arch="tinynet", input_size="3x16x16")


class ConvHead(nn.Module):
    """Classes from a 1x1 convolution: no 2-D weight to count them from."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def _register_convhead():
    from audit.zoo import list_archs, register_arch

    if "i16-convhead" not in list_archs():
        register_arch("i16-convhead")(lambda *, num_classes=5: ConvHead(num_classes))


@refusal("cannot tell the number of classes", "--num-classes N")
def num_classes_unknown(d, mp):
    _register_convhead()
    torch.save(ConvHead(5).state_dict(), d / "sd.pt")
    return (lambda: _load(d / "sd.pt", arch="i16-convhead"),
            lambda: _load(d / "sd.pt", arch="i16-convhead", num_classes=5, input_size="3x8x8"))


@refusal("unknown --arch 'tinynett'", "audit list --archs")
def unknown_arch(d, mp):
    torch.save(TinyNet().state_dict(), d / "sd.pt")
    return (lambda: _load(d / "sd.pt", arch="tinynett"),
            lambda: _load(d / "sd.pt", arch="tinynet", input_size="3x16x16"))


@refusal("do not fit --arch resnet18", "pass the --arch it was trained with")
def arch_does_not_fit(d, mp):
    torch.save(TinyNet().state_dict(), d / "sd.pt")
    return (lambda: _load(d / "sd.pt", arch="resnet18"),
            lambda: _load(d / "sd.pt", arch="tinynet", input_size="3x16x16"))


@refusal("the keys fit only after removing the prefix 'model.'", "--num-classes")
def prefixed_weights_other_class_count(d, mp):
    torch.save({"state_dict": {f"model.{k}": v for k, v in TinyNet(7).state_dict().items()}}, d / "l.ckpt")
    return (lambda: _load(d / "l.ckpt", arch="tinynet", num_classes=4),
            lambda: _load(d / "l.ckpt", arch="tinynet", num_classes=7, input_size="3x16x16"))


# ----------------------------------------------------------------------------- the probe
@refusal("input size is unknown", "--input-size CxHxW")
def input_size_unknown(d, mp):
    p = _tiny(d)
    return lambda: _load(p).finalize(), lambda: _load(p, input_size="3x16x16")


@refusal(r"fails on an input of shape \[4, 3, 8, 8\]", "--input-size CxHxW")
def input_size_wrong(d, mp):
    p = _trace(MLP(), d / "mlp.pt")
    return lambda: _load(p, input_size="3x8x8"), lambda: _load(p, input_size="3x16x16")


class Sqrt(nn.Module):
    def forward(self, x):
        return x.sqrt().mean((2, 3)).repeat(1, 2)[:, :4]


@refusal("outputs NaN or infinite values", "--mean/--std")
def nan_outputs(d, mp):
    p = _trace(Sqrt(), d / "sqrt.pt")
    return lambda: _load(p, input_size="3x8x8", mean="0.9"), lambda: _load(p, input_size="3x8x8")


@refusal(r"2 class names \(flag\) for a model with 4 outputs", "--labels FILE")
def labels_count(d, mp):
    p = _tiny(d)
    (d / "two.txt").write_text("a\nb\n")
    (d / "four.txt").write_text("a\nb\nc\nd\n")
    return (lambda: _load(p, input_size="3x16x16", labels=d / "two.txt"),
            lambda: _load(p, input_size="3x16x16", labels=d / "four.txt"))


@refusal("outputs 4 scores but 7 classes were given", "fix --num-classes")
def num_classes_wrong(d, mp):
    p = _tiny(d)
    return lambda: _load(p, input_size="3x16x16", num_classes=7), lambda: _load(p, input_size="3x16x16", num_classes=4)


class Returns(nn.Module):
    def __init__(self, what):
        super().__init__()
        self.what = what

    def forward(self, x):
        logits = x.mean((2, 3)).repeat(1, 2)[:, :4]
        return {"str": "logits", "row": logits[:1], "ok": logits}[self.what]


@refusal("the model returns str, not a logits tensor", "return the logits tensor")
def output_not_a_tensor(d, mp):
    return (lambda: AuditModel(Returns("str"), ModelSpec(input_shape=(3, 4, 4))).finalize(),
            lambda: AuditModel(Returns("ok"), ModelSpec(input_shape=(3, 4, 4))).finalize())


@refusal(r"output for a batch of 4 images is 1x4", "return logits of shape")
def output_not_one_row_per_image(d, mp):
    return (lambda: AuditModel(Returns("row"), ModelSpec(input_shape=(3, 4, 4))).finalize(),
            lambda: AuditModel(Returns("ok"), ModelSpec(input_shape=(3, 4, 4))).finalize())


@refusal("depends on the other images in its batch .a torchscript saved in train mode", "re-export the model in eval")
def train_mode_trace(d, mp):
    from tests.audit.test_model_behaviour import _train_mode_net

    net = _train_mode_net("bn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(net, torch.rand(4, 3, 16, 16), check_trace=False), str(d / "m.pt"))
    return (lambda: _load(d / "m.pt", input_size="3x16x16"),
            lambda: (_trace(net.eval(), d / "m.pt"), _load(d / "m.pt", input_size="3x16x16")))


class BatchCentred(nn.Module):
    def __init__(self, centre: bool):
        super().__init__()
        self.centre = centre

    def forward(self, x):
        f = x.mean((2, 3))
        return (f - f.mean(0, keepdim=True) if self.centre else f - 0.5).repeat(1, 2)[:, :4]


@refusal("depends on the other images in its batch even in eval mode", "make its forward independent of the batch")
def batch_statistics_in_forward(d, mp):
    return (lambda: AuditModel(BatchCentred(True), ModelSpec(input_shape=(3, 4, 4))).finalize(),
            lambda: AuditModel(BatchCentred(False), ModelSpec(input_shape=(3, 4, 4))).finalize())


class FailsOnBright(nn.Module):
    """Runs on random images, fails on an image brighter than 0.8 on average (after the normalization)."""

    def forward(self, x):
        torch._assert(bool(x.mean((1, 2, 3)).max() < 0.8), "an image brighter than 0.8")
        return x.mean((2, 3)).repeat(1, 2)[:, :4]


@refusal("fails on a batch mixing dark and bright images", "--mean/--std normalization")
def fails_on_bright_images(d, mp):
    torch.jit.script(FailsOnBright()).save(str(d / "m.pt"))
    return (lambda: _load(d / "m.pt", input_size="3x4x4"),
            lambda: _load(d / "m.pt", input_size="3x4x4", mean="0.5"))


@refusal("model sidecar .* has 16,777,217 bytes", "check that it is the right file")
def sidecar_too_big(d, mp):
    p = _tiny(d)
    (d / "tiny.pt.json").write_bytes(b" " * (16 * 2**20 + 1))
    return (lambda: _load(p),
            lambda: ((d / "tiny.pt.json").write_text('{"input_size": "3x16x16"}'), _load(p).ready))


# ----------------------------------------------------------------------------- data
@refusal("over the limit of 10 for one image", "raise AUDIT_MAX_IMAGE_PIXELS")
def image_over_pixel_limit(d, mp):
    p, data = _intensity(d), _folder(d / "data", {"a": 0, "b": 1})
    mp.setenv("AUDIT_MAX_IMAGE_PIXELS", "10")
    (d / "labels.txt").write_text("\n".join(["a", "b"] + [f"c{i}" for i in range(10)]))

    def fixed():
        mp.setenv("AUDIT_MAX_IMAGE_PIXELS", "1000")
        return load_data(data, model=_load(p, labels=d / "labels.txt"))

    return lambda: load_data(data, model=_load(p, labels=d / "labels.txt")), fixed


@refusal("is not a readable image", "remove it")
def unreadable_image(d, mp):
    p, data = _intensity(d), _folder(d / "data", {str(i): i for i in range(12)})
    (data / "3" / "broken.png").write_bytes(b"not a png")
    return (lambda: load_data(data, model=_load(p)),
            lambda: ((data / "3" / "broken.png").unlink(), load_data(data, model=_load(p))))


@refusal(r"has 1 channel\(s\) but the model takes 3", "--convert-channels")
def gray_images_rgb_model(d, mp):
    p, data = _intensity(d), _folder(d / "data", {str(i): i for i in range(12)}, mode="L")
    return (lambda: load_data(data, model=_load(p, input_size="3x8x8")),
            lambda: load_data(data, model=_load(p, input_size="3x8x8"), convert_channels=True))


@refusal("is 16x16 but the model takes 8x8", "--resize")
def image_size(d, mp):
    p, data = _intensity(d), _folder(d / "data", {str(i): i for i in range(12)}, size=16)
    return (lambda: load_data(data, model=_load(p, input_size="3x8x8")),
            lambda: load_data(data, model=_load(p, input_size="3x8x8"), resize=True))


@refusal(r"images have 1 channel\(s\) but the model takes 3", "--convert-channels")
def tensor_file_channels(d, mp):
    x, y = _xy(4, (1, 8, 8))
    f, p = _tensors(d / "x.pt", x=x, y=y), _intensity(d)
    return (lambda: load_data(f, model=_load(p, input_size="3x8x8")),
            lambda: load_data(f, model=_load(p, input_size="3x8x8"), convert_channels=True))


@refusal("images are 16x16 but the model takes 8x8", "--resize")
def tensor_file_size(d, mp):
    x, y = _xy(4, (3, 16, 16))
    f, p = _tensors(d / "x.pt", x=x, y=y), _intensity(d)
    return (lambda: load_data(f, model=_load(p, input_size="3x8x8")),
            lambda: load_data(f, model=_load(p, input_size="3x8x8"), resize=True))


@refusal("does not exist", "check the path")
def data_path_missing(d, mp):
    _folder(d / "data", {"a": 0})
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
    data = _folder(d / "data", {"a": 0})
    os.mkfifo(data / "a" / "pipe.png")
    return lambda: load_data(data), lambda: ((data / "a" / "pipe.png").unlink(), load_data(data))


@refusal("notes.csv is not an image", "remove it")
def non_image_in_data(d, mp):
    data = _folder(d / "data", {"a": 0})
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
    x, y = _xy()
    return lambda: load_data(d / "x.pt"), lambda: (_tensors(d / "x.pt", x=x, y=y), load_data(d / "x.pt"))


@refusal("holds no dict with 'x' and 'y'", "save it as {'x': images")
def pt_without_x_y(d, mp):
    x, y = _xy()
    f = _tensors(d / "x.pt", images=x, labels=y)
    return lambda: load_data(f), lambda: (_tensors(f, x=x, y=y), load_data(f))


@refusal("holds torch.float32 labels, 0.5 at index 1", "store y as integers")
def float_labels(d, mp):
    x, _ = _xy()
    f = _tensors(d / "x.pt", x=x, y=torch.tensor([0.0, 0.5, 1.0, 2.0]))
    return lambda: load_data(f), lambda: (_tensors(f, x=x, y=torch.tensor([0, 1, 1, 2])), load_data(f))


@refusal(r"x has shape \[0, 3, 8, 8\], no images", "N > 0")
def no_images(d, mp):
    x, y = _xy()
    f = _tensors(d / "x.pt", x=x[:0], y=y[:0])
    return lambda: load_data(f), lambda: (_tensors(f, x=x, y=y), load_data(f))


@refusal("x has 4 samples but y has 3 labels", "one label per image")
def label_count(d, mp):
    x, y = _xy()
    f = _tensors(d / "x.pt", x=x, y=y[:3])
    return lambda: load_data(f), lambda: (_tensors(f, x=x, y=y), load_data(f))


@refusal(r"x must be finite and in \[0, 1\]", "scaled to [0, 1]")
def pixels_out_of_range(d, mp):
    x, y = _xy()
    f = _tensors(d / "x.pt", x=x * 255, y=y)
    return lambda: load_data(f), lambda: (_tensors(f, x=x, y=y), load_data(f))


@refusal("labels range 0..5 outside the model's 4 classes", "output indices 0..3")
def labels_out_of_range(d, mp):
    x, y = _xy(6)
    f = _tensors(d / "x.pt", x=x, y=torch.arange(6))
    return lambda: load_data(f, num_classes=4), lambda: (_tensors(f, x=x, y=y), load_data(f, num_classes=4))


@refusal(r"x has shape \[2, 1, 3, 8, 8\]", "store the images as")
def five_dims(d, mp):
    x, y = _xy(2)
    f = _tensors(d / "x.pt", x=x[:, None], y=y)
    return lambda: load_data(f), lambda: (_tensors(f, x=x, y=y), load_data(f))


@refusal(r"neither \(N, C, H, W\) nor \(N, H, W, C\)", "store the images as")
def two_channels(d, mp):
    f = _tensors(d / "x.pt", x=torch.rand(2, 2, 8, 8), y=torch.tensor([0, 1]))
    return lambda: load_data(f), lambda: (_tensors(f, x=torch.rand(2, 8, 8), y=torch.tensor([0, 1])), load_data(f))


@refusal("holds only the training split folder", "--data")
def training_split_only(d, mp):
    _folder(d / "data" / "train", {"a": 0, "b": 1})
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
    p, data = _trace(MLP(), d / "mlp.pt"), _folder(d / "data", {"0": 0, "1": 1, "2": 2, "3": 3})
    return (lambda: load_data(data, model=_load(p)),
            lambda: load_data(data, model=_load(p, input_size="3x16x16"), resize=True))


# ----------------------------------------------------------------------------- class maps
@refusal("class order 'bogus'", "--class-order auto")
def class_order_unknown(d, mp):
    data = _folder(d / "data", {"a": 0, "b": 1})
    return lambda: load_data(data, class_order="bogus"), lambda: load_data(data, class_order="auto")


@refusal("--class-order numeric needs class folders named by number", "--class-order auto")
def numeric_order_for_names(d, mp):
    data = _folder(d / "data", {"a": 0, "b": 1})
    return lambda: load_data(data, class_order="numeric"), lambda: load_data(data, class_order="auto")


@refusal("data class folder 'yak' is not one of the model's class names", "--labels FILE")
def folder_not_a_class_name(d, mp):
    p, data = _intensity(d, 4), _folder(d / "data", {"zebra": 0, "yak": 1}, 4)
    (d / "old.txt").write_text("a\nb\nc\nd\n")
    (d / "new.txt").write_text("zebra\nyak\nc\nd\n")
    return (lambda: load_data(data, model=_load(p, labels=d / "old.txt")),
            lambda: load_data(data, model=_load(p, labels=d / "new.txt")))


@refusal("the data has 2 class folders but the model has 4 outputs", "--labels FILE")
def fewer_folders_no_names(d, mp):
    p, data = _intensity(d, 4), _folder(d / "data", {"yak": 1, "zebra": 0}, 4)
    (d / "labels.txt").write_text("zebra\nyak\nc\nd\n")

    def fixed():
        got = load_data(data, model=_load(p, labels=d / "labels.txt"))
        assert got.class_map == {"yak": 1, "zebra": 0}

    return lambda: load_data(data, model=_load(p)), fixed


@refusal("the data has class folders 0..2 but the model has 2 outputs", "remove the folders 2..2")
def more_numbered_folders_than_outputs(d, mp):
    p, data = _intensity(d, 2), _folder(d / "data", {"0": 0, "1": 1, "2": 1}, 2)

    def fixed():
        for f in (data / "2").iterdir():
            f.unlink()
        (data / "2").rmdir()
        return load_data(data, model=_load(p))

    return lambda: load_data(data, model=_load(p)), fixed


@refusal("--class-order sorted maps the 2 class folders", "--class-order numeric")
def sorted_order_with_gaps(d, mp):
    p, data = _intensity(d), _folder(d / "data", {"0": 0, "10": 10})
    return (lambda: load_data(data, model=_load(p), class_order="sorted"),
            lambda: load_data(data, model=_load(p), class_order="numeric"))


@refusal("data class folder 3 is out of range for a model with 3 classes", "--class-order sorted")
def numeric_order_out_of_range(d, mp):
    p, data = _intensity(d, 3), _folder(d / "data", {"1": 0, "2": 1, "3": 2}, 3)
    return (lambda: load_data(data, model=_load(p), class_order="numeric"),
            lambda: load_data(data, model=_load(p), class_order="sorted"))


@refusal("data class folder 20 is out of range", r"remove the folder(s) 20")
def numbered_folder_beyond_outputs(d, mp):
    p, data = _intensity(d), _folder(d / "data", {"0": 0, "20": 11})

    def fixed():
        for f in (data / "20").iterdir():
            f.unlink()
        (data / "20").rmdir()
        return load_data(data, model=_load(p))

    return lambda: load_data(data, model=_load(p)), fixed


# ----------------------------------------------------------------------------- files
@refusal("model file .* is a folder", "give the file itself")
def model_path_is_a_folder(d, mp):
    p = _tiny(d)
    return lambda: _load(d), lambda: _load(p, input_size="3x16x16")


@refusal("is not a regular file .a FIFO", "give a regular file")
def model_path_is_a_fifo(d, mp):
    p = _tiny(d)
    os.mkfifo(d / "pipe.pt")
    return lambda: _load(d / "pipe.pt"), lambda: _load(p, input_size="3x16x16")


# ----------------------------------------------------------------------------- data loaded apart (API)
@refusal("the data is 3x16x16 but the model takes 3x8x8", "resize=True")
def api_data_loaded_without_the_model(d, mp):
    from audit.runner import check_fit

    x, y = _xy(4, (3, 16, 16))
    f, p = _tensors(d / "x.pt", x=x, y=y), _intensity(d, 4)
    model = _load(p, input_size="3x8x8")
    return (lambda: check_fit(model, load_data(f)),
            lambda: check_fit(model, load_data(f, model=model, resize=True)))


@refusal("the data's labels run 0..5 but the model has 4 outputs", "store labels 0..3")
def api_labels_beyond_outputs(d, mp):
    from audit.runner import check_fit

    x, y = _xy(6)
    f, p = _tensors(d / "x.pt", x=x, y=torch.arange(6)), _intensity(d, 4)
    model = _load(p, input_size="3x8x8")
    return (lambda: check_fit(model, load_data(f)),
            lambda: (_tensors(f, x=x, y=y), check_fit(model, load_data(f))))


@pytest.mark.parametrize("name", list(REFUSALS))
def test_the_fix_a_refusal_names_works(name, tmp_path, monkeypatch):
    fn, match, fix = REFUSALS[name]
    bad, fixed = fn(tmp_path, monkeypatch)
    with pytest.raises(UsageError) as e:
        bad()
    msg = str(e.value)
    assert e.value.exit_code == ExitCode.USAGE_ERROR
    assert "\n" not in msg and re.search(match, msg), msg
    what, named = split_fix(msg)
    assert what and fix in named, f"fix {named!r} of {msg!r}"
    fixed()  # raises if the fix does not work


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
    _intensity(d)
    _folder(d / "gray", {str(i): i for i in range(12)}, mode="L")
    _folder(d / "big", {str(i): i for i in range(12)}, size=16)
    _folder(d / "splits" / "train", {str(i): i for i in range(12)})
    _folder(d / "gaps", {"0": 0, "10": 10})
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
