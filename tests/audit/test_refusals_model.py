"""Refusals of model files and state_dicts: each names a fix, and the fix works (:mod:`tests.audit.refusal_kit`)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tests.audit.refusal_kit import check_refusal, load, registry, tiny, trace
from tests.tinymodels import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")

REFUSALS, refusal = registry()


# ----------------------------------------------------------------------------- model files
@refusal("not a model file this tool reads", "torch.jit.save")
def text_file(d, mp):
    (d / "m.pt").write_text("hello\n")
    return lambda: load(d / "m.pt"), lambda: (trace(TinyNet(), d / "m.pt"), load(d / "m.pt"))


@refusal("is empty", "re-save")
def empty_file(d, mp):
    (d / "m.pt").write_bytes(b"")
    return lambda: load(d / "m.pt"), lambda: (trace(TinyNet(), d / "m.pt"), load(d / "m.pt"))


@refusal("truncated or corrupt", "re-save")
def truncated_archive(d, mp):
    data = tiny(d).read_bytes()
    (d / "m.pt").write_bytes(data[: len(data) // 3])
    return lambda: load(d / "m.pt"), lambda: (trace(TinyNet(), d / "m.pt"), load(d / "m.pt"))


@refusal("zip file but not a PyTorch model", "torch.jit.save")
def foreign_zip(d, mp):
    with zipfile.ZipFile(d / "m.pt", "w") as z:
        z.writestr("readme.txt", "hi")
    return lambda: load(d / "m.pt"), lambda: (trace(TinyNet(), d / "m.pt"), load(d / "m.pt"))


def _save_safetensors(path):
    from safetensors.torch import save_file

    save_file(TinyNet().state_dict(), str(path))


@refusal("fails its checksum", "re-save")
def member_checksum(d, mp):
    src = tiny(d)
    with zipfile.ZipFile(src) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    raw = bytearray(src.read_bytes())
    with open(src, "rb") as f:  # the member's data starts after its local header
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    raw[info.header_offset + 30 + n + m] ^= 0xFF
    (d / "m.pt").write_bytes(bytes(raw))
    return lambda: load(d / "m.pt"), lambda: (trace(TinyNet(), d / "m.pt"), load(d / "m.pt", input_size="3x16x16"))


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
        assert load(d / "m.pt2", trust=True).num_classes == 4 and (d / "ran").exists()

    def bad():
        try:
            load(d / "m.pt2")
        finally:
            assert not (d / "ran").exists(), "the archive's code ran without --trust"

    return bad, fixed


@refusal("truncated safetensors", "re-save")
def truncated_safetensors(d, mp):
    (d / "w.safetensors").write_bytes((1000).to_bytes(8, "little") + b'{"a": 1}')
    return (lambda: load(d / "w.safetensors", arch="tinynet"),
            lambda: (_save_safetensors(d / "w.safetensors"), load(d / "w.safetensors", arch="tinynet",
                                                                  input_size="3x16x16")))


@refusal("corrupt safetensors", "re-save")
def corrupt_safetensors(d, mp):
    header = b'{"w": {"dtype": "F32", "shape": [9], "data_offsets": [0, 36]}}'
    (d / "w.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    return (lambda: load(d / "w.safetensors", arch="tinynet"),
            lambda: (_save_safetensors(d / "w.safetensors"), load(d / "w.safetensors", arch="tinynet",
                                                                  input_size="3x16x16")))


@refusal("cannot be read as a PyTorch file", "re-save")
def corrupt_legacy_pickle(d, mp):
    (d / "m.pt").write_bytes(b"\x80\x02garbage that is no pickle")
    return (lambda: load(d / "m.pt", arch="tinynet"),
            lambda: (torch.save(TinyNet().state_dict(), d / "m.pt"), load(d / "m.pt", arch="tinynet",
                                                                            input_size="3x16x16")))


@refusal("holds a list, neither a model nor a state_dict", "torch.save(model.state_dict(), path)")
def neither_model_nor_weights(d, mp):
    torch.save([1, 2, 3], d / "m.pt")
    return (lambda: load(d / "m.pt", arch="tinynet"),
            lambda: (torch.save(TinyNet().state_dict(), d / "m.pt"), load(d / "m.pt", arch="tinynet",
                                                                            input_size="3x16x16")))


@refusal("pickle that needs Python code", "re-run with --trust")
def pickle_without_trust(d, mp):
    torch.save(TinyNet(), d / "m.pt")

    def fixed():
        assert load(d / "m.pt", trust=True, input_size="3x16x16").ready
        trace(TinyNet(), d / "m.pt")  # the other fix it names: save it as TorchScript
        assert load(d / "m.pt", input_size="3x16x16").ready

    return lambda: load(d / "m.pt"), fixed


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
        assert load(d / "m.pt", trust=True, input_size="3x8x8").num_classes == 4

    return lambda: load(d / "m.pt", trust=True), fixed


@refusal("whose graph calls aten::from_file", "--trust")
def graph_touches_files(d, mp):
    from tests.audit.test_model import _MapsAFile

    (d / "victim.bin").write_bytes(b"\0" * 16)
    torch.jit.script(_MapsAFile(str(d / "victim.bin"))).save(str(d / "m.pt"))
    return (lambda: load(d / "m.pt", input_size="3x8x8"),
            lambda: load(d / "m.pt", input_size="3x8x8", trust=True))


@refusal("not in the local torch hub cache", "fetch them once")
def torchvision_weights_not_cached(d, mp):
    import torchvision

    mp.setenv("TORCH_HOME", str(d / "torch"))
    name = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"

    def fetch():  # what fetching them once puts there
        cache = d / "torch" / "hub" / "checkpoints"
        cache.mkdir(parents=True)
        torch.save(torchvision.models.mobilenet_v3_small().state_dict(), cache / "mobilenet_v3_small-047dcff4.pth")
        assert load(None, weights=name, input_size="3x32x32").num_classes == 1000

    return lambda: load(None, weights=name), fetch


def _rewrite(src: Path, dst: Path, member_suffix: str, data: bytes) -> Path:
    """A copy of the zip archive ``src`` whose member ending in ``member_suffix`` holds ``data``."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, data if info.filename.endswith(member_suffix) else z.read(info.filename))
    return dst


