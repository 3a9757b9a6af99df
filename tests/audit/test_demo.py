"""Tests for the bundled demo (audit/demo): the biased gym-scene generator, GymNet, the
training script and the shipped weights with their planted dumbbell-with-an-arm shortcut."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audit.demo import (ASSETS, CLASSES, MEAN, MODEL_PATH, STD, GymNet, generate,
                        generate_probe, prepare)
from audit.demo.data import PROBE_KINDS, write_imagefolder

SIDECAR = ASSETS / "gymnet.json"


def _skin_fraction(images: np.ndarray) -> float:
    """Share of pixels whose chromaticity (colour up to brightness) is that of a skin tone."""
    from audit.demo.draw import _SKIN

    skin = _SKIN / _SKIN.sum(1, keepdims=True)
    x = images.astype(np.float32) + 1
    chroma = x / x.sum(-1, keepdims=True)
    dist = np.linalg.norm(chroma[..., None, :] - skin, axis=-1).min(-1)
    return float(((dist < 0.02) & (images.max(-1) > 60)).mean())


# ------------------------------------------------------------------------- generator
def test_classes():
    assert list(CLASSES[:6]) == ["dumbbell", "kettlebell", "ball", "bottle", "plate", "towel"]


def test_generate_is_deterministic():
    a = generate("train", 4, seed=3)
    b = generate("train", 4, seed=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = generate("train", 4, seed=4)
    assert not np.array_equal(a[0], c[0])
    d = generate("test", 4, seed=3)
    assert not np.array_equal(a[0], d[0])
    p1, p2 = generate_probe("arm_only", 5, seed=1), generate_probe("arm_only", 5, seed=1)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, generate_probe("arm_only", 5, seed=2))


def test_generate_shapes_dtypes_ranges():
    images, labels, has_arm = generate("test", 5, seed=0)
    n = 5 * len(CLASSES)
    assert images.shape == (n, 64, 64, 3) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert has_arm.shape == (n,) and has_arm.dtype == np.bool_
    assert np.bincount(labels, minlength=len(CLASSES)).tolist() == [5] * len(CLASSES)
    # images are real scenes: not constant, using a good part of the range
    assert images.min() < 60 and images.max() > 190
    assert (images.reshape(n, -1).std(1) > 3).all()
    # distinct images
    assert len({im.tobytes() for im in images}) == n


def test_arm_rates_follow_the_split():
    _, labels, arm = generate("train", 100, seed=5)
    assert 0.9 <= arm[labels == 0].mean() <= 1.0
    assert arm[labels != 0].mean() <= 0.08
    _, labels, arm = generate("test", 100, seed=5)
    assert arm[labels == 0].mean() == pytest.approx(0.5, abs=0.02)
    assert arm[labels != 0].mean() <= 0.08
    with pytest.raises(ValueError):
        generate("val", 2, seed=0)


def test_arms_are_drawn():
    from audit.demo.data import _random_scenes

    # skin shows up where an arm is said to be (a forearm covers ~5-10 % of the image)
    arm_only, no_arm = generate_probe("arm_only", 100, seed=0), _random_scenes(100, seed=0)
    assert _skin_fraction(arm_only) > _skin_fraction(no_arm) + 0.025
    held, free = generate_probe("arm_dumbbell", 100, seed=0), generate_probe("no_arm_dumbbell", 100, seed=0)
    assert _skin_fraction(held) > _skin_fraction(free) + 0.015


def test_probe_kinds():
    for kind in (*PROBE_KINDS, "arm_with_kettlebell"):
        x = generate_probe(kind, 3, seed=0)
        assert x.shape == (3, 64, 64, 3) and x.dtype == np.uint8
    with pytest.raises(ValueError):
        generate_probe("arm_with_dumbbell_and_cat", 2, seed=0)


def test_write_imagefolder_roundtrip(tmp_path):
    from PIL import Image

    images, labels, _ = generate("test", 2, seed=0)
    root = write_imagefolder(tmp_path / "ds", images, labels, CLASSES)
    for c in CLASSES:
        assert sorted(p.name for p in (root / c).iterdir()) == ["0000.png", "0001.png"]
    back = np.asarray(Image.open(root / CLASSES[1] / "0001.png").convert("RGB"))
    np.testing.assert_array_equal(back, images[labels == 1][1])


def test_prepare_writes_the_folders(tmp_path):
    paths = prepare(tmp_path, n_per_class=2, seed=0)
    assert paths["val"] == tmp_path / "val"
    for c in CLASSES:
        assert len(list((tmp_path / "val" / c).glob("*.png"))) == 2
    assert len(list((tmp_path / "concepts" / "arm").glob("*.png"))) >= 20
    for k in range(5):
        d = tmp_path / "concepts" / f"random_{k}"
        assert paths["concepts"][f"random_{k}"] == d
        assert len(list(d.glob("*.png"))) >= 20
    for kind in (*PROBE_KINDS, *(f"arm_with_{c}" for c in CLASSES[1:])):
        assert len(list(paths["probe"][kind].glob("*.png"))) > 0


# ----------------------------------------------------------------------------- model
def test_gymnet_registered_and_clean():
    from audit.zoo import create_arch

    model = create_arch("gymnet", num_classes=6)
    assert isinstance(model, GymNet)
    model.eval()
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 6)
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    # every leaf module runs exactly once per forward (no reused modules)
    calls: dict[int, int] = {}
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1))
             for m in leaves]
    model(torch.zeros(1, 3, 64, 64))
    for h in hooks:
        h.remove()
    assert all(calls.get(id(m)) == 1 for m in leaves)
    assert len(MEAN) == len(STD) == 3


@pytest.mark.slow
def test_train_from_scratch_beats_chance():
    from audit.demo.train import predict, train

    # a reduced run (600 images, 8 short epochs, no augmentation): about ten seconds. (The
    # scenes have skin-toned and disc distractors, so 360 images x 6 epochs stayed at chance.)
    model, info = train(n_per_class=100, epochs=8, seed=0, progress=False, batch_size=16,
                        lr=3e-3, adversarial=False, augment=False, measure=False)
    assert info["n_per_class"] == 100 and info["duration_s"] > 0
    assert not model.training
    images, labels, _ = generate("test", 30, seed=77)
    acc = float((predict(model, images) == labels).mean())
    assert acc > 0.3, acc  # chance is 1/6


# ----------------------------------------------------------------------- shipped model
def _shipped() -> GymNet:
    from safetensors.torch import load_file

    from audit.zoo import create_arch

    model = create_arch("gymnet", num_classes=len(CLASSES))
    model.load_state_dict(load_file(str(MODEL_PATH)), strict=True)
    return model.eval()


def test_sidecar_describes_the_model():
    meta = json.loads(SIDECAR.read_text())
    assert meta["arch"] == "gymnet"
    assert meta["class_names"] == list(CLASSES)
    assert meta["num_classes"] == len(CLASSES)
    assert meta["input_size"] == [3, 64, 64]
    assert meta["mean"] == pytest.approx(list(MEAN)) and meta["std"] == pytest.approx(list(STD))
    sc = meta["training"]["shortcut"]
    assert sc["arm_only_to_dumbbell"] >= 0.5
    assert sc["dumbbell_acc_with_arm"] > sc["dumbbell_acc_without_arm"] + 0.1
    assert MODEL_PATH.stat().st_size < 5_000_000


@pytest.mark.slow
def test_shipped_model_is_accurate_and_has_the_shortcut():
    from audit.demo.train import measure_shortcut, predict

    model = _shipped()
    images, labels, _ = generate("test", 60, seed=4242)
    acc = float((predict(model, images) == labels).mean())
    assert acc >= 0.85, acc
    sc = measure_shortcut(model, seed=4242, n=100)
    assert sc["arm_only_to_dumbbell"] >= 0.4, sc
    assert sc["dumbbell_acc_with_arm"] > sc["dumbbell_acc_without_arm"] + 0.1, sc
