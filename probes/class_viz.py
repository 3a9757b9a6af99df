"""The ``class_viz`` check: what does the model think each class looks like?

Activation maximization in the style of Lucid/Lucent (Olah, Mordvintsev & Schubert 2017,
"Feature Visualization", Distill; Mordvintsev et al. 2015, "Inceptionism"): for each class
a picture is optimized, from noise, to maximize the class's pre-softmax logit (option
``objective = "logit_minus_mean"``: minus the mean of the other logits). The picture is a
Fourier-space parameterization with 1/f scaling in a decorrelated colour space, squashed to
[0, 1] by a sigmoid (:mod:`probes.viz_param`); every step the model sees it randomly padded,
jittered, scaled and rotated (transformation robustness), and, when ``image_size`` exceeds
the model's input, averaged down and randomly cropped. Adam, ``steps`` steps, all classes
(and ``seeds`` pictures per class) optimized together in batches. With ``seeds > 1`` a
``diversity`` weight penalizes the cosine similarity of the Gram matrices of the last
convolution's activations between pictures of the same class (Lucid's diversity
objective).

The check needs no data. For each picture it reports the model's own top-3 predictions on
it (the picture at the model's input size, no transformation).

Metrics (``class`` = the visualized class):

- ``target_confidence``: softmax probability of the class on its own picture (mean over
  seeds);
- ``target_top1``: share of the class's pictures the model calls that class;
- ``mean_target_confidence``: ``target_confidence`` averaged over the visualized classes.

Published for later checks: ``class_viz.images`` = ``{"images": float tensor (K, C, H, W)
in [0, 1] at the model's input size (CPU), "classes": [class index per picture],
"seeds": [seed index per picture]}``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from audit.distributed import chunks
from audit.imaging import image_grid
from audit.published import ClassVizImages
from audit.registry import Check, register_check
from audit.results import CheckResult

from .concept_layers import capture, conv_layers, default_layers, hookable
from .viz_param import FourierImage, few_threads_for_small_work, random_views, to_input_size


def select_classes(names: list[str], wanted: list, max_classes: int) -> tuple[list[int], str]:
    """Class indices to visualize: ``wanted`` (names or indices) or all, evenly thinned to
    ``max_classes``. Returns (indices, a note when thinned)."""
    k = len(names)
    if wanted:
        out = []
        for w in wanted:
            if isinstance(w, int) or (isinstance(w, str) and w.isdigit() and w not in names):
                i = int(w)
                if not 0 <= i < k:
                    raise ValueError(f"class index {i} is out of range for a model with {k} classes")
                out.append(i)
            elif w in names:
                out.append(names.index(w))
            else:
                raise ValueError(f"class {w!r} is not one of the model's classes")
        return out, ""
    if k <= max_classes:
        return list(range(k)), ""
    if max_classes <= 1:
        return [0], f"1 of {k} classes visualized (set [checks.class_viz] classes)"
    idx = sorted({round(i * (k - 1) / (max_classes - 1)) for i in range(max_classes)})
    return idx, f"{len(idx)} of {k} classes visualized (evenly spaced; set [checks.class_viz] classes)"


def _gram_similarity(act: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the Gram matrices of pictures in the same group."""
    n, c = act.shape[:2]
    a = act.float().reshape(n, c, -1)
    gram = torch.bmm(a, a.transpose(1, 2)).reshape(n, -1)
    gram = torch.nn.functional.normalize(gram, dim=1)
    sim = gram @ gram.T
    same = (groups.view(-1, 1) == groups.view(1, -1)) & ~torch.eye(n, dtype=torch.bool, device=act.device)
    return (sim * same).sum() / same.sum().clamp_min(1)


