"""The attribution methods of the ``attribution`` check, all through captum:

* ``saliency`` - |d logit / d x| (Simonyan et al. 2014);
* ``integrated_gradients`` - path integral of gradients from a black image (Sundararajan et
  al. 2017), with captum's convergence delta per image;
* ``smoothgrad`` - Saliency averaged over noisy copies (Smilkov et al. 2017);
* ``grad_cam`` - ``LayerGradCam`` on the model's last ``nn.Conv2d`` (Selvaraju et al. 2017);
* ``occlusion`` - the logit's change under a sliding gray patch (Zeiler & Fergus 2014);
* ``guided_backprop`` - the reference method known to fail the randomization test
  (Springenberg et al. 2015, Adebayo et al. 2018).

**A new method** is one :class:`~.base.AttrMethod` subclass in one file of this folder plus
one line in :data:`METHODS` (``"module.Class"``, in report order): the check's ``methods``
option accepts its name, the check runs it, docs/attribution.md's method table lists it and
the tests (parametrized over :data:`METHODS`) test it.
"""
from __future__ import annotations

from .base import GRADIENT, HOOK, KINDS, PERTURBATION, AttrMethod, AttrSettings, MethodRegistry, with_oom_retry

__all__ = ["METHODS", "METHOD_NAMES", "AttrMethod", "AttrSettings", "MethodRegistry", "GRADIENT", "HOOK",
           "PERTURBATION", "KINDS", "with_oom_retry"]

#: The registered methods, in report order.
METHODS = MethodRegistry(__name__, [
    "saliency.Saliency",
    "integrated_gradients.IntegratedGradients",
    "smoothgrad.SmoothGrad",
    "grad_cam.GradCam",
    "occlusion.Occlusion",
    "guided_backprop.GuidedBackprop",
])
METHOD_NAMES = METHODS.names()
