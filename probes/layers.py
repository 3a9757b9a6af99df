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
import math
from dataclasses import dataclass
from typing import Any, Iterator

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


@dataclass(frozen=True)
class TokenGrid:
    """How a transformer's token output (N, T, D) maps onto its patch grid: the first ``skip``
    tokens (class, distillation or register tokens) are dropped and the other ``gh * gw``
    reshaped row-major to (gh, gw) (the ViT/DeiT/timm order)."""

    skip: int
    gh: int
    gw: int

    def to_map(self, t: torch.Tensor) -> torch.Tensor:
        """(N, T, D) tokens -> (N, D, gh, gw) feature map."""
        return t[:, self.skip:].transpose(1, 2).reshape(t.shape[0], t.shape[2], self.gh, self.gw)

    def describe(self) -> str:
        return f"transformer tokens on a {self.gh}×{self.gw} patch grid, {self.skip} leading token(s) dropped"


def output_tensor(out: Any) -> torch.Tensor | None:
    """A module's output tensor (the first element of a tuple output, as Hugging Face layers
    return), or None."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _token_grid(t: torch.Tensor, grid: tuple[int, int] | None) -> TokenGrid | None:
    """The grid of a (N, T, D) output: T minus up to 8 leading tokens equals the last feature
    map's H·W (``grid``: a patch embedding's output), or, without one, is a square."""
    n_tok = t.shape[1]
    for skip in range(0, 9):
        rest = n_tok - skip
        if rest < 4:
            break
        if grid is not None and rest == grid[0] * grid[1]:
            return TokenGrid(skip, *grid)
        side = math.isqrt(rest)
        if grid is None and side * side == rest:
            return TokenGrid(skip, side, side)
    return None


def last_spatial_block(net: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module, TokenGrid | None] | None:
    """``(name, module, tokens)`` of Grad-CAM's layer, from one forward and one backward pass
    of ``x`` (N, C, H, W):

    - a CNN: the module whose output is the last 4-D spatial map (N, C, H, W with H·W > 1; a
      module that returns its input itself, such as ``nn.Identity``, is passed over) to be
      completed, i.e. the output of the last block *after* its residual add and activation (a
      ResNet's ``layer4``, not ``layer4.1.conv2`` inside the residual branch; Selvaraju et al.
      2017 take the last convolutional *feature map*); ``tokens`` None. Among modules completing
      with the same tensor (a container and its last child), the outermost is named;
    - a vision transformer (token outputs (N, T, D) completed after the last spatial map, the
      patch embedding's, whose grid they match once up to 8 leading tokens are dropped): the
      last normalization layer (a module whose class name has ``Norm``: the residual stream,
      not an attention's query/key/value projections, timm's fused ``qkv``) whose patch tokens
      the top class's logit still depends on, else the last such module of any kind (a ViT
      reading its class token: the last block's ``norm1``, the input of its attention, as
      pytorch-grad-cam recommends; transformers' ``layernorm_before``; a mean-pooling one: the
      final norm), with ``tokens`` the :class:`TokenGrid` that reshapes it to a map.

    Falls back to :func:`last_conv` when the probe pass fails or finds no such output; None
    when there is neither."""
    maps: list[tuple[str, nn.Module, torch.Tensor]] = []
    toks: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = []

    def make(name: str, mod: nn.Module):
        def hook(_m, inp, out):
            t = output_tensor(out)
            if t is None or not t.is_floating_point() or any(t is i for i in inp):
                return  # a pass-through (Identity, Dropout in eval: timm attention's q_norm / k_norm) adds no map
            if t.dim() == 4 and t.shape[-1] * t.shape[-2] > 1:
                maps.append((name, mod, t))
            elif t.dim() == 3 and t.shape[1] >= 4 and t.requires_grad:
                toks.append((name, mod, t, len(maps)))
        return hook

    try:
        for name, mod in net.named_modules():
            if name and not isinstance(mod, torch.jit.ScriptModule):
                handles.append(mod.register_forward_hook(make(name, mod)))
        with torch.enable_grad():
            logits = net(x.detach().clone().requires_grad_(True))
            grid = tuple(maps[-1][2].shape[-2:]) if maps else None
            cands = [(n, m, t, _token_grid(t, grid)) for n, m, t, after in toks if after == len(maps)]
            cands = [c for c in cands if c[3] is not None]
            if cands and logits.dim() == 2:
                grads = torch.autograd.grad(logits.max(1).values.sum(), [c[2] for c in cands], allow_unused=True)
                used = [c for c, g in zip(cands, grads) if g is not None and bool(g[:, c[3].skip:].abs().amax() > 0)]
                norms = [c for c in used if "Norm" in type(c[1]).__name__]  # the residual stream, normalized
                if used:
                    name, mod, _, grid_t = (norms or used)[-1]
                    return name, mod, grid_t
    except Exception:  # noqa: BLE001 - a model refusing hooks or the probe: the last convolution
        maps = []
    finally:
        for h in handles:
            h.remove()
    if not maps:
        lc = last_conv(net)
        return (lc[0], lc[1], None) if lc else None
    name, mod, _ = maps[-1]
    return name, mod, None


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
            t = output_tensor(out)
            if t is None:  # not a tensor output: the layer is reported as not hooked (never fired)
                return
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


def model_hookable(model) -> bool:
    """:func:`hookable` for an ``AuditModel``'s network, and the model runs a batch in one
    forward pass: one fed in chunks of a fixed batch size (``fixed_batch``: a fixed-batch ONNX
    graph) fires a layer's hooks once per chunk, so a hook would hold one chunk's activations."""
    return getattr(model, "fixed_batch", None) is None and hookable(model.net)
