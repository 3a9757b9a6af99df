"""Guided Backpropagation (Springenberg et al. 2015, "Striving for Simplicity")."""
from __future__ import annotations

from .base import HOOK, AttrMethod, to_map


class GuidedBackprop(AttrMethod):
    """captum ``GuidedBackprop`` (hooks on the ``nn.ReLU`` modules); signed. The reference
    method known to fail the randomization sanity check (Adebayo et al. 2018)."""

    name, title, kind, signed, reference = "guided_backprop", "Guided Backprop", HOOK, True, True

    def attribute(self, model, x, target, s):
        from captum.attr import GuidedBackprop as _GuidedBackprop

        return to_map(_GuidedBackprop(model).attribute(x, target=target)), {}
