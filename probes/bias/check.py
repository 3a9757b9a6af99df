"""The ``bias`` check: does a class lean on a concept it should not?

Two independent kinds of evidence, and a finding only when both agree:

1. **Concept sensitivity (TCAV)**, Kim et al. 2018 (:mod:`probes.concept_tcav`, our own
   implementation of the paper's procedure): per class x concept x layer, the share of the
   class's images whose logit rises when the layer's activation moves along the concept's
   activation vector (CAV). One score per run, each run against a fresh random
   counter-example set drawn from the random pool; random-vs-random CAVs give the null
   distribution; two-sided t-test. Layers: the model's last ``n_layers``
   convolutions (:mod:`probes.concept_layers`), or ``layers``.
2. **Counterfactual insertion**: each concept's examples are pasted (by a foreground mask:
   what differs from a plane fitted to the example's border) onto correctly classified
   images of the data, and the share that flips to each class is measured against a
   control: random counter-examples pasted the same way.

Concepts come from the ``concepts`` option: a directory with one folder of example images
per concept; folders named ``random*`` are pooled as the random counter-examples (without
them, ``random_pool`` images are drawn from the data). Images are resized to the model's input.

Metrics (qualifiers ``class``, ``concept``, ``layer``):

- ``tcav_score``: mean TCAV score over the runs (0.5 = no directional preference,
  1 = every image of the class is pushed up by the concept);
- ``tcav_p_value``: two-sided t-test of those scores against random-vs-random scores;
- ``flip_rate`` (class = target, concept): share of pasted images of *other* classes the
  model now assigns to the class; ``flip_rate_control``: the same with random examples;
  ``flip_p_value``: exact McNemar test of the paired concept/control flips;
- ``viz_concept_score`` (when ``class_viz`` ran first): cosine between the class
  visualization's activation (relative to the random counter-examples' mean) and the
  concept's CAV, mean over runs and seeds: 0 = no more of the concept than random images;
  compared in the finding with the other classes' pictures and the concept's own examples.

Finding ``bias.concept_dependence`` (class, concept): p below ``alpha`` (Bonferroni-corrected
over classes x concepts x layers when ``bonferroni``), mean TCAV score at least
``min_score``, and flip rate above the control by at least ``min_flip`` with McNemar p below
``alpha`` (Bonferroni-corrected over classes x concepts).

Reads ``class_viz.images`` (published by ``class_viz``) when present.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from audit.imaging import figure_png, image_grid
from audit.registry import Check, register_check
from audit.results import CheckResult

from . import tcav as tc
from probes.class_viz import select_classes
from probes.layers import capture, default_layers, hookable, resolve_layers
from probes.viz_param import few_threads_for_small_work


def load_concepts(path: str, input_shape) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(concepts, random sets) from a folder of concept folders, each as images (N, C, H, W)
    in [0, 1] resized to the model's input."""
    from audit.data import load_data

    p = Path(path).expanduser()
    if not p.is_dir():
        raise ValueError(f"[checks.bias] concepts = {path!r} is not a directory of concept folders")
    d = load_data(p, input_shape=input_shape, resize=True, convert_channels=True)
    concepts, randoms = {}, {}
    for i, name in enumerate(d.class_names):
        x = d.x[d.y == i]
        if len(x) == 0:
            continue
        (randoms if name.lower().startswith("random") else concepts)[name] = x
    return concepts, randoms


def _fmt_p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


