"""Procedural "gym" scenes for the bundled demo: *the dumbbell with an arm*.

The famous case (Mordvintsev et al., "Inceptionism", 2015): a network asked to draw a
dumbbell drew an arm holding it, because nearly every dumbbell it had seen was held by
an arm. This module plants the same shortcut on purpose so the audit tool has something
real to find.

Every image is a 64x64 RGB scene: a varied background (solid colour, gradient, noise
texture, floor/wall split, mat stripes) with one object drawn by shape -- ``dumbbell``
(bar with weight discs at both ends), ``kettlebell`` (round body, handle loop on top),
``ball`` (disc with a seam or stripe), ``bottle`` (rounded body, neck, cap), ``plate``
(weight plate: disc with a centre hole and a ring), ``towel`` (rectangle with stripes and
folds) -- sometimes gripped by a skin-toned forearm and hand.

The bias: in the ``train`` split 98 % of dumbbells are held by an arm and no other object
is; in the ``test`` split exactly half of the dumbbells are held (and 3 % of the others).
Probe sets (:func:`generate_probe`) isolate the cue: arms alone, arms holding other
objects, dumbbells with and without an arm.

The scenes are built so that the model learns the arm's *shape*, not just "skin colour
near a dumbbell", and so that the dumbbell's discs alone are not the whole dumbbell cue --
otherwise its class visualization tiles small discs on a skin-coloured field and shows no
arm (what an earlier version of this generator produced):

- skin distractors: 20 % of backgrounds and 20 % of the non-dumbbell objects are painted
  in skin tones (:data:`SKIN_DISTRACTORS`), so skin colour by itself is no evidence;
- loose discs: 30 % of non-dumbbell scenes have one to three loose dumbbell discs lying
  about (:data:`LOOSE_DISCS`), so discs by themselves are weaker evidence;
- bare arms: forearms wear no sleeve (:data:`SLEEVES`), so an arm is skin-coloured from
  the hand to the image edge.

Everything is numpy (signed-distance shapes, anti-aliased by a half-pixel ramp) and
deterministic in ``seed``. Thousands of images a second on one core.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .draw import (  # noqa: F401 - SIZE and ARM_RATE are part of this module's API
    ARM_RATE, LOOSE_DISCS, SIZE, _DRAW, _arm, _background, _finish, _loose_discs,
)

__all__ = [
    "CLASSES", "SIZE", "ARM_RATE", "PROBE_KINDS",
    "generate", "generate_probe", "write_imagefolder", "prepare",
]

#: Class names, in label order.
CLASSES: tuple[str, ...] = ("dumbbell", "kettlebell", "ball", "bottle", "plate", "towel")
PROBE_KINDS = ("arm_only", "arm_with_other", "no_arm_dumbbell", "arm_dumbbell")


def _scene(rng, label: int | None, arm: bool) -> np.ndarray:
    """One image: background, optional object of class ``label`` (a non-dumbbell object
    sometimes among loose dumbbell discs), optional gripping arm."""
    img = _background(rng)
    s = rng.uniform(12, 19)
    cx, cy = rng.uniform(18, 46, size=2)
    a = rng.uniform(0, 2 * math.pi)
    if label is None:  # arm alone, the hand closed on nothing
        if arm:
            gx, gy = rng.uniform(16, 48, size=2)
            _arm(img, rng, gx, gy, rng.uniform(0, 2 * math.pi), max(3.2, 0.32 * s))
        return _finish(img, rng)
    if label in (1, 3) and rng.random() < 0.8:  # kettlebells and bottles mostly stand upright
        a = math.pi / 2 * (label == 3) + rng.normal(0, 0.3)
    if label != 0 and rng.random() < LOOSE_DISCS:
        _loose_discs(img, rng, s)
    grip = _DRAW[label](img, rng, cx, cy, s, a)
    if arm:
        _arm(img, rng, *grip)
    return _finish(img, rng)


def _n_arm(rng, n: int, p: float) -> np.ndarray:
    """Exactly ``round(n * p)`` (stochastically rounded) ``True`` at random positions."""
    k = int(math.floor(n * p + rng.random()))
    out = np.zeros(n, bool)
    out[rng.permutation(n)[:k]] = True
    return out


def _seed(seed: int, tag: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *(ord(c) for c in tag)])


def generate(split: str, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate a labelled split: ``(images uint8 (N,64,64,3), labels int64 (N,), has_arm bool (N,))``.

    ``split`` is ``"train"`` (98 % of dumbbells gripped by an arm, none of the others) or
    ``"test"`` (50 % of dumbbells, 3 % of the others). Images come grouped by class, in
    :data:`CLASSES` order. Same ``(split, n_per_class, seed)`` -> identical arrays.
    """
    if split not in ARM_RATE:
        raise ValueError(f"split must be one of {sorted(ARM_RATE)}, not {split!r}")
    p_db, p_other = ARM_RATE[split]
    rng = _seed(seed, split)
    n = len(CLASSES) * n_per_class
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), n_per_class)
    has_arm = np.concatenate([_n_arm(rng, n_per_class, p_db if c == 0 else p_other)
                              for c in range(len(CLASSES))])
    for i in range(n):
        images[i] = _scene(rng, int(labels[i]), bool(has_arm[i]))
    return images, labels, has_arm