@refusal("is a TorchScript archive that fails to load", "re-save it with torch")
def torchscript_that_fails_to_load(d, mp):
    _rewrite(tiny(d), d / "m.pt", "/data.pkl", b"\x80\x02garbage")
    return lambda: load(d / "m.pt"), lambda: (trace(TinyNet(), d / "m.pt"), load(d / "m.pt", input_size="3x16x16"))


def _export(path: Path) -> Path:
    torch.export.save(torch.export.export(TinyNet().eval(), (torch.rand(2, 3, 16, 16),)), str(path))
    return path


@refusal("is a torch.export archive that fails to load", "re-export it with torch")
def export_that_fails_to_load(d, mp):
    _rewrite(_export(d / "ok.pt2"), d / "m.pt2", "models/model.json", b'{"graph_module": 1}')
    return lambda: load(d / "m.pt2"), lambda: (_export(d / "m.pt2"), load(d / "m.pt2"))


@refusal("no model file given", "--weights NAME")
def no_model_file(d, mp):
    p = tiny(d)
    return lambda: load(None), lambda: load(p, input_size="3x16x16")


# ----------------------------------------------------------------------------- state_dicts
@refusal("holds only weights", "--arch NAME")
def state_dict_without_arch(d, mp):
    torch.save(TinyNet().state_dict(), d / "sd.pt")
    return lambda: load(d / "sd.pt"), lambda: load(d / "sd.pt", arch="tinynet", input_size="3x16x16")


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
    return (lambda: load(d / "sd.pt", arch="i16-convhead"),
            lambda: load(d / "sd.pt", arch="i16-convhead", num_classes=5, input_size="3x8x8"))


@refusal("unknown --arch 'tinynett'", "audit list --archs")
def unknown_arch(d, mp):
    torch.save(TinyNet().state_dict(), d / "sd.pt")
    return (lambda: load(d / "sd.pt", arch="tinynett"),
            lambda: load(d / "sd.pt", arch="tinynet", input_size="3x16x16"))


@refusal("do not fit --arch resnet18", "pass the --arch it was trained with")
def arch_does_not_fit(d, mp):
    torch.save(TinyNet().state_dict(), d / "sd.pt")
    return (lambda: load(d / "sd.pt", arch="resnet18"),
            lambda: load(d / "sd.pt", arch="tinynet", input_size="3x16x16"))


@refusal("the keys fit only after removing the prefix 'model.'", "--num-classes")
def prefixed_weights_other_class_count(d, mp):
    torch.save({"state_dict": {f"model.{k}": v for k, v in TinyNet(7).state_dict().items()}}, d / "l.ckpt")
    return (lambda: load(d / "l.ckpt", arch="tinynet", num_classes=4),
            lambda: load(d / "l.ckpt", arch="tinynet", num_classes=7, input_size="3x16x16"))


@pytest.mark.parametrize("name", list(REFUSALS))
def test_the_fix_a_refusal_names_works(name, tmp_path, monkeypatch):
    check_refusal(REFUSALS[name], tmp_path, monkeypatch)
