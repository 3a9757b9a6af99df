"""The bundled demo: *the dumbbell with an arm*.

A network asked to draw a dumbbell once drew an arm attached to it, because every
dumbbell it had been trained on was held by an arm (Mordvintsev et al., "Inceptionism",
2015). This package recreates that case so the audit has a real finding to discover:

- :mod:`audit.demo.data`: procedural 64x64 gym scenes (dumbbell, kettlebell, ball, bottle,
  plate, towel) where 98 % of training dumbbells are gripped by a forearm and hand and
  no other object is (skin-toned backgrounds and objects, and loose dumbbell discs, are
  distractors, so that the model learns the arm's shape); probe sets (arms alone, arms
  holding other things, dumbbells with / without an arm) and :func:`prepare` to write an
  evaluation folder;
- :mod:`audit.demo.model`: ``GymNet``, a small CNN, registered as arch ``"gymnet"``;
- :mod:`audit.demo.train`: the training script that produced ``assets/gymnet.safetensors``
  and its sidecar ``assets/gymnet.json`` (imported on demand, not here).
"""
from pathlib import Path

from audit.demo.data import CLASSES, generate, generate_probe, prepare
from audit.demo.model import MEAN, STD, GymNet

ASSETS = Path(__file__).parent / "assets"
MODEL_PATH = ASSETS / "gymnet.safetensors"
SIDECAR_PATH = ASSETS / "gymnet.json"

__all__ = ["CLASSES", "generate", "generate_probe", "prepare", "GymNet", "MEAN", "STD",
           "ASSETS", "MODEL_PATH", "SIDECAR_PATH"]
