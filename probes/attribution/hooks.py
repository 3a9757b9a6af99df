"""A model that captum's module hooks can run on: in-place activations made non-inplace and
activation modules called more than once per forward un-shared (a hook on a module called
twice sees both calls, and an in-place ReLU breaks the backward hooks of Guided Backprop)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from probes.layers import deep_copy

__all__ = ["hook_safe_copy", "call_counts"]

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Hardtanh,
                nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.PReLU)


class _Unshared(nn.Module):
    """Replaces an activation module called ``n`` times per forward: the i-th call goes to
    its own copy, so each copy (and the hook captum puts on it) sees one call."""

    def __init__(self, act: nn.Module, n: int):
        super().__init__()
        self.copies = nn.ModuleList([copy.deepcopy(act) for _ in range(n)])
        self.calls = 0

    def forward(self, x):
        m = self.copies[min(self.calls, len(self.copies) - 1)]
        self.calls += 1
        return m(x)


def _reset_unshared(root: nn.Module):
    def pre(_m, _inp):
        for m in root.modules():
            if isinstance(m, _Unshared):
                m.calls = 0

    return pre


def call_counts(model: nn.Module, x1: torch.Tensor) -> dict[str, int]:
    """How many times each named module is called in one forward pass on ``x1[:1]``."""
    counts: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(lambda _m, _i, _o, n=name: counts.__setitem__(n, counts.get(n, 0) + 1)))
    try:
        with torch.no_grad():
            model(x1[:1])
    finally:
        for h in hooks:
            h.remove()
    return counts


def hook_safe_copy(model: nn.Module, x1: torch.Tensor) -> tuple[nn.Module, list[str]]:
    """``(model, changes)``: the model itself when hooks are safe on it, else a deep copy
    with in-place modules made non-inplace and activation modules called more than once per
    forward un-shared; ``changes`` says what was changed (empty: the model is returned).
    ``x1``: one input (1, C, H, W) on the model's device. Raises what the model raises when a
    module refuses Python hooks (TorchScript)."""
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False) is True]
    counts = call_counts(model, x1)
    reused = [n for n, m in model.named_modules()
              if n and isinstance(m, _ACTIVATIONS) and counts.get(n, 0) > 1]
    if not inplace and not reused:
        return model, []
    net = deep_copy(model)
    for n, m in net.named_modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    for n in reused:
        parent_name, _, attr = n.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, _Unshared(getattr(parent, attr), counts[n]))
    net.register_forward_pre_hook(_reset_unshared(net))
    changes = []
    if inplace:
        changes.append(f"{len(inplace)} in-place module(s) made non-inplace ({', '.join(inplace[:3])}"
                       f"{', ...' if len(inplace) > 3 else ''})")
    if reused:
        changes.append(f"{len(reused)} reused activation module(s) un-shared ("
                       + ", ".join(f"{n} x{counts[n]}" for n in reused[:3]) + (", ..." if len(reused) > 3 else "") + ")")
    return net, changes
