"""Saliency: |d logit / d x| (Simonyan et al. 2014, "Deep Inside Convolutional Networks")."""
from __future__ import annotations

from .base import GRADIENT, AttrMethod, to_map


class Saliency(AttrMethod):
    """captum ``Saliency(abs=True)``, summed over channels; unsigned."""

    name, title, kind, signed = "saliency", "Saliency", GRADIENT, False

    def attribute(self, model, x, target, s):
        from captum.attr import Saliency as _Saliency

        return to_map(_Saliency(model).attribute(x, target=target, abs=True)), {}
