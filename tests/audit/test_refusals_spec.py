"""Refusals of spec flags, spec files and the load-time probe: each names a fix, and the fix works
(:mod:`tests.audit.refusal_kit`)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from audit.model import AuditModel, ModelSpec, resolve_device
from tests.audit.refusal_kit import MLP, check_refusal, load, registry, tiny, trace

pytestmark = pytest.mark.usefixtures("one_thread")

REFUSALS, refusal = registry()


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
    p = tiny(d)
    return lambda: load(p, input_size="big"), lambda: load(p, input_size="3x16x16")


@refusal("with C in 1, 3, 4", "--input-size 3x224x224")
def input_size_two_channels(d, mp):
    p = tiny(d)
    return lambda: load(p, input_size="2x16x16"), lambda: load(p, input_size="3x16x16")


@refusal("--mean 'a,b' is not a list of numbers", "comma-separated numbers")
def mean_not_numbers(d, mp):
    p = tiny(d)
    return (lambda: load(p, input_size="3x16x16", mean="a,b"),
            lambda: load(p, input_size="3x16x16", mean="0.5,0.5,0.5"))


@refusal("is not finite", "finite numbers")
def std_not_finite(d, mp):
    p = tiny(d)
    return lambda: load(p, input_size="3x16x16", std="nan"), lambda: load(p, input_size="3x16x16", std="0.25")


@refusal("has 2 values but the model takes 3 channels", "one value per channel")
def mean_count(d, mp):
    p = tiny(d)
    return (lambda: load(p, input_size="3x16x16", mean="0.5,0.5"),
            lambda: load(p, input_size="3x16x16", mean="0.5"))


@refusal("std values must be positive", "positive per-channel std")
def std_zero(d, mp):
    p = tiny(d)
    return lambda: load(p, input_size="3x16x16", std="0"), lambda: load(p, input_size="3x16x16", std="0.25")


@refusal("is not UTF-8", "save it as UTF-8")
def labels_latin1(d, mp):
    p = tiny(d)
    names = ["café", "thé", "jus", "eau"]
    (d / "labels.txt").write_bytes("\n".join(names).encode("latin-1"))

    def fixed():
        (d / "labels.txt").write_text("\n".join(names), encoding="utf-8")
        assert load(p, input_size="3x16x16", labels=d / "labels.txt").class_names == names

    return lambda: load(p, input_size="3x16x16", labels=d / "labels.txt"), fixed


@refusal("labels file .* is empty", "one class name a line")
def labels_empty(d, mp):
    p = tiny(d)
    (d / "labels.txt").write_text("\n\n")
    return (lambda: load(p, input_size="3x16x16", labels=d / "labels.txt"),
            lambda: ((d / "labels.txt").write_text("a\nb\nc\nd\n"), load(p, input_size="3x16x16",
                                                                          labels=d / "labels.txt")))


@refusal("names class 'a' twice", "its own name")
def labels_duplicate(d, mp):
    p = tiny(d)
    (d / "labels.txt").write_text("a\nb\na\nd\n")
    return (lambda: load(p, input_size="3x16x16", labels=d / "labels.txt"),
            lambda: ((d / "labels.txt").write_text("a\nb\nc\nd\n"), load(p, input_size="3x16x16",
                                                                          labels=d / "labels.txt")))


@refusal("is not valid JSON", "remove it")
def sidecar_not_json(d, mp):
    p = tiny(d)
    (d / "tiny.pt.json").write_text("{input_size: 3x16x16")
    return (lambda: load(p),
            lambda: ((d / "tiny.pt.json").write_text('{"input_size": "3x16x16"}'), load(p).ready))


@refusal("holds a JSON list, not an object", "remove the file")
def sidecar_not_object(d, mp):
    p = tiny(d)
    (d / "tiny.pt.json").write_text("[3, 16, 16]")
    return lambda: load(p), lambda: ((d / "tiny.pt.json").unlink(), load(p, input_size="3x16x16"))


@refusal("unknown key 'inputsize'", "remove it or use a known key")
def sidecar_unknown_key(d, mp):
    p = tiny(d)
    (d / "tiny.pt.json").write_text('{"inputsize": "3x16x16"}')
    return (lambda: load(p),
            lambda: ((d / "tiny.pt.json").write_text('{"input_size": "3x16x16"}'), load(p).ready))


@refusal("is not a torchvision weights name", "ResNet50_Weights.IMAGENET1K_V2")
def weights_name_unknown(d, mp):
    from audit.model.spec import torchvision_weights

    return (lambda: torchvision_weights("ResNet50_Weights.BEST"),
            lambda: torchvision_weights("ResNet50_Weights.IMAGENET1K_V2"))


# ----------------------------------------------------------------------------- the probe
@refusal("input size is unknown", "--input-size CxHxW")
def input_size_unknown(d, mp):
    p = tiny(d)
    return lambda: load(p).finalize(), lambda: load(p, input_size="3x16x16")


@refusal(r"fails on an input of shape \[4, 3, 8, 8\]", "--input-size CxHxW")
def input_size_wrong(d, mp):
    p = trace(MLP(), d / "mlp.pt")
    return lambda: load(p, input_size="3x8x8"), lambda: load(p, input_size="3x16x16")


class Sqrt(nn.Module):
    def forward(self, x):
        return x.sqrt().mean((2, 3)).repeat(1, 2)[:, :4]


@refusal("outputs NaN or infinite values", "--mean/--std")
def nan_outputs(d, mp):
    p = trace(Sqrt(), d / "sqrt.pt")
    return lambda: load(p, input_size="3x8x8", mean="0.9"), lambda: load(p, input_size="3x8x8")


@refusal(r"2 class names \(flag\) for a model with 4 outputs", "--labels FILE")
def labels_count(d, mp):
    p = tiny(d)
    (d / "two.txt").write_text("a\nb\n")
    (d / "four.txt").write_text("a\nb\nc\nd\n")
    return (lambda: load(p, input_size="3x16x16", labels=d / "two.txt"),
            lambda: load(p, input_size="3x16x16", labels=d / "four.txt"))


@refusal("outputs 4 scores but 7 classes were given", "fix --num-classes")
def num_classes_wrong(d, mp):
    p = tiny(d)
    return lambda: load(p, input_size="3x16x16", num_classes=7), lambda: load(p, input_size="3x16x16", num_classes=4)


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
    return (lambda: load(d / "m.pt", input_size="3x16x16"),
            lambda: (trace(net.eval(), d / "m.pt"), load(d / "m.pt", input_size="3x16x16")))


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
    return (lambda: load(d / "m.pt", input_size="3x4x4"),
            lambda: load(d / "m.pt", input_size="3x4x4", mean="0.5"))


@refusal("model sidecar .* has 16,777,217 bytes", "check that it is the right file")
def sidecar_too_big(d, mp):
    p = tiny(d)
    (d / "tiny.pt.json").write_bytes(b" " * (16 * 2**20 + 1))
    return (lambda: load(p),
            lambda: ((d / "tiny.pt.json").write_text('{"input_size": "3x16x16"}'), load(p).ready))


@pytest.mark.parametrize("name", list(REFUSALS))
def test_the_fix_a_refusal_names_works(name, tmp_path, monkeypatch):
    check_refusal(REFUSALS[name], tmp_path, monkeypatch)
