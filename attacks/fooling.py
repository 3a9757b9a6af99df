"""The ``fooling`` check: can images no person would recognize be classified with near
certainty? (Nguyen, Yosinski & Clune 2015, "Deep Neural Networks are Easily Fooled: High
Confidence Predictions for Unrecognizable Images".) Data-free.

For each target class the check synthesizes an image that maximizes the model's confidence
in that class, three ways (the ``methods`` option):

* ``gradient`` -- white-box gradient ascent from uniform noise on the target's log-softmax,
  with L2 decay, optional blur and clamping to the bounds, all targets in one batch
  (:func:`attacks.fooling_search.gradient_ascent`);
* ``evolution_direct`` and ``evolution_cppn`` -- black-box (outputs only) MAP-Elites over a
  direct pixel encoding and over CPPNs, the regular patterned images of the paper
  (:func:`attacks.fooling_search.map_elites`, :mod:`attacks.fooling_cppn`).

Why MAP-Elites over the target classes rather than one population per class: every forward
pass returns the scores of *all* classes, so a child bred for one class is scored for every
class at no extra query; MAP-Elites keeps it wherever it is the best so far (the paper's
observation that an image evolved for one class is often a stepping stone for another). Every
cell still breeds the same number of children per generation, so each class gets its even
share of the budget as with separate populations (with ``early_stop``, the classes already
past 0.9999 stop breeding and leave their share to the rest), and one batched forward pass
serves all classes.

It also measures **garbage-in confidence**: the max-softmax confidence on uniform and Gaussian
noise, constant black/gray/white images, stripes and checkerboards
(:mod:`attacks.fooling_garbage`).

A class counts as *fooled* when its best image reaches ``threshold`` (0.99) confidence for
it. The images are not checked for being unrecognizable: gradient and direct images start
from noise and stay noise-like at this budget, CPPN images are abstract patterns -- the
galleries let a reviewer judge.

Targets: every class when the model has at most ``max_classes`` classes; otherwise a seeded
sample of ``max_classes`` plus any classes named in ``classes`` (always included). Images are
at the model's input size. All randomness comes from the check's seeded generator.

Publishes ``fooling.images``: {method: {class name: (C, H, W) CPU tensor}} of best images.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
import zlib
from dataclasses import dataclass, field

import torch

from audit.distributed import chunks
from audit.errors import ConfigError
from audit.imaging import image_grid
from audit.published import FoolingImages
from audit.registry import Check, register_check
from audit.results import CheckResult

from .fooling_cppn import CPPNEncoding, DirectEncoding
from .fooling_garbage import KINDS, garbage_inputs, garbage_plot
from .fooling_search import LEVELS, SearchResult, gradient_ascent, map_elites

METHODS = ("gradient", "evolution_direct", "evolution_cppn")


def _median(v: list[float]) -> float | None:
    return statistics.median(v) if v else None


def _median_first(v: list[int | None]) -> float | None:
    """Median step/query count over all targets, a target that never got there counting as
    infinite; None when at least half never got there."""
    m = _median([math.inf if x is None else float(x) for x in v])
    return None if m is None or math.isinf(m) else m


def _pct(p: float) -> str:
    """A confidence as a percentage, truncated (never rounded up) to the first digit that
    shows how far from 100% it is: 97.3%, 99.96%, >=99.9999%."""
    for d in (1, 2, 3):
        if p < 1 - 10 ** -(d + 2):
            return f"{math.floor(p * 10 ** (d + 2)) / 10**d:.{d}f}%"
    return f"{math.floor(p * 1e6) / 1e4:.4f}%" if p < 1 - 1e-6 else "≥99.9999%"


@register_check("fooling")
class FoolingCheck(Check):
    publishes = {"fooling.images": FoolingImages}
    description = ("fooling images (Nguyen et al. 2015): gradient ascent and evolution (direct, CPPN) from noise "
                   "to >=99% confidence per class; confidence on noise, blank and pattern inputs")
    needs_data = False
    shardable = True  # work units: gradient ascent per chunk of target classes, each evolution whole
    metrics = {
        "fooling_rate": "share of target classes whose best synthesized image reaches `threshold` (0.99) "
                        "confidence for the class (per `method`)",
        "median_best_confidence": "median over target classes of the best confidence reached (per `method`)",
        "best_confidence": "best confidence reached for the class (per `method` and `class`)",
        "steps": "gradient steps run (`method=gradient`; fewer than the option when early stopping)",
        "queries": "images scored by the model (`method=evolution_direct|evolution_cppn`), the black-box cost",
        "steps_to_confidence": "gradient steps until the class first reached `confidence`; without `class` the "
                               "median over targets (one that never got there counts as infinite; empty when "
                               "half never did)",
        "queries_to_confidence": "images scored until the class's elite first reached `confidence` (evolution); "
                                 "without `class` the median over targets as for steps_to_confidence",
        "garbage_median_confidence": "median max-softmax confidence on garbage inputs of kind `input`",
        "garbage_share_confident": "share of garbage inputs of kind `input` whose max-softmax confidence is at "
                                   "least `confidence` (0.9, 0.99); `input=all` pools the kinds",
    }
    findings = {
        "fooling.most_classes_fooled": "(warn) a method drove more than `most_classes` of the target classes to "
                                       "`threshold` confidence with unrecognizable images",
        "fooling.overconfident_on_garbage": "(warn) a kind of garbage input (noise, blank, stripes, checkerboard) "
                                            "gets >= 0.99 confidence in at least `garbage_share` of its samples",
        "fooling.gradient_unavailable": "(info) no usable input gradient: the gradient method was skipped",
        "fooling.classes_sampled": "(info) the model has more than `max_classes` classes; a seeded sample was targeted",
    }

    @dataclass
    class Options:
        methods: list = field(default_factory=lambda: list(METHODS))  #: which searches run
        classes: list = field(default_factory=list)  #: class names or indices always targeted
        max_classes: int = 100  #: all classes when at most this many, else a seeded sample of this size
        threshold: float = 0.99  #: a class is fooled when its best image reaches this confidence
        most_classes: float = 0.5  #: fooling.most_classes_fooled when a fooling_rate exceeds this
        early_stop: bool = True  #: stop once every target is past 0.9999; evolution stops breeding for those that are
        # gradient ascent
        steps: int = 100  #: maximum gradient steps
        lr: float = 0.05  #: Adam learning rate, in pixel units
        l2_decay: float = 0.002  #: per-step decay toward mid-gray
        blur_every: int = 0  #: blur every this many steps (0: never)
        blur_sigma: float = 0.5  #: Gaussian blur sigma in pixels
        # evolution (MAP-Elites)
        queries_per_class: int = 500  #: evolution budget: images scored per target class, per method
        children: int = 4  #: mutants bred from each target's elite per generation
        mutation_rate: float = 0.1  #: per-gene mutation probability
        cppn_layers: int = 3  #: hidden layers of a CPPN
        cppn_width: int = 8  #: units per hidden layer
        # garbage-in
        garbage: list = field(default_factory=lambda: list(KINDS))  #: garbage input kinds
        garbage_samples: int = 32  #: samples per random kind (constant kinds: 1)
        garbage_share: float = 0.25  #: fooling.overconfident_on_garbage from this share at >= 0.99
        gallery_max: int = 100  #: most classes shown per gallery

        def __post_init__(self) -> None:
            bad = [m for m in self.methods if m not in METHODS]
            if bad:
                raise ConfigError(f"[checks.fooling] methods: unknown {bad} (known: {', '.join(METHODS)})")
            bad = [k for k in self.garbage if k not in KINDS]
            if bad:
                raise ConfigError(f"[checks.fooling] garbage: unknown {bad} (known: {', '.join(KINDS)})")
            for name in ("threshold", "most_classes", "garbage_share", "mutation_rate"):
                v = getattr(self, name)
                if not (0 < v < 1) and not (name in ("most_classes", "garbage_share") and v in (0, 1)):
                    raise ConfigError(f"[checks.fooling] {name} = {v!r}: must be between 0 and 1")
            for name, low in (("max_classes", 0), ("steps", 1), ("queries_per_class", 1), ("children", 1),
                              ("cppn_layers", 1), ("cppn_width", 1), ("garbage_samples", 1), ("blur_every", 0),
                              ("gallery_max", 0)):
                v = getattr(self, name)
                if not isinstance(v, int) or isinstance(v, bool) or v < low:
                    raise ConfigError(f"[checks.fooling] {name} = {v!r}: must be an integer >= {low}")
            for name in ("lr", "blur_sigma"):
                if not getattr(self, name) > 0:
                    raise ConfigError(f"[checks.fooling] {name} = {getattr(self, name)!r}: must be > 0")
            if not 0 <= self.l2_decay < 1:
                raise ConfigError(f"[checks.fooling] l2_decay = {self.l2_decay!r}: must be in [0, 1)")
            if any(isinstance(c, bool) or not isinstance(c, (int, str)) for c in self.classes):
                raise ConfigError("[checks.fooling] classes: give class names or indices")
            if self.max_classes == 0 and not self.classes:
                raise ConfigError("[checks.fooling] max_classes = 0 targets only the named classes: name some in classes")

    # ------------------------------------------------------------------ helpers
    def _targets(self, ctx, gen: torch.Generator) -> tuple[list[int], bool]:
        """(target class indices in ascending order, whether they are a sample)."""
        names = ctx.model.class_names
        k = ctx.model.num_classes
        named: list[int] = []
        for c in self.options.classes:
            if isinstance(c, int) or (isinstance(c, str) and c not in names and c.isdigit()):
                i = int(c)
                if not 0 <= i < k:
                    raise ConfigError(f"[checks.fooling] classes: index {i} out of range for {k} classes")
            elif c in names:
                i = names.index(c)
            else:
                raise ConfigError(f"[checks.fooling] classes: {c!r} is not a class of the model")
            if i not in named:
                named.append(i)
        if k <= self.options.max_classes:
            return list(range(k)), False
        rest = [i for i in torch.randperm(k, generator=gen).tolist() if i not in named]
        return sorted(named + rest[:max(0, self.options.max_classes - len(named))]), True

    @staticmethod
    def _gen(base: int, part: str, device: torch.device) -> torch.Generator:
        """A generator for one part of the check, derived from the check's generator, so a
        method's numbers do not depend on which other methods run."""
        return torch.Generator(device=device).manual_seed((base * 1_000_003 + zlib.crc32(part.encode())) % (2**63 - 1))

    # ------------------------------------------------------------------ run
    def run(self, ctx) -> CheckResult:
        o = self.options
        res = CheckResult(self.name)
        model, dev = ctx.model, ctx.model.device
        names = model.class_names
        shape = tuple(model.spec.input_shape)
        bs = max(1, int(ctx.config.batch_size))
        gen = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(ctx.seed)
        base = int(torch.randint(0, 2**62, (1,), generator=gen))
        targets, sampled = self._targets(ctx, self._gen(base, "targets", torch.device("cpu")))
        levels = tuple(sorted({o.threshold, *LEVELS}))
        timings: dict[str, float] = {}
        summary: dict[str, SearchResult] = {}
        res.data["targets"] = [names[t] for t in targets]
        if sampled:
            res.finding("info", "fooling.classes_sampled",
                        f"The model has {model.num_classes} classes; {len(targets)} were targeted (a seeded sample "
                        f"plus {len(o.classes)} named). Raise max_classes to target more.")
        published: dict[str, dict[str, torch.Tensor]] = {}

        # work units: gradient ascent per chunk of batch_size target classes (independent per
        # class); each evolution whole (its MAP-Elites archive spans the classes)
        units = [(m, part) for m in o.methods
                 for part in (chunks(len(targets), bs) if m == "gradient" else [torch.arange(len(targets))])]

        def one_unit(k: int, _unit_gen) -> dict:
            """One unit; its generator derives from the method's name (and the chunk)."""
            method, part = units[k]
            t0 = time.perf_counter()
            if method == "gradient":
                g = self._gen(base, f"gradient:{int(part[0]) if len(part) else 0}", torch.device("cpu"))
                try:
                    r = gradient_ascent(model, [targets[i] for i in part.tolist()], shape, steps=o.steps, lr=o.lr,
                                        l2_decay=o.l2_decay, blur_every=o.blur_every, blur_sigma=o.blur_sigma,
                                        bounds=model.spec.bounds, batch_size=bs, gen=g, device=dev,
                                        early_stop=o.early_stop, levels=levels, progress=ctx.bar)
                except RuntimeError as e:
                    return {"unavailable": str(e).splitlines()[0][:200]}
            else:
                g = self._gen(base, method, dev)
                enc_cls = CPPNEncoding if method == "evolution_cppn" else DirectEncoding
                kw = {"layers": o.cppn_layers, "width": o.cppn_width} if method == "evolution_cppn" else {}
                enc = enc_cls(shape, rate=o.mutation_rate, device=dev, **kw)
                r = map_elites(_Bounded(model), enc, targets, queries=o.queries_per_class * len(targets),
                               children=o.children, gen=g, device=dev, batch_size=bs, early_stop=o.early_stop,
                               levels=levels, progress=ctx.bar)
                r.images = _to_bounds(r.images, model.spec.bounds)
            r.images = r.images.cpu()
            return {"result": dataclasses.asdict(r), "seconds": round(time.perf_counter() - t0, 3)}

        recs = ctx.map_units(len(units), one_unit, tag="searches", unit="search", keep=lambda r: "unavailable" not in r)
        for method in o.methods:
            mine = [rec for (m, _), rec in zip(units, recs) if m == method]
            bad = [rec["unavailable"] for rec in mine if "unavailable" in rec]
            if bad:
                res.finding("info", "fooling.gradient_unavailable",
                            f"Gradient ascent could not run ({bad[0]}); only the black-box "
                            "evolution results apply.")
                continue
            r = SearchResult.concat([SearchResult(**rec["result"]) for rec in mine])
            timings[method] = round(sum(rec["seconds"] for rec in mine), 3)
            summary[method] = r
            self._report_method(res, method, r, names, levels)
            published[method] = {names[t]: r.images[i] for i, t in enumerate(targets)}
        ctx.publish("fooling.images", FoolingImages(published))
        self._garbage(ctx, res, self._gen(base, "garbage", torch.device("cpu")), bs)
        res.data["timings_s"] = timings
        self._findings(res, summary, len(targets))
        parts = [f"{m} {sum(c >= o.threshold for c in r.best)}/{len(targets)} fooled" for m, r in summary.items()]
        g = res.data.get("garbage", {}).get("all")
        if g:
            parts.append(f"garbage >=0.99: {g['share_99']:.0%}")
        res.summary = "; ".join(parts)
        return res

    def _report_method(self, res: CheckResult, method: str, r: SearchResult, names: list[str], levels) -> None:
        o = self.options
        n = len(r.targets)
        fooled = [c >= o.threshold for c in r.best]
        res.metric("fooling_rate", sum(fooled) / n, method=method)
        res.metric("median_best_confidence", _median(r.best), method=method)
        cost = "steps" if method == "gradient" else "queries"
        res.metric(cost, r.used, method=method)
        for lv in levels:
            res.metric(f"{cost}_to_confidence", _median_first(r.first[lv]), method=method, confidence=lv)
        for i, t in enumerate(r.targets):
            res.metric("best_confidence", r.best[i], method=method, **{"class": names[t]})
            res.metric(f"{cost}_to_confidence", r.first[o.threshold][i], method=method, confidence=o.threshold,
                       **{"class": names[t]})
        res.data.setdefault("per_class", {})[method] = {
            names[t]: {"best_confidence": r.best[i], "predicted": names[r.pred[i]], "predicted_confidence": r.pred_conf[i],
                       f"{cost}_to": {str(lv): r.first[lv][i] for lv in levels}} for i, t in enumerate(r.targets)}
        shown = list(range(n))[: o.gallery_max]
        if shown:
            caps = [f"target {names[r.targets[i]]}\n→ {names[r.pred[i]]} {_pct(r.pred_conf[i])}" for i in shown]
            label = {"gradient": f"gradient ascent, {r.used} steps",
                     "evolution_direct": f"evolution, direct pixel encoding, {r.used} queries",
                     "evolution_cppn": f"evolution, CPPN encoding, {r.used} queries"}[method]
            cols = min(10, max(3, math.ceil(math.sqrt(1.5 * len(shown)))))
            png = image_grid([r.images[i] for i in shown], caps, cols=cols,
                             title=f"Fooling images ({label}): {sum(fooled)}/{n} classes at ≥ {o.threshold:g}")
            res.image(f"gallery_{method}.png", png,
                      f"{method}: one synthesized image per target class, captioned with the predicted class and its "
                      f"confidence; {sum(fooled)}/{n} targets reach {o.threshold:g}")

    def _garbage(self, ctx, res: CheckResult, gen: torch.Generator, bs: int) -> None:
        o = self.options
        if not o.garbage:
            return
        model, names = ctx.model, ctx.model.class_names
        rows, examples, caps = [], [], []
        table = {}
        for kind in o.garbage:
            x = garbage_inputs(kind, o.garbage_samples, tuple(model.spec.input_shape), gen, model.spec.bounds)
            p = model.logits(x, batch_size=bs).float().softmax(1)
            conf, pred = p.max(1)
            top = int(pred.mode().values) if len(pred) else 0
            sure = pred[conf >= 0.99]
            row = {"kind": kind, "conf": conf.tolist(), "share_90": float((conf >= 0.9).float().mean()),
                   "share_99": float((conf >= 0.99).float().mean()), "top_class": names[top],
                   "top_share": float((pred == top).float().mean()),
                   "top_class_99": names[int(sure.mode().values)] if len(sure) else None}
            rows.append(row)
            table[kind] = {k: v for k, v in row.items() if k != "conf"} | {"n": len(conf), "median": _median(row["conf"])}
            res.metric("garbage_median_confidence", table[kind]["median"], input=kind)
            for lv, key in ((0.9, "share_90"), (0.99, "share_99")):
                res.metric("garbage_share_confident", row[key], input=kind, confidence=lv)
            i = int(conf.argmax())
            examples.append(x[i])
            caps.append(f"{kind}\n→ {names[int(pred[i])]} {_pct(float(conf[i]))}")
        # pooled over kinds, each kind weighted equally (a constant image counts as much as 32 noise images)
        for lv, key in ((0.9, "share_90"), (0.99, "share_99")):
            v = sum(r[key] for r in rows) / len(rows)
            res.metric("garbage_share_confident", v, input="all", confidence=lv)
            table.setdefault("all", {})[key] = v
        res.data["garbage"] = table
        res.image("garbage_confidence.png", garbage_plot(rows),
                  "Garbage-in confidence: max-softmax confidence per input kind (box, dots), the share at >= 0.9 and "
                  ">= 0.99 and the class each kind is most often given")
        res.image("garbage_examples.png", image_grid(examples, caps, cols=min(4, len(examples))),
                  "The most confidently classified garbage input of each kind, with its predicted class")
        over = [r for r in rows if r["share_99"] >= o.garbage_share and r["share_99"] > 0]
        if over:
            what = ", ".join(f"{r['kind']} {r['share_99']:.0%} (most often as {r['top_class_99']})" for r in over)
            res.finding("warn", "fooling.overconfident_on_garbage",
                        f"Inputs with no object get >= 99% confidence: {what} of the samples; the model's confidence "
                        "does not signal that an input is meaningless.", kinds=[r["kind"] for r in over])

    def _findings(self, res: CheckResult, summary: dict[str, SearchResult], n: int) -> None:
        o = self.options
        rates = {m: sum(c >= o.threshold for c in r.best) / n for m, r in summary.items()}
        if not rates or max(rates.values()) <= o.most_classes:
            return
        unit = {"gradient": "steps"}
        parts = [f"{m} {round(rates[m] * n)}/{n} (median best {_pct(_median(r.best) or 0)}, "
                 f"{r.used} {unit.get(m, 'queries')})" for m, r in summary.items()]
        res.finding("warn", "fooling.most_classes_fooled",
                    f"Unrecognizable synthesized images get >= {o.threshold:.0%} confidence for most target classes: "
                    f"{'; '.join(parts)}. The model's confidence is no evidence that an object is present.",
                    fooling_rate={m: round(v, 4) for m, v in rates.items()})


class _Bounded:
    """The model seen by the evolution: genomes render in [0, 1]; map them to the bounds."""

    def __init__(self, model) -> None:
        self.model = model
        self.lo, self.hi = model.spec.bounds

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_to_bounds(x, (self.lo, self.hi)))


def _to_bounds(x: torch.Tensor, bounds) -> torch.Tensor:
    lo, hi = bounds
    return x if (lo, hi) == (0.0, 1.0) else lo + (hi - lo) * x
