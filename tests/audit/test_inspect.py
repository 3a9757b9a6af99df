"""``audit inspect``: one line per thing detected and where it came from, problems with their
fix, exit 0 or 4, ``--json``; one case per kind of model or data a user brings."""
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from audit.cli import main
from audit.errors import ExitCode
from audit.inspection import FIELDS, inspect_model
from tests.audit.test_model_behaviour import _save, _train_mode_net
from tests.tinymodels import IntensityNet, TinyNet, intensity_folder, save_intensity_net

pytestmark = pytest.mark.usefixtures("one_thread")


def _inspect(capsys, *argv):
    rc = main(["inspect", *map(str, argv)])
    out = capsys.readouterr()
    lines = dict(ln.strip().split(": ", 1) for ln in out.out.splitlines() if ": " in ln)
    return rc, out.out, lines


class SharpSoftmax(nn.Module):
    """IntensityNet's scores times 100, through a softmax: probabilities of exactly 0 and 1."""

    def __init__(self):
        super().__init__()
        self.inner = IntensityNet(12)

    def forward(self, x):
        return (100 * self.inner(x)).softmax(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    _save(_train_mode_net("bn"), "traced", d / "bn.pt")
    _save(_train_mode_net("dropout"), "traced", d / "dropout.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(SharpSoftmax().eval(), torch.rand(2, 3, 8, 8)), str(d / "softmax.pt"))
    save_intensity_net(d / "intensity.pt")
    torch.manual_seed(0)
    torch.save(TinyNet().eval().half(), d / "half.pt")
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in TinyNet().state_dict().items()}},
               d / "lightning.ckpt")
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(8, 3, 16, 16, generator=g), "y": torch.arange(8) % 4}, d / "rgb16.pt")
    np.savez(d / "last.npz", x=(np.random.default_rng(0).random((8, 16, 16, 3)) * 255).astype(np.uint8),
             y=np.arange(8) % 4)
    intensity_folder(d / "numeric", {str(i): i for i in range(12)}, 12)  # folder "10" is output 10
    intensity_folder(d / "gray", {str(i): i for i in range(12)}, 12, mode="L")
    for split in ("train", "val"):
        intensity_folder(d / "splits" / split, {str(i): i for i in range(12)}, 12, per_class=1)
    return d


def test_every_field_is_printed_in_order_and_the_json_has_the_same(files, capsys):
    rc, out, lines = _inspect(capsys, files / "lightning.ckpt", "--arch", "tinynet", "--data", files / "rgb16.pt")
    assert rc == ExitCode.OK, out
    assert list(lines)[:len(FIELDS)] == list(FIELDS)
    assert lines["auditable"] == "yes"
    rc_j, out_j, _ = _inspect(capsys, files / "lightning.ckpt", "--arch", "tinynet", "--data", files / "rgb16.pt",
                              "--json")
    d = json.loads(out_j)
    assert rc_j == ExitCode.OK and d["exit_code"] == 0 and d["problems"] == []
    assert {k: d[k] for k in FIELDS} == {k: lines[k] for k in FIELDS}
    assert d["details"]["model"]["format"] == "state_dict" and d["details"]["data"]["n"] == 8


def test_lightning_checkpoint_prefix(files, capsys):
    rc, out, lines = _inspect(capsys, files / "lightning.ckpt", "--arch", "tinynet", "--input-size", "3x16x16")
    assert rc == ExitCode.OK, out
    assert lines["format"].startswith("state_dict, built as --arch tinynet")
    assert "the prefix 'model.' was removed" in lines["output"]
    assert lines["input"] == "3x16x16 from flags"
    assert lines["classes"].startswith("4 from the weights file")
    rc, out, lines = _inspect(capsys, files / "lightning.ckpt")  # without --arch: refused, the fix named
    assert rc == ExitCode.USAGE_ERROR
    assert "holds only weights" in lines["problem"] and "--arch NAME" in lines["fix"]
    assert lines["auditable"] == "no (exit 4)"


def test_train_mode_trace_with_batchnorm_is_refused_with_the_fix(files, capsys):
    rc, out, lines = _inspect(capsys, files / "bn.pt", "--data", files / "rgb16.pt")
    assert rc == ExitCode.USAGE_ERROR, out
    assert lines["format"].startswith("TorchScript")
    assert lines["mode"].startswith("batch-dependent") and lines["mode"].endswith("refused")
    assert lines["input"] == "3x16x16 from the data"  # what was found before the refusal is still there
    assert lines["output"] == "logits (N, 4); adaptations: the model was saved in train mode; eval() was applied " \
        "(BatchNorm uses its running statistics unless a trace or export fixed the mode: then it is refused)"
    assert "depends on the other images in its batch" in lines["problem"]
    assert lines["fix"].startswith("re-export the model in eval mode")
    assert "--input-size" not in out.split("problem:")[1]  # the shape is not the problem


