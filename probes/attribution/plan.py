"""What the ``attribution`` check will explain, with what and how: the selected images, the
methods that can run on this model, the shared method settings and the cascade steps.

Built once per run by :func:`make_plan`, on every process, drawing only from the check's
generator in a fixed order (the images, SmoothGrad's noise seed, the cascade's seed), so the
work units computed from it are the same wherever they run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from probes.layers import hookable, last_spatial_block

from .hooks import hook_safe_copy
from .memory import choose_internal_batch
from .methods import HOOK, METHODS, PERTURBATION, AttrMethod, AttrSettings
from .sanity import kept_steps, layer_groups

__all__ = ["Plan", "Note", "make_plan", "select_images", "UNHOOKABLE_FORMATS"]

UNHOOKABLE_FORMATS = ("torchscript", "export")


@dataclass
class Note:
    """A finding decided while planning, raised by ``summarize`` in the planned order."""

    severity: str
    code: str
    message: str
    extra: dict = field(default_factory=dict)


@dataclass
class Plan:
    """``x`` (N, C, H, W) float32 in [0, 1] on the CPU, ``y`` (N,) labels (-1 unknown), ``groups``
    and ``ids`` per image, ``conf``/``target`` (N,) the model's confidence and predicted class
    (the class every map explains). ``methods`` are the usable ones in report order;
    ``hook_model`` is the model hook methods run on (a hook-safe copy when needed) and
    ``layer_name`` Grad-CAM's layer in it. Images ``[:n_sanity]`` are the randomization test's
    (the first span of ``spans``); ``faith_idx`` the deletion/insertion test's.
    ``cascade_seed``/``cascade_steps``: the randomization cascade (None/[] when not run)."""

    x: torch.Tensor
    y: torch.Tensor
    groups: list[str]
    ids: list[str]
    conf: torch.Tensor
    target: torch.Tensor
    methods: list[AttrMethod]
    hook_model: nn.Module
    layer_name: str | None
    settings: AttrSettings
    spans: list[tuple[int, int]]
    n_sanity: int
    faith_idx: list[int]
    cascade_seed: int | None = None
    cascade_steps: list[int] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def net_for(self, method: AttrMethod, model: nn.Module) -> nn.Module:
        return self.hook_model if method.kind == HOOK else model

    def cascade_source(self, model: nn.Module) -> nn.Module:
        """The model the cascade randomizes: the hook-safe one when a hook method runs (they
        need it, the others don't mind)."""
        return self.hook_model if any(m.kind == HOOK for m in self.methods) else model


def _draw_seed(g: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=g))


