"""The ``class_viz`` check: what does the model think each class looks like?

Activation maximization in the style of Lucid/Lucent (Olah, Mordvintsev & Schubert 2017,
"Feature Visualization", Distill; Mordvintsev et al. 2015, "Inceptionism"): for each class
a picture is optimized, from noise, to maximize the class's pre-softmax logit (option
``objective = "logit_minus_mean"``: minus the mean of the other logits). The picture is a
Fourier-space parameterization with 1/f scaling in a decorrelated colour space, squashed to
[0, 1] by a sigmoid (:mod:`probes.class_viz.param`); every step the model sees it randomly
padded, jittered, scaled and rotated (transformation robustness), and, when ``image_size``
exceeds the model's input, averaged down and randomly cropped. Adam, ``steps`` steps, all
classes (and ``seeds`` pictures per class) optimized together in batches
(:mod:`probes.class_viz.optimize`). With ``seeds > 1`` a ``diversity`` weight penalizes the
cosine similarity of the Gram matrices of the last convolution's activations between
pictures of the same class (Lucid's diversity objective).

The check needs no data. For each picture it reports the model's own top-3 predictions on
it (the picture at the model's input size, no transformation).

Metrics (``class`` = the visualized class):

- ``target_confidence``: softmax probability of the class on its own picture (mean over
  seeds);
- ``target_top1``: share of the class's pictures the model calls that class;
- ``mean_target_confidence``: ``target_confidence`` averaged over the visualized classes.

Work units: tag ``classes``, chunks of ``batch_size`` (class, seed) pictures; tag
``channels``, chunks of ``batch_size`` channels (option ``channels``). Each unit's pictures
come from its own generator.

Classes: ``classes`` when named; all when the model has at most ``max_classes``; beyond, the
classes the data brings up (its labels, then the model's top-1 predictions on it; at most
``max_classes``), or without data ``max_classes`` evenly spaced ones
(:mod:`audit.targets`). The work follows the classes visualized, not the model's output
count. Nothing is optimized when the model has no usable input gradient
(``ctx.gradient_problem``).

Publishes ``class_viz.images`` (:class:`audit.published.ClassVizImages`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Literal

import torch

from audit.distributed import chunks
from audit.errors import ConfigError
from audit.fastpath import FastPath, FastSettings, fast_metadata
from audit.options import opt
from audit.batching import few_threads_for_small_work
from audit.published import ClassVizImages
from audit.records import record
from audit.registry import Check, Unit, register_check
from audit.results import CheckResult
from audit.targets import data_classes, select_classes
from probes.layers import capture, conv_layers, default_layers, model_hookable

from .figures import channel_caption, channels_png, class_caption, gallery_png
from .optimize import visualize
from .param import to_input_size

__all__ = ["ClassVizCheck", "ClassPictures", "ChannelPictures"]


@record
class ClassPictures:
    """A ``classes`` unit: ``pictures`` (n, C, h, w) float32 in [0, 1] at the picture size,
    ``images`` the same at the model's input size (n, C, H, W); the model on ``images``:
    ``conf`` (n,) softmax probability of each picture's class, ``top_p``/``top_i`` (n, <=3)
    its top-3 probabilities and class indices; ``seconds`` spent optimizing."""

    pictures: torch.Tensor
    images: torch.Tensor
    conf: torch.Tensor
    top_p: torch.Tensor
    top_i: torch.Tensor
    seconds: float


@record
class ChannelPictures:
    """A ``channels`` unit: ``pictures`` (n, C, h, w) in [0, 1]; on each picture at the
    input size, ``activation`` (n,) the mean activation of its own channel, ``top`` (n,)
    the predicted class and ``top_conf`` (n,) its probability; ``seconds`` spent."""

    pictures: torch.Tensor
    activation: torch.Tensor
    top: torch.Tensor
    top_conf: torch.Tensor
    seconds: float


@dataclass(frozen=True)
class _Plan:
    """What ``units`` and ``summarize`` share (deterministic, no random draw)."""

    classes: list[int]
    note: str
    targets: list[int]  #: the class of each picture (classes x seeds)
    seeds: list[int]  #: the seed number of each picture
    image_hw: tuple[int, int]
    work: int  #: pixels a forward pass of one batch (threads choice)
    gradient_problem: str | None
    layer: str = ""  #: layer of the channel pictures ("" = none)
    channels_unsupported: bool = False


@register_check("class_viz")
class ClassVizCheck(Check):
    publishes = {"class_viz.images": ClassVizImages}
    description = "activation maximization: a picture of each class as the model sees it, with its top-3 on it"
    needs_data = False
    progress_unit = "batch"
    metrics = {
        "target_confidence": "softmax probability of the class on its own visualization (mean over seeds; per `class`)",
        "target_top1": "share of the class's visualizations the model classifies as that class (per `class`)",
        "mean_target_confidence": "target_confidence averaged over the visualized classes",
        "channel_activation": "mean activation of a channel (option `channels`) on its own visualization "
                              "(per `layer`, `channel`)",
    }
    findings = {
        "class_viz.not_reached": "info: the optimization did not make the model confident of some classes on their "
                                 "own pictures (too few steps, or gradients that do not reach the input)",
        "class_viz.channels_unsupported": "info: channel visualizations need module hooks (not in TorchScript / "
                                          "export programs)",
        "class_viz.no_gradient": "info: the model gives no usable input gradient, so no visualization was made",
    }

    @dataclass
    class Options:
        steps: int = opt(256, min=1, doc="Adam steps per picture")
        lr: float = opt(0.02, min=0, doc="Adam learning rate on the Fourier coefficients (> 0; Lucid's 0.05 "
                                         "over-saturates small CNNs)")
        image_size: int = opt(0, min=0, doc="longer side of the picture in pixels; 0 = the model's input size")
        seeds: int = opt(1, min=1, doc="pictures per class (different random starts)")
        diversity: float = opt(0.0, min=0, doc="weight of the Gram-similarity penalty between pictures of a class "
                                               "(seeds > 1)")
        objective: Literal["logit", "logit_minus_mean"] = opt("logit", doc="what a class picture maximizes")
        classes: list[int | str] = opt(list, min=0, doc="class names or indices; empty = all (up to max_classes)")
        max_classes: int = opt(64, min=1, doc="most classes visualized when `classes` is empty: beyond, the data's "
                                              "labels and top-1 predictions (audit/targets.py), else evenly thinned")
        batch_size: int = opt(64, min=1, doc="pictures optimized together (a work unit)")
        decay: float = opt(1.0, min=0, doc="spectrum scaling 1/f**decay")
        rotate_deg: float = opt(10.0, min=0, max=180, doc="largest random rotation, degrees")
        jitter: float = opt(0.05, min=0, max=1, doc="largest shift per step, fraction of the side")
        min_crop: float = opt(0.6, min=0, max=1, doc="smallest random crop of a picture larger than the input, "
                                                    "fraction of its side (> 0)")
        amp: bool | None = opt(None, doc="bfloat16 autocast: true on CUDA only, false never; unset: [audit] precision")
        confident: float = opt(0.5, min=0, max=1, doc="below this target confidence a class is listed in "
                                                      "class_viz.not_reached")
        channels: list[int] = opt(list, min=0, doc="channel indices of `layer` to visualize too (channel objective)")
        layer: str = opt("", doc="module name for `channels` (named_modules); \"\" = the last convolution")

        def __post_init__(self) -> None:
            for key in ("lr", "min_crop"):  # open at 0: opt() bounds are inclusive
                if not getattr(self, key) > 0:
                    raise ConfigError(f"[checks.class_viz] {key} = {getattr(self, key)!r}: must be > 0")

    _plan_cache: _Plan | None = None

    # ------------------------------------------------------------------ plan
    def _plan(self, ctx) -> _Plan:
        """Classes, pictures, picture size, the gradient verdict and the channel layer;
        computed once (a bad class, layer or channel raises here, before any work)."""
        if self._plan_cache is not None:
            return self._plan_cache
        o, model = self.options, ctx.model
        c, ih, iw = model.spec.input_shape
        if o.image_size > 0:
            f = o.image_size / max(ih, iw)
            image_hw = (max(ih, round(ih * f)), max(iw, round(iw * f)))
        else:
            image_hw = (ih, iw)
        data = ctx.data
        seen = data_classes(getattr(data, "y", None), ctx.logits) if len(model.class_names) > o.max_classes else None
        classes, note = select_classes(model.class_names, list(o.classes), o.max_classes, seen)
        targets = [k for k in classes for _ in range(o.seeds)]
        plan = _Plan(classes, note, targets, [s for _ in classes for s in range(o.seeds)], image_hw,
                     min(len(targets), max(1, o.batch_size)) * ih * iw, ctx.gradient_problem)
        if o.channels and plan.gradient_problem is None:
            if model_hookable(model):
                plan = replace(plan, layer=self._channel_layer(model))
            else:
                plan = replace(plan, channels_unsupported=True)
        self._plan_cache = plan
        return plan

    def _channel_layer(self, model) -> str:
        """The layer of the channel pictures; ConfigError for an unknown layer or a channel
        beyond its width."""
        o = self.options
        layer = o.layer or (default_layers(model.net, 1) or [""])[0]
        if layer not in dict(model.net.named_modules()):
            raise ConfigError(f"[checks.class_viz] layer {layer!r} is not a module of the model "
                              f"(conv layers: {', '.join(conv_layers(model.net)[-6:])})")
        c, ih, iw = model.spec.input_shape
        with capture(model.net, [layer]) as store, torch.no_grad():
            model(torch.full((1, c, ih, iw), 0.5, device=model.device))
        width = store[layer].shape[1]
        bad = [ch for ch in o.channels if not 0 <= ch < width]
        if bad:
            raise ConfigError(f"[checks.class_viz] channels {bad} out of range: layer {layer!r} has {width} channels")
        return layer

    def _fast(self, ctx) -> FastSettings:
        """The fast path's settings: ``[audit]``'s; ``amp`` set overrides the precision (true:
        bf16 on CUDA only; false: fp32). The pictures' confidences are scored in fp32 eager."""
        o, cfg = self.options, ctx.config
        precision = cfg.precision if o.amp is None else ("bf16" if o.amp and ctx.model.device.type == "cuda" else "fp32")
        return FastSettings(precision=precision, compile=cfg.compile)

    # ------------------------------------------------------------------ contract
    def units(self, ctx) -> list[Unit]:
        """``classes:k`` per chunk of ``batch_size`` pictures, then ``channels:k`` per chunk
        of channels; none without a usable input gradient."""
        o, plan = self.options, self._plan(ctx)
        if plan.gradient_problem:
            return []
        out = [Unit("classes", k, [plan.targets[i] for i in part.tolist()])
               for k, part in enumerate(chunks(len(plan.targets), o.batch_size))]
        if plan.layer:
            out += [Unit("channels", k, [o.channels[i] for i in part.tolist()])
                    for k, part in enumerate(chunks(len(o.channels), o.batch_size))]
        return out

    def compute(self, unit: Unit, ctx, generator: torch.Generator) -> ClassPictures | ChannelPictures:
        """The pictures of one chunk (payload: class or channel indices), and the model's
        answers on them at its input size."""
        o, model, plan = self.options, ctx.model, self._plan(ctx)
        c, ih, iw = model.spec.input_shape
        chunk = list(unit.payload)
        view_kw = dict(jitter=o.jitter, rotate_deg=o.rotate_deg, min_crop=o.min_crop)
        t0 = time.perf_counter()
        path = FastPath(model, self._fast(ctx))
        probe = torch.full((2, c, ih, iw), 0.5, device=model.device)
        if unit.tag == "channels":
            with few_threads_for_small_work(model.device, plan.work), path.layout(probe):
                pics = visualize(model, chunk, steps=o.steps, lr=o.lr, image_hw=plan.image_hw, generator=generator,
                                 decay=o.decay, path=path, view_kw=view_kw, channel_layer=plan.layer)
            seconds = time.perf_counter() - t0
            with capture(model.net, [plan.layer]) as store, torch.no_grad():
                probs = model(to_input_size(pics, (ih, iw)).to(model.device)).float().softmax(1).cpu()
            act = store[plan.layer].float().flatten(2).mean(2).cpu()
            top_conf, top = probs.max(1)
            return ChannelPictures(pics, act[torch.arange(len(chunk)), torch.tensor(chunk)], top, top_conf, seconds)
        with few_threads_for_small_work(model.device, plan.work), path.layout(probe), \
                ctx.bar(total=len(chunk) * o.steps, desc="optimizing", unit="img-step") as bar:
            pics = visualize(model, chunk, steps=o.steps, lr=o.lr, image_hw=plan.image_hw, generator=generator,
                             objective=o.objective, decay=o.decay, diversity=o.diversity, path=path,
                             view_kw=view_kw, progress=bar)
        seconds = time.perf_counter() - t0
        small = to_input_size(pics, (ih, iw))
        probs = model.logits(small, batch_size=ctx.config.batch_size).softmax(1)
        top_p, top_i = probs.topk(min(3, probs.shape[1]), dim=1)
        conf = probs[torch.arange(len(chunk)), torch.tensor(chunk)]
        return ClassPictures(pics, small, conf, top_p, top_i, seconds)

    def summarize(self, records: list, ctx) -> CheckResult:
        o, plan = self.options, self._plan(ctx)
        res = CheckResult(self.name)
        if plan.gradient_problem:
            res.finding("info", "class_viz.no_gradient",
                        "The model's logits give no usable gradient with respect to the input "
                        f"({plan.gradient_problem}), so no class visualization could be optimized.")
            res.summary = "no input gradient: nothing visualized"
            return res
        recs = [r for r in records if isinstance(r, ClassPictures)]
        pics = torch.cat([r.pictures for r in recs])
        small = torch.cat([r.images for r in recs])
        seconds = sum(r.seconds for r in recs)
        mean_conf, top1 = self._class_results(res, ctx.model.class_names, recs, pics)
        timings = {"classes": round(seconds, 3)}
        if plan.channels_unsupported:
            res.finding("info", "class_viz.channels_unsupported", "Channel visualizations need module hooks, which "
                        f"this {ctx.model.info.get('format')} model does not offer; none were made.")
        elif plan.layer:
            chans = [r for r in records if isinstance(r, ChannelPictures)]
            self._channel_results(res, ctx.model.class_names, chans)
            timings["channels"] = round(sum(r.seconds for r in chans), 3)
        steps_total = len(plan.targets) * o.steps
        res.data["timings"] = timings
        res.data["fast_path"] = fast_metadata(ctx.model, self._fast(ctx))
        res.data["throughput"] = {"image_steps": steps_total, "image_steps_per_s": round(steps_total / max(seconds, 1e-9), 1),
                                  "device": str(ctx.model.device), "image_hw": list(plan.image_hw),
                                  "batch_size": o.batch_size}
        if plan.note:
            res.data["note"] = plan.note
        ctx.publish("class_viz.images", ClassVizImages(images=small, classes=list(plan.targets), seeds=list(plan.seeds)))
        h, w = plan.image_hw
        res.summary = (f"{len(plan.classes)} classes visualized ({o.steps} steps, {h}x{w} px, {seconds:.1f} s); "
                       f"mean target confidence {mean_conf:.2f}, top-1 on own picture {top1:.0%}"
                       + (f"; {plan.note}" if plan.note else ""))
        return res

    def _class_results(self, res: CheckResult, names: list[str], recs: list[ClassPictures],
                       pics: torch.Tensor) -> tuple[float, float]:
        """Metrics, ``data.pictures``, ``class_viz.not_reached`` and the gallery; returns
        (mean target confidence, share of pictures classified as their class)."""
        o, plan = self.options, self._plan_cache
        conf = torch.cat([r.conf for r in recs])
        top_p, top_i = torch.cat([r.top_p for r in recs]), torch.cat([r.top_i for r in recs])
        tgt = torch.tensor(plan.targets)
        is_top = top_i[:, 0] == tgt
        pictures, captions = [], []
        for j, (k, s) in enumerate(zip(plan.targets, plan.seeds)):
            top3 = [[names[int(a)], round(float(p), 4)] for a, p in zip(top_i[j], top_p[j])]
            pictures.append({"class": names[k], "seed": s, "target_confidence": round(float(conf[j]), 4), "top3": top3})
            captions.append(class_caption(names[k], s, o.seeds, top3))
        weak = []
        for k in plan.classes:
            m = tgt == k
            cf = float(conf[m].mean())
            res.metric("target_confidence", cf, **{"class": names[k]})
            res.metric("target_top1", float(is_top[m].float().mean()), **{"class": names[k]})
            if cf < o.confident:
                weak.append(f"{names[k]} ({cf:.2f})")
        mean_conf = float(torch.stack([conf[tgt == k].mean() for k in plan.classes]).mean())
        res.metric("mean_target_confidence", mean_conf)
        if weak:
            res.finding("info", "class_viz.not_reached",
                        f"{len(weak)} of {len(plan.classes)} classes stay below {o.confident:.2f} confidence on their "
                        f"own visualization after {o.steps} steps: {', '.join(weak[:8])}{' ...' if len(weak) > 8 else ''}.")
        h, w = plan.image_hw
        res.image("gallery.png", gallery_png(pics, captions, seeds=o.seeds, image_hw=plan.image_hw),
                  f"What the model thinks each class looks like: activation maximization, {o.steps} steps, "
                  f"{h}x{w} px; under each picture the model's own top-3 predictions on it.")
        res.data["pictures"] = pictures
        return mean_conf, float(is_top.float().mean())

    def _channel_results(self, res: CheckResult, names: list[str], recs: list[ChannelPictures]) -> None:
        """Metric ``channel_activation``, ``data.channels`` and the channel gallery."""
        o, layer = self.options, self._plan_cache.layer
        chans = list(o.channels)
        act = torch.cat([r.activation for r in recs])
        top, top_conf = torch.cat([r.top for r in recs]), torch.cat([r.top_conf for r in recs])
        caps, rows = [], []
        for j, ch in enumerate(chans):
            a, seen, p = float(act[j]), names[int(top[j])], float(top_conf[j])
            res.metric("channel_activation", a, layer=layer, channel=ch)
            rows.append({"layer": layer, "channel": ch, "activation": round(a, 4), "top1": [seen, round(p, 4)]})
            caps.append(channel_caption(layer, ch, a, seen, p))
        res.data["channels"] = rows
        res.image("channels.png", channels_png(torch.cat([r.pictures for r in recs]), caps, layer),
                  f"What channels {', '.join(map(str, chans[:12]))}{' ...' if len(chans) > 12 else ''} of layer {layer} "
                  "respond to: pictures maximizing each channel's mean activation (Olah et al. 2017), captioned with "
                  "the activation and the class the model sees in the picture.")