def test_train_mode_trace_with_dropout_is_flagged_stochastic(files, capsys):
    rc, out, lines = _inspect(capsys, files / "dropout.pt", "--input-size", "3x16x16")
    assert rc == ExitCode.OK, out
    assert "batch-independent; stochastic" in lines["mode"] and "saved in train mode" in lines["mode"]
    import audit

    ins = audit.inspect_model(files / "dropout.pt", input_size="3x16x16", device="cpu")  # the API
    assert ins.exit_code == 0 and ins.to_dict()["details"]["model"]["stochastic"] is True
    assert ins.text().splitlines()[2] == f"mode: {lines['mode']}"


def test_softmax_with_saturated_probabilities(files, capsys):
    rc, out, lines = _inspect(capsys, files / "softmax.pt", "--data", files / "numeric")
    assert rc == ExitCode.OK, out
    assert lines["output"].startswith("probabilities (rows sum to 1) (N, 12)")
    assert "the model's softmax saturates: on 24 of 24 data images" in lines["note"]
    # the same model without the saturation (a gentle softmax): no note
    ins = inspect_model(files / "intensity.pt", data=files / "numeric", device="cpu")
    assert not any("saturates" in n for n in ins.notes) and ins.model.output_kind == "logits"


def test_gray_data_for_an_rgb_model_names_convert_channels_which_works(files, capsys):
    rc, out, lines = _inspect(capsys, files / "intensity.pt", "--data", files / "gray")
    assert rc == ExitCode.USAGE_ERROR, out
    assert "has 1 channel(s) but the model takes 3" in lines["problem"] and "--convert-channels" in lines["fix"]
    assert lines["input"].startswith("3x8x8 from probing the model")
    rc, out, lines = _inspect(capsys, files / "intensity.pt", "--data", files / "gray", "--convert-channels")
    assert rc == ExitCode.OK, out
    assert lines["data"].startswith("24 images, 12 classes, 3x8x8")


def test_numeric_class_folders_are_mapped_by_the_predictions(files, capsys):
    rc, out, lines = _inspect(capsys, files / "intensity.pt", "--data", files / "numeric")
    assert rc == ExitCode.OK, out
    cm = lines["class map vs data"]
    assert "mapped to the number each name spells (folder 10 -> output 10, not 2)" in cm
    assert "100.0% of 24 images" in cm
    rc, out, lines = _inspect(capsys, files / "intensity.pt", "--data", files / "numeric", "--class-order", "sorted")
    assert rc == ExitCode.OK and "sorted" in lines["class map vs data"]


def test_half_precision_module(files, capsys):
    rc, out, lines = _inspect(capsys, files / "half.pt", "--trust", "--input-size", "3x16x16")
    assert rc == ExitCode.OK, out
    assert lines["dtype"].startswith("float16 weights, computed in float32 on cpu")
    assert lines["format"].startswith("pickled nn.Module")
    rc, out, lines = _inspect(capsys, files / "half.pt")  # without --trust: refused, naming it
    assert rc == ExitCode.USAGE_ERROR and "--trust" in lines["fix"]


def test_channels_last_npz(files, capsys):
    rc, out, lines = _inspect(capsys, files / "lightning.ckpt", "--arch", "tinynet", "--data", files / "last.npz")
    assert rc == ExitCode.OK, out
    assert "x is stored channels-last (N, H, W, C) [8, 16, 16, 3]: transposed" in out
    assert lines["input"] == "3x16x16 from the data"
    assert lines["class map vs data"] == "the tensor file's labels y are the model's output indices"


def test_split_folders_evaluate_val(files, capsys):
    rc, out, lines = _inspect(capsys, files / "intensity.pt", "--data", files / "splits")
    assert rc == ExitCode.OK, out
    assert "holds split folders (train/, val/): the val/ split is evaluated" in out
    assert lines["data"].startswith("12 images, 12 classes") and lines["data"].endswith("val")


def test_unknown_input_size_is_a_problem_naming_the_fix(files, capsys):
    rc, out, lines = _inspect(capsys, files / "intensity.pt")
    assert rc == ExitCode.USAGE_ERROR
    assert lines["input"] == "unknown" and "--input-size CxHxW" in lines["fix"]
    rc, out, lines = _inspect(capsys, files / "intensity.pt", "--input-size", "3x8x8")
    assert rc == ExitCode.OK, out


def test_no_model_at_all(capsys):
    assert main(["inspect"]) == ExitCode.USAGE_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("audit: error: no model given; pass a model file (audit inspect MODEL") and len(err.splitlines()) == 1