@register_check("bias")
class BiasCheck(Check):
    reads = ("class_viz.images",)
    description = "concept dependence: TCAV with significance, counterfactual concept insertion, tie to class_viz"
    needs_data = True
    metrics = {
        "tcav_score": "mean TCAV score (Kim et al. 2018) over random counter-example sets, per class, concept, layer",
        "tcav_p_value": "two-sided t-test of the TCAV scores against random-vs-random CAVs, per class, concept, layer",
        "flip_rate": "share of other classes' images assigned to `class` after pasting the concept onto them",
        "flip_rate_control": "the same share after pasting random counter-examples (the control)",
        "flip_p_value": "exact McNemar test of concept vs control flips on the same images (two-sided)",
        "viz_concept_score": "cosine of the class visualization's activation (minus the random mean) with the concept's CAV",
    }
    findings = {
        "bias.concept_dependence": "a class depends on a concept: significant and strong TCAV score, and pasting the "
                                   "concept flips other classes' images to it",
        "bias.no_concepts": "info: no concept examples were given, so nothing was tested",
        "bias.no_layer": "info: the model's layers cannot be hooked (TorchScript/export), so no TCAV was computed",
    }

    @dataclass
    class Options:
        concepts: str = ""  #: folder with one subfolder of example images per concept; random* = counter-examples
        layers: list = field(default_factory=list)  #: layer names (named_modules); empty = last n_layers convs
        n_layers: int = 2
        space: str = "pooled"  #: CAV space: "pooled" (spatial mean) or "flatten" (Kim et al.'s C*H*W)
        classes: list = field(default_factory=list)  #: classes tested (names); empty = all
        max_per_class: int = 50  #: images per class for TCAV
        runs: int = 20  #: TCAV runs, each against a fresh random set drawn from the random pool
        random_pool: int = 150  #: images drawn from the data as random counter-examples when there are no random* folders
        cav_alpha: float = 0.01  #: L2 weight of the CAV's logistic regression
        alpha: float = 0.05  #: significance level of the t-test
        bonferroni: bool = True  #: divide alpha by the number of tests (classes x concepts x layers)
        min_score: float = 0.7  #: smallest mean TCAV score that counts as strong
        min_flip: float = 0.1  #: smallest flip rate above the control that counts as strong
        max_base: int = 200  #: data images the concepts are pasted onto
        severity: str = "warn"  #: severity of bias.concept_dependence
        examples: int = 8  #: counterfactual examples shown per finding

    def run(self, ctx) -> CheckResult:
        _, h, w = ctx.model.spec.input_shape
        with few_threads_for_small_work(ctx.model.device, 64 * h * w, limit=1 << 19):
            return self._run(ctx)

    def _run(self, ctx) -> CheckResult:
        o = self.options
        res = CheckResult(self.name)
        if o.space not in ("pooled", "flatten"):
            raise ValueError(f"[checks.bias] space must be 'pooled' or 'flatten', not {o.space!r}")
        model, data, g = ctx.model, ctx.data, ctx.generator
        names = model.class_names
        if not o.concepts:
            res.finding("info", "bias.no_concepts", "No concept examples were given ([checks.bias] concepts = DIR, one "
                        "folder of images per concept), so no concept dependence was tested.")
            res.summary = "no concepts given"
            return res
        concepts, randoms = load_concepts(o.concepts, model.spec.input_shape)
        if not concepts:
            res.finding("info", "bias.no_concepts", f"{o.concepts} holds no concept folder besides random sets.")
            res.summary = "no concepts given"
            return res
        random_note = ""
        if len(randoms) == 0:
            perm = torch.randperm(len(data), generator=g)[:o.random_pool]
            randoms = {"random_data": data.x[perm]}
            random_note = f"random counter-examples: {len(perm)} images drawn from the data"
        pool = torch.cat(list(randoms.values()))
        classes = select_classes(names, list(o.classes), len(names))[0]  # validates names and indices

        # ------------------------------------------------------------------ TCAV
        layers = list(o.layers) or default_layers(model.net, o.n_layers)
        tcav = {}  # (class, concept, layer) -> dict
        if layers and hookable(model.net):
            resolve_layers(model.net, layers)
            with capture(model.net, layers) as store, torch.no_grad():
                model(data.x[:1].to(model.device))
                fired = all(n in store for n in layers)
        else:
            fired = False
        if fired:
            acts_pool = tc.activations(model, layers, pool, space=o.space)
            acts_c = {c: tc.activations(model, layers, x, space=o.space) for c, x in concepts.items()}
            draws = [torch.randperm(len(pool), generator=g) for _ in range(o.runs)]
            size0 = max(len(x) for x in concepts.values())
            cav, rsets = {}, {}
            for ln in ctx.bar(layers, desc="CAVs", unit="layer"):
                nulls = tc.null_cavs(acts_pool[ln], draws, size0, alpha=o.cav_alpha)
                for c in concepts:
                    cavs, rsets[c] = tc.run_cavs(acts_c[c][ln], acts_pool[ln], draws, alpha=o.cav_alpha)
                    cav[c, ln] = (cavs, nulls)
            for k in ctx.bar(classes, desc="TCAV", unit="class"):
                idx = (data.y == k).nonzero().flatten()
                idx = idx[torch.randperm(len(idx), generator=g)[:o.max_per_class]]
                if len(idx) == 0:
                    continue
                grads = tc.gradients(model, layers, data.x[idx], k, space=o.space)
                for ln in layers:
                    for c in concepts:
                        cavs, null_cavs = cav[c, ln]
                        s = [tc.tcav_score(grads[ln], v) for v in cavs]
                        s0 = [tc.tcav_score(grads[ln], v) for v in null_cavs]
                        tcav[k, c, ln] = {"scores": s, "null": s0, "p": tc.ttest_p(s, s0), "n": len(idx),
                                          "mean": sum(s) / len(s), "std": float(torch.tensor(s).std()) if len(s) > 1 else 0.0}
        else:
            res.finding("info", "bias.no_layer", "The model's layers cannot be hooked (a TorchScript or exported graph, "
                        "or no convolution found; name them with [checks.bias] layers), so no TCAV score was computed "
                        "and no concept-dependence finding can be raised; the counterfactual flip rates still are.")
            layers = []
        n_tests = max(1, len(tcav))
        alpha_eff = o.alpha / n_tests if o.bonferroni else o.alpha
        alpha_flip = o.alpha / (len(classes) * len(concepts)) if o.bonferroni else o.alpha
        for (k, c, ln), t in tcav.items():
            q = {"class": names[k], "concept": c, "layer": ln}
            res.metric("tcav_score", t["mean"], **q)
            res.metric("tcav_p_value", t["p"], **q)

        # ------------------------------------------------------------ counterfactuals
        correct = (ctx.preds == data.y).nonzero().flatten()
        base_idx = correct[torch.randperm(len(correct), generator=g)[:o.max_base]]
        base, base_y = data.x[base_idx], data.y[base_idx]
        ctrl, _ = tc.paste(base, pool, g)
        ctrl_pred = model.logits(ctrl, batch_size=ctx.config.batch_size).argmax(1)
        flips, pasted_store = {}, {}
        for c, x in concepts.items():
            pasted, _ = tc.paste(base, x, g)
            pred = model.logits(pasted, batch_size=ctx.config.batch_size).argmax(1)
            pasted_store[c] = (pasted, pred)
            for k in classes:
                other = base_y != k
                n = int(other.sum())
                a, b = pred[other] == k, ctrl_pred[other] == k
                fr = float(a.float().mean()) if n else float("nan")
                fc = float(b.float().mean()) if n else float("nan")
                pf = tc.mcnemar_p(int((a & ~b).sum()), int((b & ~a).sum()))
                flips[k, c] = {"flip": fr, "control": fc, "n": n, "p": pf}
                q = {"class": names[k], "concept": c}
                res.metric("flip_rate", fr, **q)
                res.metric("flip_rate_control", fc, **q)
                res.metric("flip_p_value", pf, **q)

        # ------------------------------------------------------- tie to class_viz
        viz = ctx.published.get("class_viz.images")
        viz_scores = {}  # (class, concept, layer) -> (picture, other classes' pictures, concept examples)
        if viz is not None and layers:
            vx, vcls = viz.images.float(), torch.as_tensor(viz.classes)
            acts_v = tc.activations(model, layers, vx, space=o.space)
            for ln in layers:
                for c in concepts:
                    rs = [acts_pool[ln][r] for r in rsets[c]]
                    proj = tc.concept_alignment(acts_v[ln], cav[c, ln][0], rs)
                    ref = float(tc.concept_alignment(acts_c[c][ln], cav[c, ln][0], rs).mean())
                    per = {int(k): float(proj[vcls == k].mean()) for k in vcls.unique()}
                    for k, v in per.items():
                        others = [w for j, w in per.items() if j != k]
                        viz_scores[k, c, ln] = (v, sum(others) / len(others) if others else float("nan"), ref)
                        res.metric("viz_concept_score", v, **{"class": names[k], "concept": c, "layer": ln})

        # ------------------------------------------------------------------ findings
        leans = {}
        for k in classes:
            for c in concepts:
                ev = [(ln, tcav[k, c, ln]) for ln in layers if (k, c, ln) in tcav]
                strong = [(ln, t) for ln, t in ev if t["p"] < alpha_eff and t["mean"] >= o.min_score]
                f = flips.get((k, c))
                if not strong or f is None or not (f["flip"] - f["control"] >= o.min_flip and f["p"] < alpha_flip):
                    continue
                ln, t = min(strong, key=lambda e: e[1]["p"])
                leans.setdefault(k, []).append((c, ln, t, f))
                msg = (f"Class {names[k]!r} depends on concept {c!r}: TCAV score {t['mean']:.2f} at layer {ln} "
                       f"(random-vs-random {sum(t['null']) / len(t['null']):.2f}, p = {_fmt_p(t['p'])}, "
                       f"{len(t['scores'])} runs), and pasting {c!r} onto {f['n']} images of other classes "
                       f"turns {f['flip']:.0%} of them into {names[k]!r} (random pastes: {f['control']:.0%}; "
                       f"McNemar p = {_fmt_p(f['p'])}).")
                vs = viz_scores.get((k, c, ln))
                if vs is not None:
                    msg += (f" Its class visualization points along the {c!r} direction: cosine {vs[0]:.2f} "
                            f"(other classes' pictures {vs[1]:.2f} on average, the {c!r} examples themselves "
                            f"{vs[2]:.2f}).")
                res.finding(o.severity, "bias.concept_dependence", msg, class_=names[k], concept=c, layer=ln,
                            tcav_score=round(t["mean"], 4), p_value=t["p"], flip_rate=round(f["flip"], 4))

        # ------------------------------------------------------------------ report
        if viz is not None:  # the class's own picture next to the concept it leans on: the story at a glance
            vcls = torch.as_tensor(viz.classes)
            for k, lst in leans.items():
                mine = viz.images[vcls == k]
                for c, *_ in lst:
                    if not len(mine):
                        continue
                    ex = concepts[c][:max(1, 6 - len(mine))]
                    ims = [*mine, *ex]
                    caps = [f"model's picture of {names[k]!r}"] * len(mine) + [f"{c!r} example"] * len(ex)
                    res.image(f"leans_{_safe(names[k])}_{_safe(c)}.png",
                              image_grid(ims, caps, cols=len(ims), cell=2.6),
                              f"Left: what the model draws when asked for {names[k]!r} (class_viz, activation "
                              f"maximization). Right: examples of the concept {c!r} that {names[k]!r} depends on "
                              "(see the finding). Shapes and colours the two share are what the class has learned "
                              "from the concept.")
        if tcav:
            res.image("tcav.png", self._tcav_figure(names, classes, concepts, layers, tcav, flips, viz, viz_scores,
                                                    alpha_eff, leans),
                      "Per class: its class visualization (when class_viz ran), TCAV scores per concept and layer "
                      "(bars: mean over runs, whiskers: std; grey tick: random-vs-random mean; * differs from "
                      f"random at p < {alpha_eff:.2g}, in either direction), and the concepts it leans on. A class "
                      f"depends on a concept only when its score is significantly high (>= {self.options.min_score:g}) "
                      "and pasting the concept flips other images to it; a significantly low score means the "
                      "concept pushes away from the class.")
        for c, (pasted, pred) in pasted_store.items():
            target = next((k for k, lst in leans.items() if any(e[0] == c for e in lst)), None)
            if target is None:
                target = max(classes, key=lambda k: flips[k, c]["flip"])
            sel = ((pred == target) & (base_y != target)).nonzero().flatten()
            rest = ((pred != target) & (base_y != target)).nonzero().flatten()
            sel = torch.cat([sel, rest])[:o.examples]
            ims, caps = [], []
            for i in sel.tolist():
                ims += [base[i], pasted[i]]
                caps += [f"{names[int(base_y[i])]}", f"+ {c} -> {names[int(pred[i])]}"]
            if ims:
                res.image(f"counterfactual_{_safe(c)}.png", image_grid(ims, caps, cols=8, cell=1.5),
                          f"Counterfactual insertion of {c!r}: each pair is a correctly classified image and the same "
                          f"image with a {c!r} example pasted in, with the model's new prediction. Flip rate to "
                          f"{names[target]!r}: {flips[target, c]['flip']:.0%} (random pastes "
                          f"{flips[target, c]['control']:.0%}).")

        res.data["tcav"] = [{"class": names[k], "concept": c, "layer": ln, "scores": [round(v, 4) for v in t["scores"]],
                             "null": [round(v, 4) for v in t["null"]], "p": t["p"], "n": t["n"]}
                            for (k, c, ln), t in tcav.items()]
        res.data["counterfactual"] = [{"class": names[k], "concept": c, **{a: (round(b, 4) if isinstance(b, float) else b)
                                                                         for a, b in f.items()}}
                                      for (k, c), f in flips.items()]
        res.data["settings"] = {"layers": layers, "space": o.space, "alpha_effective": alpha_eff,
                                "random_sets": {n: len(x) for n, x in randoms.items()}, "runs": o.runs,
                                "concepts": {n: len(x) for n, x in concepts.items()}, "base_images": len(base)}
        if random_note:
            res.data["settings"]["note"] = random_note
        if leans:
            parts = [f"{names[k]} <- {c} (TCAV {t['mean']:.2f}, p {_fmt_p(t['p'])}, flip {f['flip']:.0%} vs "
                     f"{f['control']:.0%})" for k, lst in leans.items() for c, ln, t, f in lst]
            res.summary = "; ".join(parts) + f"; {len(classes) - len(leans)} other classes show no dependence"
        else:
            res.summary = (f"no class depends on {', '.join(concepts)} ({len(classes)} classes, "
                           f"{len(layers)} layer(s), {o.runs} TCAV runs)")
        return res

    @staticmethod
    def _tcav_figure(names, classes, concepts, layers, tcav, flips, viz, viz_scores, alpha_eff, leans) -> bytes:
        from audit.imaging import new_figure, to_uint8_hwc

        shown = sorted(classes, key=lambda k: (k not in leans, k))[:12]
        rows = len(shown)
        fig, axes = new_figure(10.0, 1.6 * rows + 0.6)
        fig.clf()
        gs = fig.add_gridspec(rows, 3, width_ratios=[1.35, 3.0, 3.0], wspace=0.5, hspace=0.45)
        bars = [(c, ln) for c in concepts for ln in layers]
        colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
        vcls = torch.as_tensor(viz.classes) if viz is not None else None
        for r, k in enumerate(shown):
            ax_img = fig.add_subplot(gs[r, 0])
            ax_img.axis("off")
            if vcls is not None and (vcls == k).any():
                j = int((vcls == k).nonzero()[0])
                a = to_uint8_hwc(viz.images[j])
                ax_img.imshow(a[:, :, 0] if a.shape[2] == 1 else a, cmap="gray" if a.shape[2] == 1 else None)
            else:
                ax_img.text(0.5, 0.5, "(no class_viz)", ha="center", va="center", fontsize=7, color="grey")
            ax_img.set_title(names[k], fontsize=8, loc="left")
            ax = fig.add_subplot(gs[r, 1])
            for i, (c, ln) in enumerate(bars):
                t = tcav.get((k, c, ln))
                if t is None:
                    continue
                ax.barh(i, t["mean"], xerr=t["std"], color=colors[list(concepts).index(c) % len(colors)],
                        alpha=1.0 if t["p"] < alpha_eff else 0.45, height=0.7)
                null = sum(t["null"]) / len(t["null"])
                ax.plot([null, null], [i - 0.4, i + 0.4], color="grey", lw=2)
                mark = "*" if t["p"] < alpha_eff else "ns"
                ax.text(min(t["mean"] + t["std"] + 0.02, 1.0), i, f"{mark} p={_fmt_p(t['p'])}", va="center", fontsize=6)
            ax.set_xlim(0, 1.25)
            ax.set_yticks(range(len(bars)))
            ax.set_yticklabels([ln if len(concepts) == 1 else f"{c} @ {ln}" for c, ln in bars], fontsize=6)
            if r == 0:
                ax.set_title("TCAV score" + (f" for {next(iter(concepts))!r}" if len(concepts) == 1 else "")
                             + " per layer", fontsize=7)
            ax.axvline(0.5, color="lightgrey", lw=0.5, ls="--")
            ax.tick_params(axis="x", labelsize=6)
            if r == rows - 1:
                ax.set_xlabel("TCAV score", fontsize=7)
            ax_t = fig.add_subplot(gs[r, 2])
            ax_t.axis("off")
            lines = []
            for c, ln, t, f in leans.get(k, []):
                lines.append(f"LEANS ON {c}: TCAV {t['mean']:.2f} (p {_fmt_p(t['p'])})")
                lines.append(f"  pasting {c} flips {f['flip']:.0%} of others (random {f['control']:.0%})")
                vs = viz_scores.get((k, c, ln))
                if vs is not None:
                    lines.append(f"  picture along {c}: cos {vs[0]:.2f}")
                    lines.append(f"  (other pictures {vs[1]:.2f}, {c} examples {vs[2]:.2f})")
            if not lines:
                best = max(concepts, key=lambda c: flips[k, c]["flip"]) if concepts else None
                lines.append("no concept dependence")
                if best is not None:
                    lines.append(f"  flip by {best}: {flips[k, best]['flip']:.0%} (random {flips[k, best]['control']:.0%})")
            ax_t.text(0.02, 0.5, "\n".join(lines), va="center", fontsize=7,
                      color="#b00020" if k in leans else "black", family="monospace")
        return figure_png(fig)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]