def visualize(model, targets: list[int], *, steps: int, lr: float, image_hw: tuple[int, int],
              generator: torch.Generator, objective: str = "logit", decay: float = 1.0, sd: float = 0.01,
              diversity: float = 0.0, groups: list[int] | None = None, amp: bool = True,
              view_kw: dict | None = None, progress=None, channel_layer: str | None = None) -> torch.Tensor:
    """Optimize one picture per entry of ``targets`` (class indices) and return them as a
    CPU tensor (n, C, *image_hw) in [0, 1]. ``model`` is an AuditModel (pixel space).
    With ``channel_layer`` (a module name), ``targets`` are channel indices of that layer and
    the objective is the channel's mean activation (Olah et al. 2017's channel objective)."""
    dev = model.device
    c, ih, iw = model.spec.input_shape
    n = len(targets)
    img = FourierImage(n, c, *image_hw, sd=sd, decay=decay, generator=generator, device=dev)
    opt = torch.optim.Adam([img.spectrum], lr=lr)
    tgt = torch.tensor(targets, device=dev)
    grp = torch.tensor(groups if groups is not None else targets, device=dev)
    use_div = diversity > 0 and n > 1 and len(set(grp.tolist())) < n and hookable(model.net)
    layer = default_layers(model.net, 1) if use_div else []
    hooks = layer + ([channel_layer] if channel_layer and channel_layer not in layer else [])
    use_amp = amp and dev.type == "cuda"
    rows = torch.arange(n, device=dev)
    for _ in range(steps):
        x = random_views(img(), (ih, iw), generator, **(view_kw or {}))
        with capture(model.net, hooks) as store, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x).float()
        if channel_layer:
            act = store[channel_layer].float()
            obj = act[rows, tgt].flatten(1).mean(1)
        else:
            obj = logits[rows, tgt]
        if objective == "logit_minus_mean" and logits.shape[1] > 1 and not channel_layer:
            obj = obj - (logits.sum(1) - obj) / (logits.shape[1] - 1)
        loss = -obj.sum()
        if use_div and layer[0] in store:
            loss = loss + diversity * n * _gram_similarity(store[layer[0]], grp)
        opt.zero_grad(set_to_none=True)
        (g,) = torch.autograd.grad(loss, [img.spectrum])
        img.spectrum.grad = g
        opt.step()
        if progress is not None:
            progress.update(n)
    with torch.no_grad():
        return img().detach().float().cpu()


