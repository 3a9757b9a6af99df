"""SmoothGrad (Smilkov et al. 2017, "SmoothGrad: removing noise by adding noise")."""
from __future__ import annotations

import torch

from .base import GRADIENT, AttrMethod, to_map, with_oom_retry


class SmoothGrad(AttrMethod):
    """SmoothGrad as Smilkov et al. 2017 define it (not the "absolute" variant): captum
    ``NoiseTunnel(Saliency(abs=False))`` averages the *signed* gradient over
    ``smoothgrad_samples`` noisy copies (the paper uses ~50), noise std ``smoothgrad_noise`` x
    the input range, and the map is the magnitude of that mean, |mean g| summed over channels
    (mean(|g|) would keep the noise SmoothGrad is meant to average out); the noise is drawn
    from ``settings.seed`` in a forked RNG (the global RNG is left alone); unsigned."""

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
                                    nt_samples_batch_size=b, stdevs=std, target=target, abs=False)

        return to_map(with_oom_retry(call, per, s).abs()), {}
