"""Finding and hooking a model's layers: the one place the probes share (``bias`` reads its
TCAV layers here, ``class_viz`` its channel layer, ``attribution`` Grad-CAM's layer), so no
check package depends on another.

The default probe layers are the model's last convolutions (Kim et al. 2018 read "mixed"
layers deep in the network). The hook sits on the convolution's own output, before its
normalization and ReLU: at the very last ReLU of a network that ends in global average
pooling and a linear layer, the gradient of a logit is the same for every input, which
would make every TCAV score 0 or 1 (no information). One layer further in, the ReLU mask
makes the gradient depend on the input, as TCAV needs.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

_CONV_NAMES = ("Conv2d", "Conv2D", "Conv")


def _is_conv(m: nn.Module) -> bool:
    if isinstance(m, nn.Conv2d):
        return True
    if type(m).__name__ == "InterpreterModule":  # torch.export.unflatten: a module's graph, own 4-D weight
        return any(p.dim() == 4 for p in m.parameters(recurse=False)) and any(
            "conv" in str(getattr(node, "target", "")) for node in m.graph.nodes)
    # TorchScript keeps the original class name of a scripted/traced submodule
    return getattr(m, "original_name", None) in _CONV_NAMES and not isinstance(m, torch.jit.ScriptModule)


def conv_layers(net: nn.Module) -> list[str]:
    """Names (as in ``named_modules``) of the hookable 2-d convolutions, in registration order."""
    return [n for n, m in net.named_modules() if n and _is_conv(m)]


def default_layers(net: nn.Module, count: int = 1) -> list[str]:
    """The last ``count`` convolutions (deepest last)."""
    convs = conv_layers(net)
    return convs[-count:] if count > 0 else []


def last_conv(net: nn.Module) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of the last 2-d convolution in registration order (Grad-CAM's
    layer), or None when the model has none."""
    names = conv_layers(net)
    return (names[-1], net.get_submodule(names[-1])) if names else None


def last_spatial_block(net: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module] | None:
    """``(name, module)`` of Grad-CAM's layer: the module whose output is the last 4-D spatial
    map (N, C, H, W with H·W > 1) to be completed in one forward pass of ``x`` (N, C, H, W),
    i.e. the output of the last block *after* its residual add and activation (a ResNet's
    ``layer4``, not ``layer4.1.conv2`` inside the residual branch; Selvaraju et al. 2017 take
    the last convolutional *feature map*). Among modules completing with the same tensor (a
    container and its last child), the outermost is named. Falls back to :func:`last_conv`
    when the probe pass fails or finds no such map; None when there is neither."""
    found: list[tuple[str, nn.Module, int]] = []
    handles = []

    def make(name: str, mod: nn.Module):
        def hook(_m, _inp, out):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                found.append((name, mod, id(out)))
        return hook

    try:
        for name, mod in net.named_modules():
            if name and not isinstance(mod, torch.jit.ScriptModule):
                handles.append(mod.register_forward_hook(make(name, mod)))
        with torch.no_grad():
            net(x)
    except Exception:  # noqa: BLE001 - a model refusing hooks or the probe: the last convolution
        found = []
    finally:
        for h in handles:
            h.remove()
    if not found:
        return last_conv(net)
    name, mod, _ = found[-1]
    return name, mod


def deep_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, except that a ``torch.export.unflatten`` module inside it
    (whose graphs hold symbolic tensors that refuse deep copies) is rebuilt from its exported
    program (``exported_program``, set by the loader): the same trained weights, a new module."""
    import copy

    memo = {}
    for m in model.modules():
        ep = getattr(m, "exported_program", None)
        if ep is not None:
            fresh = torch.export.unflatten(ep)
            for t in [*fresh.parameters(), *fresh.buffers()]:  # the program's tensors are shared: own copies
                t.data = t.data.clone()
            fresh.exported_program = ep
            memo[id(m)] = fresh
    return copy.deepcopy(model, memo)


def resolve_layers(net: nn.Module, names: list[str] | tuple[str, ...]) -> dict[str, nn.Module]:
    """Map names to modules; an unknown name raises ``KeyError`` listing the convolutions."""
    mods = dict(net.named_modules())
    out = {}
    for n in names:
        if n not in mods:
            known = ", ".join(conv_layers(net)[-6:]) or "none found"
            raise KeyError(f"layer {n!r} is not a submodule of the model (last convolutions: {known})")
        out[n] = mods[n]
    return out


@contextlib.contextmanager
def capture(net: nn.Module, names: list[str] | tuple[str, ...], *, retain_grad: bool = False) -> Iterator[dict]:
    """Within the block, ``store[name]`` holds the latest output of each named layer.

    With ``retain_grad`` the stored tensors keep their gradient (``store[name].grad``) after a
    backward pass, which is how TCAV reads d logit / d activation.
    """
    store: dict[str, torch.Tensor] = {}
    handles = []

    def make(name):
        def hook(_m, _inp, out):
            t = out[0] if isinstance(out, (tuple, list)) else out
            if retain_grad and t.requires_grad:
                t.retain_grad()
            store[name] = t
        return hook

    for n, m in resolve_layers(net, names).items():
        handles.append(m.register_forward_hook(make(n)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def hookable(net: nn.Module) -> bool:
    """True when forward hooks on the model's submodules fire (not for TorchScript or
    flattened ``torch.export`` graphs)."""
    return not isinstance(net, torch.jit.ScriptModule) and bool(conv_layers(net))
