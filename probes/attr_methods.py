"""The attribution methods of the ``attribution`` check: one list, :data:`METHODS`, that drives
both the check and its tests (captum's style: a method is tested by being listed).

Every method maps a batch ``x`` in [0, 1] (N, C, H, W) and the classes to explain ``target``
(N,) to a (N, H, W) map: the per-pixel sum over channels of the captum attribution (signed
where the method is signed). The methods, all through captum:

* ``saliency`` - |d logit / d x| (Simonyan et al. 2014).
* ``integrated_gradients`` - path integral of gradients from a black image (Sundararajan et al.
  2017); also returns captum's convergence delta (completeness error) per image.
* ``smoothgrad`` - Saliency averaged over noisy copies (Smilkov et al. 2017) with captum's
  ``NoiseTunnel``; the noise std is ``smoothgrad_noise`` times the input range (bounds).
* ``grad_cam`` - ``LayerGradCam`` on the last ``nn.Conv2d`` found in the model (Selvaraju et al.
  2017), upsampled to the input with ``LayerAttribution.interpolate``.
* ``occlusion`` - change of the logit when a gray patch (a quarter of the side, stride half of
  that) hides a region (Zeiler & Fergus 2014);
  needs only forward passes, so it is the fallback when gradients are unusable.
* ``guided_backprop`` - (Springenberg et al. 2015): the reference method that is known to fail
  the randomization sanity check (Adebayo et al. 2018).

Methods of kind ``hook`` need module hooks (captum registers them on ReLUs or on a layer):
they run on a copy of the model prepared by :func:`hook_safe_copy` (in-place activations
made non-inplace, activation modules called more than once un-shared), and they cannot run on
TorchScript or torch.export models.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from audit.batching import with_oom_retry as _with_oom_retry

from .concept_layers import conv_layers

GRADIENT, HOOK, PERTURBATION = "gradient", "hook", "perturbation"


@dataclass
class AttrSettings:
    """Knobs shared by all methods (filled from the check's Options)."""

    ig_steps: int = 16
    smoothgrad_samples: int = 8
    smoothgrad_noise: float = 0.15  #: noise std as a share of the input range
    occlusion_window: int = 0  #: 0: a quarter of the image side
    internal_batch_size: int = 256  #: images x steps (or samples) per forward/backward pass
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0  #: seed of SmoothGrad's noise (the global RNG is forked, never disturbed)
    layer: nn.Module | None = None  #: Grad-CAM's layer (in the model the method runs on)
    oom_retries: list[int] = field(default_factory=list)  #: internal batch sizes halved on OOM


@dataclass(frozen=True)
class AttrMethod:
    """One attribution method: ``fn(model, x, target, settings) -> (maps (N,H,W), extras)``
    where ``extras`` maps a name to a (N,) tensor (e.g. the IG convergence delta)."""

    name: str
    kind: str  #: gradient | hook | perturbation
    fn: Callable
    signed: bool
    reference: bool = False  #: kept for comparison; known to fail the randomization test
    needs_conv: bool = False
    title: str = ""


def _to_map(a: torch.Tensor) -> torch.Tensor:
    return a.detach().float().sum(1)


def _saliency(model, x, target, s: AttrSettings):
    from captum.attr import Saliency

    return _to_map(Saliency(model).attribute(x, target=target, abs=True)), {}


def _integrated_gradients(model, x, target, s: AttrSettings):
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    a, delta = with_oom_retry(  # captum evaluates at least two steps of every image per pass
        lambda b: ig.attribute(x, baselines=torch.zeros_like(x) + s.bounds[0], target=target, n_steps=s.ig_steps,
                               internal_batch_size=max(2 * len(x), b), return_convergence_delta=True),
        s.internal_batch_size, s)
    return _to_map(a), {"convergence_delta": delta.detach().float().abs()}


def _smoothgrad(model, x, target, s: AttrSettings):
    from captum.attr import NoiseTunnel, Saliency

    nt = NoiseTunnel(Saliency(model))
    std = s.smoothgrad_noise * (s.bounds[1] - s.bounds[0])
    per = max(1, min(s.smoothgrad_samples, s.internal_batch_size // max(1, len(x))))

    def call(b):
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(s.seed)
            return nt.attribute(x, nt_type="smoothgrad", nt_samples=s.smoothgrad_samples,
                                nt_samples_batch_size=b, stdevs=std, target=target, abs=True)

    return _to_map(with_oom_retry(call, per, s)), {}


def _grad_cam(model, x, target, s: AttrSettings):
    from captum.attr import LayerAttribution, LayerGradCam

    if s.layer is None:
        raise ValueError("Grad-CAM needs a convolutional layer and the model has none")
    cam = LayerGradCam(model, s.layer).attribute(x, target=target, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    return cam.float().sum(1), {}


def occlusion_window(s: AttrSettings, hw: tuple[int, int]) -> int:
    return s.occlusion_window or max(2, min(hw) // 4)


def _occlusion(model, x, target, s: AttrSettings):
    from captum.attr import Occlusion

    w = occlusion_window(s, tuple(x.shape[-2:]))
    stride = max(1, w // 2)
    gray = (s.bounds[0] + s.bounds[1]) / 2
    per = max(1, s.internal_batch_size // max(1, len(x)))
    with torch.no_grad():
        a = with_oom_retry(lambda b: Occlusion(model).attribute(
            x, sliding_window_shapes=(x.shape[1], w, w), strides=(x.shape[1], stride, stride),
            baselines=gray, target=target, perturbations_per_eval=b), per, s)
    return _to_map(a), {}


def _guided_backprop(model, x, target, s: AttrSettings):
    from captum.attr import GuidedBackprop

    return _to_map(GuidedBackprop(model).attribute(x, target=target)), {}


#: The methods, in report order. Add one here and the check runs it and the tests test it.
METHODS: list[AttrMethod] = [
    AttrMethod("saliency", GRADIENT, _saliency, signed=False, title="Saliency"),
    AttrMethod("integrated_gradients", GRADIENT, _integrated_gradients, signed=True, title="Integrated Gradients"),
    AttrMethod("smoothgrad", GRADIENT, _smoothgrad, signed=False, title="SmoothGrad"),
    AttrMethod("grad_cam", HOOK, _grad_cam, signed=False, needs_conv=True, title="Grad-CAM"),
    AttrMethod("occlusion", PERTURBATION, _occlusion, signed=True, title="Occlusion"),
    AttrMethod("guided_backprop", HOOK, _guided_backprop, signed=True, reference=True, title="Guided Backprop"),
]
METHOD_NAMES = [m.name for m in METHODS]


def get_method(name: str) -> AttrMethod:
    for m in METHODS:
        if m.name == name:
            return m
    raise KeyError(f"unknown attribution method {name!r} (known: {', '.join(METHOD_NAMES)})")


# ----------------------------------------------------------------------------- memory
def with_oom_retry(fn: Callable[[int], object], batch: int, s: AttrSettings | None = None):
    """:func:`audit.batching.with_oom_retry`, recording each halving in ``s.oom_retries``."""
    return _with_oom_retry(fn, batch, s.oom_retries.append if s is not None else None)


def activation_bytes_per_image(model: nn.Module, x1: torch.Tensor) -> int:
    """Bytes one image needs in a forward+backward pass: the sum of all module outputs
    (leaf modules, or the whole model when it has none to hook), times 3 for the input
    gradients, autograd's saved tensors and the gradients of the outputs."""
    total = [0]
    hooks = []

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    try:
        for m in leaves:
            hooks.append(m.register_forward_hook(hook))
    except Exception:  # noqa: BLE001 - a ScriptModule refuses Python hooks
        pass
    try:
        with torch.no_grad():
            out = model(x1[:1])
    finally:
        for h in hooks:
            h.remove()
    if total[0] == 0:  # nothing hooked: assume a deep net keeps ~40 input-sized tensors alive
        total[0] = 40 * x1[:1].numel() * x1.element_size() + out.numel() * 4
    return 3 * total[0]


def choose_internal_batch(model: nn.Module, x1: torch.Tensor, budget_mb: float) -> int:
    """Images x steps per pass that fit ``budget_mb`` (on CUDA also at most half the free
    memory), between 1 and 4096."""
    per = activation_bytes_per_image(model, x1)
    budget = budget_mb * 2**20
    if x1.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x1.device)
        budget = min(budget, free / 2)
    return int(max(1, min(4096, budget // max(per, 1))))


# ----------------------------------------------------------------------------- hook-safe models
def last_conv(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The last 2-d convolution in registration order (Grad-CAM's layer), or None; the same
    search the concept probes use (probes.concept_layers.conv_layers)."""
    names = conv_layers(model)
    return (names[-1], model.get_submodule(names[-1])) if names else None


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
    """How many times each module is called in one forward pass on ``x1``."""
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
    forward un-shared; ``changes`` says what was changed (empty: the model is returned)."""
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False) is True]
    counts = call_counts(model, x1)
    reused = [n for n, m in model.named_modules()
              if n and isinstance(m, _ACTIVATIONS) and counts.get(n, 0) > 1]
    if not inplace and not reused:
        return model, []
    net = copy.deepcopy(model)
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