def make_plan(ctx, o) -> Plan | None:
    """The plan for options ``o`` (the check's Options), or None when there is no image."""
    sel = select_images(ctx, per_class=o.per_class, mistakes=o.mistakes, adversarial=o.adversarial)
    if sel is None:
        return None
    x, y, groups, ids = sel
    model, dev = ctx.model, ctx.model.device
    with torch.no_grad():
        probs = model.logits(x, batch_size=ctx.config.batch_size).softmax(1)
    conf, target = probs.max(1)
    notes: list[Note] = []
    methods, hook_model, layer_name, tokens = usable_methods(ctx, list(o.methods), x[:2].to(dev), notes)
    settings = AttrSettings(ig_steps=o.ig_steps, smoothgrad_samples=o.smoothgrad_samples,
                            smoothgrad_noise=o.smoothgrad_noise, occlusion_window=o.occlusion_window,
                            bounds=tuple(model.spec.bounds), seed=_draw_seed(ctx.generator), tokens=tokens)
    # chosen from free memory; rank 0's choice for every rank, since it decides the noise draws
    settings.internal_batch_size = ctx.agree("internal_batch_size", o.internal_batch_size or choose_internal_batch(
        model, x[:1].to(dev), o.memory_budget_mb))
    chunk = max(1, min(ctx.config.batch_size, 32, settings.internal_batch_size // 2))
    # the randomization test's images: the first correct ones (they are interleaved across classes)
    correct_idx = [i for i, g in enumerate(groups) if g == "correct"]
    n_s = len(correct_idx[:o.sanity_images] or range(min(len(x), o.sanity_images)))
    # the sanity images form the first span, so their maps are exactly what the
    # randomization test recomputes on the randomized copies
    bounds = [0] + list(range(n_s, len(x), chunk)) if n_s else list(range(0, len(x), chunk))
    spans = [(a, b) for a, b in zip(bounds, bounds[1:] + [len(x)]) if b > a]
    faith_idx = [i for i, g in enumerate(groups) if g in ("correct", "mistake")][:o.faithfulness_images]
    plan = Plan(x=x, y=y, groups=groups, ids=ids, conf=conf, target=target, methods=methods, hook_model=hook_model,
                layer_name=layer_name, settings=settings, spans=spans, n_sanity=n_s, faith_idx=faith_idx, notes=notes)
    if methods and n_s:
        plan.cascade_seed = _draw_seed(ctx.generator)
        plan.cascade_steps = kept_steps(len(layer_groups(plan.cascade_source(model))), o.randomization_layers)
    return plan


def usable_methods(ctx, wanted: list[str], x2: torch.Tensor,
                   notes: list[Note]) -> tuple[list[AttrMethod], nn.Module, str | None, Any]:
    """``(methods, hook_model, layer_name, tokens)``: the ``wanted`` methods (registry order)
    that can run on this model, the model hook methods run on, Grad-CAM's layer and, for a
    transformer's token layer, its :class:`probes.layers.TokenGrid`; why any was dropped
    is appended to ``notes``. ``x2``: up to two inputs on the model's device (probe)."""
    model = ctx.model
    chosen = [m for m in METHODS if m.name in wanted]
    hooked = [m for m in chosen if m.kind == HOOK]
    hook_model, layer_name, tokens = model, None, None
    fmt = model.info.get("format")
    if hooked and fmt in UNHOOKABLE_FORMATS and not hookable(model.net):
        notes.append(Note("info", "attribution.hooks_unsupported",
                          f"The model is a {fmt} program without Python modules to hook: "
                          f"{', '.join(m.title for m in hooked)} skipped (gradient and perturbation methods ran). "
                          "A torch.export archive with a dynamic batch dimension is unflattened into hookable "
                          "modules; a TorchScript or static-batch export is not: ship a dynamic-batch export "
                          "or the state_dict with its architecture.",
                          {"methods": [m.name for m in hooked]}))
        chosen = [m for m in chosen if m.kind != HOOK]
    elif hooked and model.fixed_batch is not None:
        notes.append(Note("info", "attribution.hooks_unsupported",
                          f"The model runs at a fixed batch size of {model.fixed_batch} (fed in chunks), so a layer "
                          f"hook would see one chunk at a time: {', '.join(m.title for m in hooked)} skipped "
                          "(gradient and perturbation methods ran). Ship the model with a dynamic batch dimension "
                          "(torch.onnx.export(..., input_names=['input'], dynamic_axes={'input': {0: 'batch'}})).",
                          {"methods": [m.name for m in hooked]}))
        chosen = [m for m in chosen if m.kind != HOOK]
    elif hooked:
        gbp = [m for m in chosen if m.name == "guided_backprop"]
        if gbp and not any(isinstance(mod, nn.ReLU) for mod in model.net.modules()):
            notes.append(Note("info", "attribution.hooks_unsupported",
                              "Guided Backprop skipped: it rewrites the backward pass of nn.ReLU modules and this "
                              "model has none (an unflattened torch.export graph or functional ReLUs), so it would "
                              "silently be a plain gradient. Ship the module with nn.ReLU layers to run it.",
                              {"methods": ["guided_backprop"]}))
            chosen = [m for m in chosen if m.name != "guided_backprop"]
            hooked = [m for m in hooked if m.name != "guided_backprop"]
        try:
            hook_model, changes = hook_safe_copy(model, x2)
        except Exception as e:  # noqa: BLE001 - a module refusing Python hooks
            notes.append(Note("info", "attribution.hooks_unsupported",
                              f"Module hooks fail on this model ({type(e).__name__}): "
                              f"{', '.join(m.title for m in hooked)} skipped.", {"methods": [m.name for m in hooked]}))
            chosen = [m for m in chosen if m.kind != HOOK]
            changes = []
        if changes:
            notes.append(Note("info", "attribution.model_copied",
                              "Hook-based methods (" + ", ".join(m.title for m in hooked) + ") ran on a copy of the "
                              "model: " + "; ".join(changes) + ".", {"changes": changes}))
        if any(m.needs_conv for m in chosen):
            lc = last_spatial_block(hook_model, x2)
            if lc is None:
                notes.append(Note("info", "attribution.no_conv_layer",
                                  "The model has no nn.Conv2d layer: Grad-CAM skipped."))
                chosen = [m for m in chosen if not m.needs_conv]
            else:
                layer_name, tokens = lc[0], lc[2]
    if any(m.kind != PERTURBATION for m in chosen):
        why = ctx.gradient_problem
        if why:
            notes.append(Note("warn", "attribution.gradients_unusable",
                              f"The model's input gradients are unusable ({why}): only occlusion ran."))
            chosen = [m for m in chosen if m.kind == PERTURBATION]
    return chosen, hook_model, layer_name, tokens


def select_images(ctx, *, per_class: int, mistakes: int, adversarial: int):
    """``(x, y, groups, ids)``: per class up to ``per_class`` correctly classified images
    (seeded, interleaved across classes so that any prefix covers many classes), the
    ``mistakes`` most confident mistakes, and up to ``adversarial`` published adversarial
    examples (``adversarial.examples``, :class:`audit.published.AdversarialExamples`; absent
    is fine) each preceded by its original. None when there is nothing to explain."""
    data = ctx.data
    if data is None or len(data) == 0:
        return None
    g = ctx.generator
    preds, conf = ctx.preds, ctx.probs.max(1).values
    by_class = []
    hits = data.y[preds == data.y]
    for c in torch.unique(hits).tolist():  # the classes with a correct image (ascending): not O(N x K)
        idx = ((data.y == c) & (preds == c)).nonzero()[:, 0]
        idx = idx[torch.randperm(len(idx), generator=g)][:per_class]  # (an empty class drew nothing either)
        by_class.append(idx.tolist())
    chosen = [cl[j] for j in range(per_class) for cl in by_class if j < len(cl)]
    groups = ["correct"] * len(chosen)
    wrong = (preds != data.y).nonzero()[:, 0]
    wrong = wrong[torch.argsort(conf[wrong], descending=True, stable=True)][:mistakes].tolist()
    chosen += wrong
    groups += ["mistake"] * len(wrong)
    xs, ys, ids = [data.x[chosen]], [data.y[chosen]], [str(data.ids[i]) for i in chosen]
    adv = ctx.published.get("adversarial.examples")
    if adversarial > 0 and adv is not None and len(adv.x) > 0:
        xa, xo = adv.x_adv.float().cpu(), adv.x.float().cpu()
        ya = adv.y.long().cpu()
        if xo.shape[1:] == data.x.shape[1:] and xa.shape == xo.shape:
            pick = torch.randperm(len(xo), generator=g)[:adversarial].tolist()
            aids = adv.ids
            for j in pick:
                name = str(aids[j]) if isinstance(aids, (list, tuple)) and len(aids) == len(xo) else f"adv{j}"
                xs += [xo[j:j + 1], xa[j:j + 1]]
                ys += [ya[j:j + 1], ya[j:j + 1]]
                groups += ["adversarial-original", "adversarial"]
                ids += [name, f"{name} (adversarial, {adv.norm})"]
    x = torch.cat(xs)
    if len(x) == 0:
        return None
    y = torch.cat(ys)
    return x, y, groups, ids
