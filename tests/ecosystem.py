"""Tiny models of the ecosystem's formats, built offline and saved the way their libraries (and
the hub) store them: a timm hub folder, a state_dict for ``--arch timm:NAME``, transformers
folders (``save_pretrained`` with an image processor), ONNX exports and a PyTorch Lightning
checkpoint. Each is trained for a few steps on the pattern images so that its accuracy means
something; everything runs in seconds on a CPU."""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tests.tinymodels import PATTERNS, TinyNet, fit, make_patterns

#: the timm ViT's construction arguments (recorded as ``model_args`` in its config.json)
TIMM_VIT_ARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)


def patterns(size: int, n_per_class: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4 pattern classes (:func:`tests.tinymodels.make_patterns`) at ``size`` x ``size``."""
    return make_patterns(n_per_class, seed=seed, size=size)


def write_folder(root: Path, x: torch.Tensor, y: torch.Tensor, names=PATTERNS) -> Path:
    """An ImageFolder of PNGs (8-bit, so what the audit reads is exactly what is saved)."""
    from PIL import Image

    for i, (img, c) in enumerate(zip(x, y.tolist())):
        d = root / names[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


def read_folder(root: Path) -> tuple[list, list[int]]:
    """The PIL images of an ImageFolder (RGB) and their class indices in :data:`PATTERNS`."""
    from PIL import Image

    imgs, ys = [], []
    for c, name in enumerate(PATTERNS):
        for p in sorted((root / name).glob("*.png")):
            imgs.append(Image.open(p).convert("RGB"))
            ys.append(c)
    return imgs, ys


def _train(net: nn.Module, size: int, *, steps: int, mean=0.5, std=0.5, logits=lambda out: out) -> nn.Module:
    """A few Adam steps on normalized pattern images; the net in eval mode."""
    x, y = patterns(size, 30, seed=11)
    x = (x - mean) / std
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = nn.functional.cross_entropy(logits(net(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


# ----------------------------------------------------------------------------- timm
def timm_vit(steps: int = 60) -> nn.Module:
    import timm

    net = timm.create_model("vit_tiny_patch16_224", num_classes=len(PATTERNS), **TIMM_VIT_ARGS)
    return _train(net, 32, steps=steps)


def save_timm_folder(net: nn.Module, folder: Path, *, crop_pct: float = 1.0, bin_weights: bool = False) -> Path:
    """``timm.models.save_for_hf``: config.json (architecture, model_args, pretrained_cfg with
    ``crop_pct``, label_names) and model.safetensors (pytorch_model.bin with ``bin_weights``)."""
    import timm

    timm.models.save_for_hf(net, folder, model_config={"label_names": list(PATTERNS)},
                            safe_serialization=not bin_weights, data_config={"crop_pct": crop_pct})
    return folder


def timm_cnn_state_dict(path: Path, name: str = "test_resnet", steps: int = 30) -> Path:
    """A timm CNN (``name``), briefly trained at 16x16 and saved as a plain state_dict."""
    import timm

    net = _train(timm.create_model(name, num_classes=len(PATTERNS)), 16, steps=steps)
    torch.save(net.state_dict(), path)
    return path


# ----------------------------------------------------------------------------- transformers
def _id2label() -> dict:
    return dict(enumerate(PATTERNS))


def save_hf_vit(folder: Path, steps: int = 60) -> Path:
    """A tiny ``ViTForImageClassification`` (32x32, patch 8) with ``id2label``, trained briefly,
    ``save_pretrained`` beside a ``ViTImageProcessor`` (32x32, mean = std = 0.5)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, num_labels=4, id2label=_id2label(),
                    label2id={v: k for k, v in _id2label().items()})
    torch.manual_seed(0)
    net = _train(ViTForImageClassification(cfg), 32, steps=steps, logits=lambda out: out.logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def save_hf_resnet(folder: Path, *, labels: bool = True) -> Path:
    """A tiny untrained ``ResNetForImageClassification`` (``id2label`` the patterns, or the
    default ``LABEL_i``) beside a ``ConvNextImageProcessor`` (shortest edge 32, crop_pct
    0.875, bicubic, ImageNet mean/std), as ``microsoft/resnet-50`` is stored."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    extra = dict(id2label=_id2label(), label2id={v: k for k, v in _id2label().items()}) if labels else {}
    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4,
                       **extra)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ResNetForImageClassification(cfg).eval().save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, resample=3,
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- ONNX
def tiny_net(steps: int = 120) -> TinyNet:
    """:class:`TinyNet` trained on 16x16 patterns (pixels in [0, 1], no normalization)."""
    torch.manual_seed(0)
    x, y = patterns(16, 30, seed=5)
    return fit(TinyNet(), x, y, steps=steps, batch=32, generator=torch.Generator().manual_seed(0))


class ReshapeNet(TinyNet):
    """:class:`TinyNet` flattening with ``reshape(x.shape[0], -1)``: exported at a fixed batch
    size, the ONNX graph reshapes to that constant, so it runs at no other batch size."""

    def forward(self, x):
        return self.fc(self.features(x).reshape(x.shape[0], -1))


def reshape_net(tiny: TinyNet) -> ReshapeNet:
    net = ReshapeNet()
    net.load_state_dict(tiny.state_dict())
    return net.eval()


def export_onnx(net: nn.Module, path: Path, *, dynamic_batch: bool = True, batch: int = 2, opset: int = 17) -> Path:
    """``torch.onnx.export`` (the TorchScript-based exporter, ``dynamo=False``: it needs no
    onnxscript) of ``net`` on 16x16 images, the batch dynamic or fixed at ``batch``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.rand(batch, 3, 16, 16),), str(path), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None)
    return path


# ----------------------------------------------------------------------------- Lightning
@dataclass
class TrainConfig:
    """A user's own config class kept in a Lightning checkpoint's ``hyper_parameters``: loading
    it needs this module's code."""

    lr: float = 0.01
    width: int = 8


class Tripwire:
    """Unpickling runs ``tests.ecosystem._tripwire(path)``, which writes a file: a stand-in for code a
    checkpoint could run when it is loaded with code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_tripwire, (self.path,))


def _tripwire(path: str) -> str:
    Path(path).write_text("ran")
    return path


def save_lightning_ckpt(net: nn.Module, path: Path, *, tripwire: Path | None = None) -> Path:
    """A PyTorch Lightning ``.ckpt`` as ``Trainer.save_checkpoint`` writes it (no lightning
    needed): the LightningModule's state_dict under its attribute ``model.`` (and a loss weight
    outside it), ``hyper_parameters`` holding an ``argparse.Namespace`` and a
    :class:`TrainConfig` (and a :class:`Tripwire` when ``tripwire`` names a file), optimizer
    and callback states, the version."""
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    sd = {f"model.{k}": v for k, v in net.state_dict().items()}
    sd["criterion.weight"] = torch.ones(len(PATTERNS))
    hp = {"args": argparse.Namespace(lr=0.01, epochs=3), "config": TrainConfig()}
    if tripwire is not None:
        hp["hook"] = Tripwire(str(tripwire))
    torch.save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
                "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [], "hparams_name": "kwargs",
                "hyper_parameters": hp}, path)
    return path
