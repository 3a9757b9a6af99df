"""Integrated Gradients (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks")."""
from __future__ import annotations

import torch

from .base import GRADIENT, AttrMethod, to_map, with_oom_retry


class IntegratedGradients(AttrMethod):
    """captum ``IntegratedGradients`` from a black baseline (the lower bound) in ``ig_steps``
    steps (captum's Gauss-Legendre rule); signed. ``extras["convergence_delta"]`` is the
    absolute completeness error per image, (N,) float32, in logit units."""

    name, title, kind, signed = "integrated_gradients", "Integrated Gradients", GRADIENT, True

    def attribute(self, model, x, target, s):
        from captum.attr import IntegratedGradients as _IG

        ig = _IG(model)
        a, delta = with_oom_retry(  # captum evaluates at least two steps of every image per pass
            lambda b: ig.attribute(x, baselines=torch.zeros_like(x) + s.bounds[0], target=target, n_steps=s.ig_steps,
                                   internal_batch_size=max(2 * len(x), b), return_convergence_delta=True),
            s.internal_batch_size, s)
        return to_map(a), {"convergence_delta": delta.detach().float().abs()}
