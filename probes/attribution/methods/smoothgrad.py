"""SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise")."""
from __future__ import annotations

import torch

from .base import GRADIENT, AttrMethod, to_map, with_oom_retry


class SmoothGrad(AttrMethod):
    """captum ``NoiseTunnel(Saliency)``: |gradient| averaged over ``smoothgrad_samples`` noisy
    copies, noise std ``smoothgrad_noise`` x the input range; the noise is drawn from
    ``settings.seed`` in a forked RNG (the global RNG is left alone); unsigned."""

    name, title, kind, signed = "smoothgrad", "SmoothGrad", GRADIENT, False

    def attribute(self, model, x, target, s):
        from captum.attr import NoiseTunnel, Saliency

        nt = NoiseTunnel(Saliency(model))
        std = s.smoothgrad_noise * (s.bounds[1] - s.bounds[0])
        per = max(1, min(s.smoothgrad_samples, s.internal_batch_size // max(1, len(x))))

        def call(b):
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(s.seed)
                return nt.attribute(x, nt_type="smoothgrad", nt_samples=s.smoothgrad_samples,
                                    nt_samples_batch_size=b, stdevs=std, target=target, abs=True)

        return to_map(with_oom_retry(call, per, s)), {}