@register_check("class_viz")
class ClassVizCheck(Check):
    publishes = {"class_viz.images": ClassVizImages}
    description = "activation maximization: a picture of each class as the model sees it, with its top-3 on it"
    needs_data = False
    shardable = True  # work units: chunks of batch_size pictures (classes x seeds)
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
        steps: int = 256  #: Adam steps per picture
        lr: float = 0.02  #: Adam learning rate on the Fourier coefficients (0.05, Lucid's, over-saturates small CNNs)
        image_size: int = 0  #: longer side of the picture; 0 = the model's input size
        seeds: int = 1  #: pictures per class (different random starts)
        diversity: float = 0.0  #: weight of the Gram-similarity penalty between pictures of a class (seeds > 1)
        objective: str = "logit"  #: "logit" or "logit_minus_mean"
        classes: list = field(default_factory=list)  #: class names or indices; empty = all (up to max_classes)
        max_classes: int = 64
        batch_size: int = 64  #: pictures optimized together
        decay: float = 1.0  #: spectrum scaling 1/f**decay
        rotate_deg: float = 10.0
        jitter: float = 0.05  #: largest shift per step, fraction of the side
        min_crop: float = 0.6  #: smallest random crop of a picture larger than the input
        amp: bool = True  #: bfloat16 autocast on CUDA
        confident: float = 0.5  #: below this target confidence a class is listed in class_viz.not_reached
        channels: list = field(default_factory=list)  #: channel indices of `layer` to visualize too (channel objective)
        layer: str = ""  #: module name for `channels` (named_modules); "" = the last convolution

        def __post_init__(self) -> None:
            from audit.errors import ConfigError

            if self.objective not in ("logit", "logit_minus_mean"):
                raise ConfigError(f"[checks.class_viz] objective must be 'logit' or 'logit_minus_mean', "
                                  f"not {self.objective!r}")
            for key in ("steps", "seeds", "max_classes", "batch_size"):
                if getattr(self, key) < 1:
                    raise ConfigError(f"[checks.class_viz] {key} must be at least 1, got {getattr(self, key)}")
            if self.lr <= 0 or self.image_size < 0:
                raise ConfigError("[checks.class_viz] lr must be positive and image_size >= 0")

    def run(self, ctx) -> CheckResult:
        o = self.options
        res = CheckResult(self.name)
        if o.objective not in ("logit", "logit_minus_mean"):
            raise ValueError(f"objective must be 'logit' or 'logit_minus_mean', not {o.objective!r}")
        model = ctx.model
        names = model.class_names
        c, ih, iw = model.spec.input_shape
        if o.image_size > 0:
            f = o.image_size / max(ih, iw)
            image_hw = (max(ih, round(ih * f)), max(iw, round(iw * f)))
        else:
            image_hw = (ih, iw)
        classes, note = select_classes(names, list(o.classes), o.max_classes)
        probe = torch.full((1, c, ih, iw), 0.5, device=model.device, requires_grad=True)
        out = model(probe)[0, classes[0]]
        g = torch.autograd.grad(out, probe, allow_unused=True)[0] if out.requires_grad else None
        if g is None or not torch.isfinite(g).all() or float(g.abs().sum()) == 0:
            res.finding("info", "class_viz.no_gradient",
                        "The model's logits give no usable gradient with respect to the input, so no class "
                        "visualization could be optimized.")
            res.summary = "no input gradient: nothing visualized"
            return res
        targets = [k for k in classes for _ in range(o.seeds)]
        seeds = [s for _ in classes for s in range(o.seeds)]
        view_kw = dict(jitter=o.jitter, rotate_deg=o.rotate_deg, min_crop=o.min_crop)
        t0 = time.perf_counter()
        work = min(len(targets), max(1, o.batch_size)) * ih * iw
        parts = chunks(len(targets), o.batch_size)

        def unit(k: int, gen: torch.Generator) -> torch.Tensor:
            """One work unit: the pictures of a chunk of ``batch_size`` (class, seed) pairs."""
            chunk = [targets[i] for i in parts[k].tolist()]
            with few_threads_for_small_work(model.device, work), \
                    ctx.bar(total=len(chunk) * o.steps, desc="optimizing", unit="img-step") as bar:
                return visualize(model, chunk, steps=o.steps, lr=o.lr, image_hw=image_hw, generator=gen,
                                 objective=o.objective, decay=o.decay, diversity=o.diversity, amp=o.amp,
                                 view_kw=view_kw, progress=bar)

        pics_t = torch.cat(ctx.map_units(len(parts), unit, tag="classes", desc="batches", unit="batch"))
        elapsed = time.perf_counter() - t0
        small = to_input_size(pics_t, (ih, iw))
        probs = model.logits(small, batch_size=ctx.config.batch_size).softmax(1)
        top_p, top_i = probs.topk(min(3, probs.shape[1]), dim=1)
        tgt = torch.tensor(targets)
        conf = probs[torch.arange(len(targets)), tgt]
        is_top = top_i[:, 0] == tgt
        records, captions = [], []
        for j, (k, s) in enumerate(zip(targets, seeds)):
            top3 = [[names[int(a)], round(float(p), 4)] for a, p in zip(top_i[j], top_p[j])]
            records.append({"class": names[k], "seed": s, "target_confidence": round(float(conf[j]), 4), "top3": top3})
            head = names[k] if o.seeds == 1 else f"{names[k]} #{s}"
            rest = " · ".join(f"{a} {p:.2f}" for a, p in top3[1:])
            captions.append(f"{head}: top {top3[0][0]} {top3[0][1]:.2f}" + (f"\n{rest}" if rest else ""))
        weak = []
        for k in classes:
            m = tgt == k
            cf = float(conf[m].mean())
            res.metric("target_confidence", cf, **{"class": names[k]})
            res.metric("target_top1", float(is_top[m].float().mean()), **{"class": names[k]})
            if cf < o.confident:
                weak.append(f"{names[k]} ({cf:.2f})")
        mean_conf = float(torch.stack([conf[tgt == k].mean() for k in classes]).mean())
        res.metric("mean_target_confidence", mean_conf)
        if weak:
            res.finding("info", "class_viz.not_reached",
                        f"{len(weak)} of {len(classes)} classes stay below {o.confident:.2f} confidence on their own "
                        f"visualization after {o.steps} steps: {', '.join(weak[:8])}{' ...' if len(weak) > 8 else ''}.")
        disp = max(1, round(160 / max(image_hw)))
        cols = o.seeds if o.seeds > 1 else min(8, math.ceil(math.sqrt(len(targets))))
        res.image("gallery.png", image_grid(list(pics_t), captions, cols=cols,
                                            cell=max(1.9, min(3.0, max(image_hw) * disp / 60)),
                                            title="class visualizations (caption: class, then the model's top-3 on the picture)"),
                  f"What the model thinks each class looks like: activation maximization, {o.steps} steps, "
                  f"{image_hw[0]}x{image_hw[1]} px; under each picture the model's own top-3 predictions on it.")
        if o.channels:
            self._channels(ctx, res, image_hw, view_kw, work)
        steps_total = len(targets) * o.steps
        res.data["pictures"] = records
        res.data["timing"] = {"seconds": round(elapsed, 2), "image_steps": steps_total,
                              "image_steps_per_s": round(steps_total / max(elapsed, 1e-9), 1),
                              "device": str(model.device), "image_hw": list(image_hw), "batch_size": o.batch_size}
        if note:
            res.data["note"] = note
        ctx.publish("class_viz.images", ClassVizImages(images=small, classes=list(targets), seeds=list(seeds)))
        res.summary = (f"{len(classes)} classes visualized ({o.steps} steps, {image_hw[0]}x{image_hw[1]} px, "
                       f"{elapsed:.1f} s); mean target confidence {mean_conf:.2f}, "
                       f"top-1 on own picture {float(is_top.float().mean()):.0%}" + (f"; {note}" if note else ""))
        return res

    def _channels(self, ctx, res: CheckResult, image_hw, view_kw, work) -> None:
        """Pictures maximizing the mean activation of the chosen channels of one layer, each
        captioned with its activation and the class the model sees in it."""
        o, model = self.options, ctx.model
        if not hookable(model.net):
            res.finding("info", "class_viz.channels_unsupported", "Channel visualizations need module hooks, which "
                        f"this {model.info.get('format')} model does not offer; none were made.")
            return
        layer = o.layer or (default_layers(model.net, 1) or [""])[0]
        mods = dict(model.net.named_modules())
        if layer not in mods:
            from audit.errors import ConfigError

            raise ConfigError(f"[checks.class_viz] layer {layer!r} is not a module of the model "
                              f"(conv layers: {', '.join(conv_layers(model.net)[-6:])})")
        c, ih, iw = model.spec.input_shape
        with capture(model.net, [layer]) as store, torch.no_grad():
            model(torch.full((1, c, ih, iw), 0.5, device=model.device))
        width = store[layer].shape[1]
        chans = [int(ch) for ch in o.channels]
        bad = [ch for ch in chans if not 0 <= ch < width]
        if bad:
            from audit.errors import ConfigError

            raise ConfigError(f"[checks.class_viz] channels {bad} out of range: layer {layer!r} has {width} channels")
        parts = chunks(len(chans), o.batch_size)

        def unit(k: int, gen: torch.Generator) -> torch.Tensor:
            with few_threads_for_small_work(model.device, work):
                return visualize(model, [chans[i] for i in parts[k].tolist()], steps=o.steps, lr=o.lr,
                                 image_hw=image_hw, generator=gen, decay=o.decay, amp=o.amp, view_kw=view_kw,
                                 channel_layer=layer)

        pics = torch.cat(ctx.map_units(len(parts), unit, tag="channels", desc="channels", unit="batch"))
        small = to_input_size(pics, (ih, iw))
        with capture(model.net, [layer]) as store, torch.no_grad():
            probs = model(small.to(model.device)).float().softmax(1).cpu()
        act = store[layer].float().flatten(2).mean(2).cpu()
        names = model.class_names
        caps, records = [], []
        for j, ch in enumerate(chans):
            a = float(act[j, ch])
            top = int(probs[j].argmax())
            res.metric("channel_activation", a, layer=layer, channel=ch)
            records.append({"layer": layer, "channel": ch, "activation": round(a, 4),
                            "top1": [names[top], round(float(probs[j, top]), 4)]})
            caps.append(f"{layer}:{ch} (act {a:.2g})\nseen as {names[top]} {float(probs[j, top]):.2f}")
        res.data["channels"] = records
        cols = min(8, max(1, math.ceil(math.sqrt(len(chans)))))
        res.image("channels.png", image_grid(list(pics), caps, cols=cols, cell=2.2,
                                             title=f"channel visualizations at {layer}"),
                  f"What channels {', '.join(map(str, chans[:12]))}{' ...' if len(chans) > 12 else ''} of layer {layer} "
                  "respond to: pictures maximizing each channel's mean activation (Olah et al. 2017), captioned with "
                  "the activation and the class the model sees in the picture.")
