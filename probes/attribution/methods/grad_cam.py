"""Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks")."""
from __future__ import annotations

from .base import HOOK, AttrMethod


class GradCam(AttrMethod):
    """captum ``LayerGradCam`` on ``settings.layer`` (the check passes the last spatial feature
    map, :func:`probes.layers.last_spatial_block`: a ResNet's ``layer4`` after its residual add
    and ReLU), ReLU'd and upsampled bilinearly to the input with
    ``LayerAttribution.interpolate``; unsigned. ValueError without a layer."""

    name, title, kind, signed, needs_conv = "grad_cam", "Grad-CAM", HOOK, False, True

    def attribute(self, model, x, target, s):
        from captum.attr import LayerAttribution, LayerGradCam

        if s.layer is None:
            raise ValueError("Grad-CAM needs a convolutional layer and the model has none")
        cam = LayerGradCam(model, s.layer).attribute(x, target=target, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return cam.float().sum(1), {}
