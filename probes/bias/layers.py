"""The layers TCAV reads in the ``bias`` check: the named ones, or the model's last
convolutions (:func:`probes.layers.default_layers`), kept only when their forward hooks fire."""
from __future__ import annotations

import torch

from probes.layers import capture, default_layers, model_hookable, resolve_layers

__all__ = ["probe_layers"]


def probe_layers(model, wanted: list[str], n_layers: int, x1: torch.Tensor) -> tuple[list[str], bool]:
    """``(layers, fired)``: ``wanted`` or the last ``n_layers`` convolutions, and whether a
    forward pass on ``x1`` (1, C, H, W) in [0, 1] fires a hook on every one of them (False for
    a TorchScript or flattened torch.export graph, a model fed in fixed-size chunks, or a model
    without convolutions). KeyError
    for a wanted name that is not a submodule."""
    layers = list(wanted) or default_layers(model.net, n_layers)
    if not layers or not model_hookable(model):
        return layers, False
    resolve_layers(model.net, layers)
    with capture(model.net, layers) as store, torch.no_grad():
        model(x1.to(model.device))
        return layers, all(n in store for n in layers)
