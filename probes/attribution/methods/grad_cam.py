"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks")."""
from __future__ import annotations

import torch

from probes.layers import output_tensor

from .base import HOOK, AttrMethod


class GradCam(AttrMethod):
    """Grad-CAM on ``settings.layer``, the last spatial feature map
    (:func:`probes.layers.last_spatial_block`: a ResNet's ``layer4`` after its residual add
    and ReLU; a vision transformer's last token layer the class score depends on). Maps: captum
    ``LayerGradCam``; tokens (``settings.tokens``, a :class:`probes.layers.TokenGrid`): the
    same formula on the tokens reshaped to the patch grid, leading class/register tokens
    dropped (captum's ``LayerGradCam`` would take the token axis for channels), as
    pytorch-grad-cam's ``reshape_transform`` does: ReLU(Σ_d mean_grid(∂y/∂A_d) · A_d). ReLU'd,
    upsampled bilinearly to the input (``LayerAttribution.interpolate``); unsigned;
    (N, H, W) float32. ValueError without a layer."""

    name, title, kind, signed, needs_conv = "grad_cam", "Grad-CAM", HOOK, False, True

    def attribute(self, model, x, target, s):
        from captum.attr import LayerAttribution, LayerGradCam

        if s.layer is None:
            raise ValueError("Grad-CAM needs a convolutional or token layer and the model has neither")
        if s.tokens is None:
            cam = LayerGradCam(model, s.layer).attribute(x, target=target, relu_attributions=True).detach()
        else:
            cam = _token_cam(model, s.layer, s.tokens, x, target)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return cam.float().sum(1), {}


def _token_cam(model, layer, grid, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, 1, gh, gw) Grad-CAM of ``layer``'s token output for the ``target`` logits."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", output_tensor(out)))
    try:
        with torch.enable_grad():
            logits = model(x.detach().clone().requires_grad_(True))
            (g,) = torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), store["a"])
    finally:
        handle.remove()
    a, g = grid.to_map(store["a"].detach()), grid.to_map(g)
    return torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