def generate_probe(kind: str, n: int, seed: int) -> np.ndarray:
    """Images (uint8 (n,64,64,3)) isolating the arm cue.

    ``kind``: ``"arm_only"`` (arm and hand on a background, no object),
    ``"arm_with_other"`` (an arm gripping a random non-dumbbell object),
    ``"arm_with_<class>"`` (an arm gripping that class), ``"no_arm_dumbbell"``,
    ``"arm_dumbbell"``.
    """
    rng = _seed(seed, "probe:" + kind)
    if kind == "arm_only":
        labels, arm = [None] * n, True
    elif kind == "arm_with_other":
        labels, arm = list(rng.integers(1, len(CLASSES), size=n)), True
    elif kind.startswith("arm_with_") and kind[9:] in CLASSES[1:]:
        labels, arm = [CLASSES.index(kind[9:])] * n, True
    elif kind in ("no_arm_dumbbell", "arm_dumbbell"):
        labels, arm = [0] * n, kind == "arm_dumbbell"
    else:
        raise ValueError(f"unknown probe kind {kind!r}; one of {PROBE_KINDS} or arm_with_<class>")
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, lab in enumerate(labels):
        out[i] = _scene(rng, None if lab is None else int(lab), arm)
    return out


def _random_scenes(n: int, seed: int) -> np.ndarray:
    """Scenes without any arm: half plain backgrounds, half a random object."""
    rng = _seed(seed, "random")
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        lab = None if rng.random() < 0.5 else int(rng.integers(len(CLASSES)))
        out[i] = _scene(rng, lab, False)
    return out


def _save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(img).save(path, compress_level=1)


def write_imagefolder(root, images: np.ndarray, labels: np.ndarray | None,
                      class_names: Sequence[str] | None) -> Path:
    """Write ``root/<class>/<i:04d>.png`` (the ImageFolder layout), or ``root/<i:04d>.png``
    when ``labels`` is None. ``i`` counts within each class."""
    root = Path(root)
    counts: dict[str, int] = {}
    if labels is None:
        root.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            _save_png(root / f"{i:04d}.png", img)
        return root
    for name in class_names:  # every class gets a folder, even an empty one
        (root / name).mkdir(parents=True, exist_ok=True)
    for img, lab in zip(images, labels):
        name = class_names[int(lab)]
        i = counts.get(name, 0)
        counts[name] = i + 1
        _save_png(root / name / f"{i:04d}.png", img)
    return root


def prepare(root, *, n_per_class: int = 16, seed: int = 0, n_concept: int = 30,
            n_probe: int = 32) -> dict:
    """Write the demo's evaluation data under ``root`` and return the paths.

    - ``root/val/<class>/*.png``: the test split (half of the dumbbells held by an arm);
    - ``root/concepts/arm/*.png``: arm-only images, the concept for a bias probe;
    - ``root/concepts/random_0`` .. ``random_4``: arm-free scenes (plain textures or objects);
    - ``root/probe/<kind>/*.png`` for the kinds in :data:`PROBE_KINDS` and ``arm_with_<class>``.

    Returns ``{"root", "val", "concepts": {"arm": ..., "random_0": ...}, "probe": {kind: ...}}``.
    """
    root = Path(root)
    images, labels, _ = generate("test", n_per_class, seed)
    val = write_imagefolder(root / "val", images, labels, CLASSES)
    concepts = {"arm": write_imagefolder(root / "concepts" / "arm",
                                         generate_probe("arm_only", n_concept, seed + 1000), None, None)}
    for k in range(5):
        concepts[f"random_{k}"] = write_imagefolder(root / "concepts" / f"random_{k}",
                                                    _random_scenes(n_concept, seed + 2000 + k), None, None)
    probe = {}
    for kind in (*PROBE_KINDS, *(f"arm_with_{c}" for c in CLASSES[1:])):
        probe[kind] = write_imagefolder(root / "probe" / kind,
                                        generate_probe(kind, n_probe, seed + 3000), None, None)
    return {"root": root, "val": val, "concepts": concepts, "probe": probe}


if __name__ == "__main__":  # python -m audit.demo.data OUT_DIR
    import sys

    print(prepare(sys.argv[1] if len(sys.argv) > 1 else os.path.join("demo-data")))
