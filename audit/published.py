"""The typed values checks publish for later checks (the vocabulary of ``Check.publishes``
and ``Check.reads``).

They live here, not beside their publishers, so a reader depends on this module only and
never on another check's package; a reader gets ``None`` from ``ctx.published.get(name)``
when the publisher did not run (or failed) and copes with that. All tensors are on the CPU.
"""
from __future__ import annotations

import torch

from .records import record

__all__ = ["AdversarialExamples", "FoolingImages", "ClassVizImages", "PUBLISHED"]


@record
class AdversarialExamples:
    """``adversarial.examples``: adversarial examples for the first norm that fooled anything.

    ``x``, ``x_adv``: (M, C, H, W) float32 in [0, 1], the clean inputs and their adversarials;
    ``y``: (M,) int64 labels; ``pred_adv``: (M,) int64 predictions on ``x_adv``; ``norm``:
    ``"linf"`` or ``"l2"``; ``epsilon``: (M,) float, the smallest ε of the grid at which each
    was fooled (in the [0, 1] pixel scale); ``ids``: the M sample ids."""

    x: torch.Tensor
    x_adv: torch.Tensor
    y: torch.Tensor
    pred_adv: torch.Tensor
    norm: str
    epsilon: torch.Tensor
    ids: list


@record
class FoolingImages:
    """``fooling.images``: the best fooling image of each method for each target class,
    ``images[method][class name]`` a (C, H, W) float32 tensor in [0, 1]."""

    images: dict


@record
class ClassVizImages:
    """``class_viz.images``: the class visualizations resized to the model's input size.

    ``images``: (K, C, H, W) float32 in [0, 1]; ``classes``: K target class indices;
    ``seeds``: K seed numbers (0 .. seeds-1 per class)."""

    images: torch.Tensor
    classes: list
    seeds: list


#: name -> type of every value a built-in check publishes
PUBLISHED: dict[str, type] = {
    "adversarial.examples": AdversarialExamples,
    "fooling.images": FoolingImages,
    "class_viz.images": ClassVizImages,
}
