"""Activation maximization for the ``class_viz`` check: optimize pictures that maximize a
class logit or a channel's mean activation.

Lucid/Lucent style (Olah, Mordvintsev & Schubert 2017, "Feature Visualization", Distill):
a Fourier-space picture (:class:`~probes.class_viz.param.FourierImage`) seen through random
views (:func:`~probes.class_viz.param.random_views`) every step, optimized with Adam; with
several pictures per class, Lucid's diversity objective on the Gram matrices of the last
convolution's activations.
"""
from __future__ import annotations

import torch

from audit.fastpath import FastPath
from probes.layers import capture, default_layers, model_hookable

from .param import FourierImage, random_views

__all__ = ["visualize", "gram_similarity"]


def gram_similarity(act: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the Gram matrices of pictures in the same group.
    ``act``: (N, C, H, W) activations; ``groups``: (N,) int64 group of each picture.
    Returns a scalar tensor in [-1, 1] (0 when no two pictures share a group)."""
    n, c = act.shape[:2]
    a = act.float().reshape(n, c, -1)
    gram = torch.bmm(a, a.transpose(1, 2)).reshape(n, -1)
    gram = torch.nn.functional.normalize(gram, dim=1)
    sim = gram @ gram.T
    same = (groups.view(-1, 1) == groups.view(1, -1)) & ~torch.eye(n, dtype=torch.bool, device=act.device)
    return (sim * same).sum() / same.sum().clamp_min(1)


def visualize(model, targets: list[int], *, steps: int, lr: float, image_hw: tuple[int, int],
              generator: torch.Generator, objective: str = "logit", decay: float = 1.0, sd: float = 0.01,
              diversity: float = 0.0, groups: list[int] | None = None, path: FastPath | None = None,
              view_kw: dict | None = None, progress=None, channel_layer: str | None = None) -> torch.Tensor:
    """Optimize one picture per entry of ``targets`` (class indices) and return them as a
    CPU float32 tensor (n, C, *image_hw) in [0, 1]. ``model`` is an AuditModel (pixel space);
    ``objective`` is ``"logit"`` or ``"logit_minus_mean"`` (the logit minus the mean of the
    other logits); ``diversity`` weighs the Gram-similarity penalty between pictures of the
    same ``groups`` entry (default: the same target); ``view_kw`` goes to
    :func:`~probes.class_viz.param.random_views`; ``progress`` (a bar) is advanced by n per
    step. With ``channel_layer`` (a module name), ``targets`` are channel indices of that
    layer and the objective is the channel's mean activation (Olah et al. 2017's channel
    objective). ``path``: the :class:`audit.fastpath.FastPath` of the forward and backward
    passes (bf16 autocast, channels-last, compiled; None: fp32 eager); with hooks (diversity,
    channels) its network runs eager. No step synchronizes with the device. Every random
    draw comes from ``generator``."""
    dev = model.device
    c, ih, iw = model.spec.input_shape
    n = len(targets)
    img = FourierImage(n, c, *image_hw, sd=sd, decay=decay, generator=generator, device=dev)
    opt = torch.optim.Adam([img.spectrum], lr=lr)
    tgt = torch.tensor(targets, device=dev)
    grp = torch.tensor(groups if groups is not None else targets, device=dev)
    use_div = diversity > 0 and n > 1 and len(set(grp.tolist())) < n and model_hookable(model)
    layer = default_layers(model.net, 1) if use_div else []
    hooks = layer + ([channel_layer] if channel_layer and channel_layer not in layer else [])
    path = path or FastPath(model)
    rows = torch.arange(n, device=dev)
    for _ in range(steps):
        x = random_views(img(), (ih, iw), generator, **(view_kw or {}))
        with capture(model.net, hooks) as store:
            logits = path(x, compiled=not hooks)
        if channel_layer:
            act = store[channel_layer].float()
            obj = act[rows, tgt].flatten(1).mean(1)
        else:
            obj = logits[rows, tgt]
        if objective == "logit_minus_mean" and logits.shape[1] > 1 and not channel_layer:
            obj = obj - (logits.sum(1) - obj) / (logits.shape[1] - 1)
        loss = -obj.sum()
        if use_div and layer[0] in store:
            loss = loss + diversity * n * gram_similarity(store[layer[0]], grp)
        opt.zero_grad(set_to_none=True)
        (g,) = torch.autograd.grad(loss, [img.spectrum])
        img.spectrum.grad = g
        opt.step()
        if progress is not None:
            progress.update(n)
    with torch.no_grad():
        return img().detach().float().cpu()
