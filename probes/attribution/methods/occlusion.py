"""Occlusion (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks")."""
from __future__ import annotations

import torch

from .base import PERTURBATION, AttrMethod, AttrSettings, to_map, with_oom_retry


def occlusion_window(s: AttrSettings, hw: tuple[int, int]) -> int:
    """Patch side in pixels: ``s.occlusion_window``, or a quarter of the shorter image side (>= 2)."""
    return s.occlusion_window or max(2, min(hw) // 4)


class Occlusion(AttrMethod):
    """captum ``Occlusion``: the change of the logit when a gray patch (mid-range value) of
    :func:`occlusion_window` pixels, moved with a stride of half of it, hides a region;
    signed. Forward passes only, so it is the fallback when gradients are unusable."""

    name, title, kind, signed = "occlusion", "Occlusion", PERTURBATION, True

    def attribute(self, model, x, target, s):
        from captum.attr import Occlusion as _Occlusion

        w = occlusion_window(s, tuple(x.shape[-2:]))
        stride = max(1, w // 2)
        gray = (s.bounds[0] + s.bounds[1]) / 2
        per = max(1, s.internal_batch_size // max(1, len(x)))
        with torch.no_grad():
            a = with_oom_retry(lambda b: _Occlusion(model).attribute(
                x, sliding_window_shapes=(x.shape[1], w, w), strides=(x.shape[1], stride, stride),
                baselines=gray, target=target, perturbations_per_eval=b), per, s)
        return to_map(a), {}
