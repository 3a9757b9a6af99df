"""The ``fooling`` check: can images no person would recognize be classified with near
certainty? (Nguyen, Yosinski & Clune 2015, "Deep Neural Networks are Easily Fooled: High
Confidence Predictions for Unrecognizable Images".) Data-free.

For each target class the check synthesizes an image that maximizes the model's confidence
in that class with each of the ``methods`` (:mod:`attacks.fooling.methods`: white-box
gradient ascent, black-box MAP-Elites over a direct pixel encoding and over CPPNs).

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
(:mod:`attacks.fooling.garbage`).

A class counts as *fooled* when its best image reaches ``threshold`` (0.99) confidence for
it. Whether the images are unrecognizable is measured, not asserted: with data, each fooling
image's distance to the nearest real image of its target class is compared with how close
real images of the class are to each other (:func:`.report.report_distances`); the finding
says "unrecognizable" only when the images lie beyond that, "synthesized images" otherwise (a
robust model's gradient ascent draws recognizable class images, Santurkar et al. 2019). The
chance level 1/K is stated beside the threshold. The galleries let a reviewer judge.

Targets: every class when the model has at most ``max_classes`` classes; otherwise the
classes named in ``classes`` (always included) plus, up to ``max_classes`` in all, the
classes the data brings up (its labels, then the model's top-1 predictions on it, most
frequent first: :func:`audit.targets.data_classes`), or without data a seeded sample. Every
part of the check (searches, confidences, reports) costs in proportion to the targets, not
to the model's output count (:func:`.search.log_odds`). Images are
at the model's input size, in its bounds.

Work units: tag ``searches``, one per part of each method in ``methods`` order (gradient
ascent per chunk of ``batch_size`` target classes, each evolution whole); tag ``garbage``,
one. Every random number derives from the check's generator: a seed base drawn from it,
then one generator per part (:func:`audit.seeding.derive_seed` of the base and the part's
name), so a method's numbers do not depend on which other methods run.

Gradient ascent tells for itself whether the input gradient is usable (a missing or zero
gradient of its targets' log-softmax at the first step: ``fooling.gradient_unavailable``)
rather than reading ``ctx.gradient_problem``: that probe differentiates one class's logit,
which can be constant in a model whose log-softmax still has a gradient.

Publishes ``fooling.images`` (:class:`audit.published.FoolingImages`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Literal

import torch

from audit.errors import ConfigError, first_line
from audit.fastpath import FastPath, FastSettings, fast_metadata
from audit.options import opt
from audit.published import FoolingImages
from audit.records import record
from audit.registry import Check, Unit, register_check
from audit.results import CheckResult
from audit.targets import data_classes

from .garbage import KINDS, measure_garbage
from .methods import SearchSetup, get_method, part_generator, registered_methods
from .report import report_distances, report_garbage, report_method, report_most_fooled, summary_line
from .search import LEVELS, SearchResult

#: the registered method names (the values the ``methods`` option accepts)
METHODS = tuple(registered_methods())
MethodName = Literal[METHODS]  # type: ignore[valid-type]
GarbageName = Literal[KINDS]  # type: ignore[valid-type]


@record
class SearchRecord:
    """One search unit: ``method``'s :class:`SearchResult` for a part of the targets, or the
    first line of why gradient ascent could not run (``unavailable``); ``seconds`` of compute."""

    method: str
    result: SearchResult | None
    unavailable: str = ""
    seconds: float = 0.0


@record
class GarbageRecord:
    """The garbage unit: the model's answers per garbage kind, and ``seconds`` of compute."""

    kinds: list  #: GarbageKind per kind, in the order of the `garbage` option
    seconds: float = 0.0


@dataclass(frozen=True)
class _Plan:
    """What ``units`` and ``summarize`` share: the seed base and the targets (ascending class
    indices), and how they were chosen."""

    base: int
    targets: list[int]
    sampled: str  #: "" all classes; "data" the data's classes (audit/targets.py); "sample" a seeded sample


@register_check("fooling")
class FoolingCheck(Check):
    publishes = {"fooling.images": FoolingImages}
    description = ("fooling images (Nguyen et al. 2015): gradient ascent and evolution (direct, CPPN) from noise "
                   "to >=99% confidence per class; confidence on noise, blank and pattern inputs")
    needs_data = False
    progress_unit = "search"
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
        "fooling_nearest_real_distance": "RMS pixel distance ([0, 1] pixels) from the class's best fooling image "
                                         "to the nearest real image of the class (per `method`, `class`; with data)",
        "real_nearest_distance": "median over a class's real images of the RMS distance to their nearest other real "
                                 "image of the class (per `class`): the yardstick of the distance above",
        "garbage_median_confidence": "median max-softmax confidence on garbage inputs of kind `input`",
        "garbage_share_confident": "share of garbage inputs of kind `input` whose max-softmax confidence is at "
                                   "least `confidence` (0.9, 0.99); `input=all` pools the kinds",
    }
    findings = {
        "fooling.most_classes_fooled": "(warn) a method drove more than `most_classes` of the target classes to "
                                       "`threshold` confidence; called unrecognizable only when the images lie "
                                       "farther from every real image of their class than real images do",
        "fooling.overconfident_on_garbage": "(warn) a kind of garbage input (noise, blank, stripes, checkerboard) "
                                            "gets >= 0.99 confidence in at least `garbage_share` of its samples",
        "fooling.gradient_unavailable": "(info) no usable input gradient: the gradient method was skipped",
        "fooling.classes_sampled": "(info) the model has more than `max_classes` classes; the data's classes (labels, "
                                   "top-1 predictions) or, without data, a seeded sample were targeted",
    }

    @dataclass
    class Options:
        methods: list[MethodName] = opt(lambda: list(METHODS), doc="which searches run (attacks/fooling/methods.py)")
        classes: list[int | str] = opt(list, min=0, doc="class names or indices always targeted")
        max_classes: int = opt(100, min=0, doc="all classes when at most this many, else at most this many of the "
                                               "data's classes (labels, top-1 predictions), without data a seeded "
                                               "sample of this size")
        threshold: float = opt(0.99, min=0, max=1, doc="a class is fooled when its best image reaches this "
                                                       "confidence (strictly between 0 and 1)")
        most_classes: float = opt(0.5, min=0, max=1, doc="fooling.most_classes_fooled when a fooling_rate exceeds this")
        early_stop: bool = opt(True, doc="stop once every target is past 0.9999; evolution stops breeding for those "
                                         "that are")
        # gradient ascent
        steps: int = opt(100, min=1, doc="maximum gradient steps")
        lr: float = opt(0.05, min=0, doc="Adam learning rate, in pixel units (> 0)")
        l2_decay: float = opt(0.002, min=0, max=1, doc="per-step decay toward mid-gray, in [0, 1)")
        blur_every: int = opt(0, min=0, doc="blur every this many steps (0: never)")
        blur_sigma: float = opt(0.5, min=0, doc="Gaussian blur sigma in pixels (> 0)")
        # evolution (MAP-Elites)
        queries_per_class: int = opt(500, min=1, doc="evolution budget: images scored per target class, per method")
        children: int = opt(4, min=1, doc="mutants bred from each target's elite per generation")
        mutation_rate: float = opt(0.1, min=0, max=1, doc="per-gene mutation probability (strictly between 0 and 1)")
        cppn_layers: int = opt(3, min=1, doc="hidden layers of a CPPN")
        cppn_width: int = opt(8, min=1, doc="units per hidden layer of a CPPN")
        # garbage-in
        garbage: list[GarbageName] = opt(lambda: list(KINDS), doc="garbage input kinds ([] skips the garbage part)")
        garbage_samples: int = opt(32, min=1, doc="samples per random garbage kind (constant kinds: 1)")
        garbage_share: float = opt(0.25, min=0, max=1, doc="fooling.overconfident_on_garbage from this share at "
                                                           ">= 0.99")
        gallery_max: int = opt(100, min=0, doc="most classes shown per gallery")

        def __post_init__(self) -> None:
            for name in ("threshold", "mutation_rate"):  # open intervals: opt() bounds are inclusive
                if not 0 < getattr(self, name) < 1:
                    raise ConfigError(f"[checks.fooling] {name} = {getattr(self, name)!r}: must be between 0 and 1")
            for name in ("lr", "blur_sigma"):
                if not getattr(self, name) > 0:
                    raise ConfigError(f"[checks.fooling] {name} = {getattr(self, name)!r}: must be > 0")
            if not 0 <= self.l2_decay < 1:
                raise ConfigError(f"[checks.fooling] l2_decay = {self.l2_decay!r}: must be in [0, 1)")
            if self.max_classes == 0 and not self.classes:
                raise ConfigError("[checks.fooling] max_classes = 0 targets only the named classes: name some in classes")

    _plan_cache: _Plan | None = None

    # ------------------------------------------------------------------ plan
    def _plan(self, ctx) -> _Plan:
        """The seed base (the first draw from the check's generator) and the targets;
        computed once and shared by ``units`` and ``summarize``."""
        if self._plan_cache is None:
            base = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
            self._plan_cache = _Plan(base, *self._targets(ctx, part_generator(base, "targets")))
        return self._plan_cache

    def _targets(self, ctx, gen: torch.Generator) -> tuple[list[int], str]:
        """(target class indices in ascending order, how they were chosen when not all:
        "data" or "sample"); a class named in ``classes`` that the model lacks is a
        ConfigError."""
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
            return list(range(k)), ""
        data = ctx.data
        seen = data_classes(getattr(data, "y", None), ctx.logits)
        pool = seen if seen else torch.randperm(k, generator=gen).tolist()
        rest = [i for i in pool if i not in named]
        return sorted(named + rest[:max(0, self.options.max_classes - len(named))]), "data" if seen else "sample"

    # ------------------------------------------------------------------ contract
    def units(self, ctx) -> list[Unit]:
        """``searches:k`` for every part of every method, numbered across the methods in
        ``methods`` order, then ``garbage:0``."""
        o, plan = self.options, self._plan(ctx)
        bs = max(1, int(ctx.config.batch_size))
        parts = [(name, part) for name in o.methods for part in get_method(name).parts(len(plan.targets), bs)]
        out = [Unit("searches", k, {"method": name, "part": part, "targets": plan.targets, "base": plan.base})
               for k, (name, part) in enumerate(parts)]
        if o.garbage:
            out.append(Unit("garbage", 0, {"base": plan.base}))
        return out

    def compute(self, unit: Unit, ctx, generator: torch.Generator) -> SearchRecord | GarbageRecord:
        """One search part or the garbage measurement; the unit's own generator is unused
        (each part derives its generator from the seed base and its name)."""
        o, p, model = self.options, unit.payload, ctx.model
        bs = max(1, int(ctx.config.batch_size))
        t0 = time.perf_counter()
        if unit.tag == "garbage":
            gen = part_generator(p["base"], "garbage")
            kinds = measure_garbage(model, list(o.garbage), o.garbage_samples, gen, batch_size=bs)
            return GarbageRecord(kinds, round(time.perf_counter() - t0, 3))
        method = get_method(p["method"])
        path = FastPath(model, FastSettings.of(ctx.config)) if method.needs_gradient else None
        lo, hi = model.spec.bounds
        probe = lo + (hi - lo) * torch.rand(4, *model.spec.input_shape, generator=torch.Generator().manual_seed(0))
        probe = probe.to(model.device)
        try:
            with path.layout(probe) if path is not None else contextlib.nullcontext():
                if path is not None:  # at most what fits the free memory (no numbers change: rows are independent)
                    bs = path.batch_size(probe, bs, role="fooling")
                setup = SearchSetup(model, list(p["targets"]), tuple(model.spec.input_shape), bs, self._levels(),
                                    p["base"], ctx.bar, path)
                r = method.search(setup, list(p["part"]), o)
        except RuntimeError as e:
            if not method.needs_gradient:
                raise
            return SearchRecord(method.name, None, first_line(e, 200))
        r.images = r.images.cpu()
        return SearchRecord(method.name, r, "", round(time.perf_counter() - t0, 3))

    def summarize(self, records: list, ctx) -> CheckResult:
        o, plan = self.options, self._plan(ctx)
        res = CheckResult(self.name)
        names = ctx.model.class_names
        targets = plan.targets
        res.data["targets"] = [names[t] for t in targets]
        if plan.sampled:
            res.finding("info", "fooling.classes_sampled",
                        f"The model has {ctx.model.num_classes} classes; {len(targets)} were targeted ("
                        + ("the data's labels and the model's top-1 predictions on it" if plan.sampled == "data"
                           else "a seeded sample") + f" plus {len(o.classes)} named). Name classes in classes or raise "
                        "max_classes to target more.")
        searches = [r for r in records if isinstance(r, SearchRecord)]
        timings: dict[str, float] = {}
        summary: dict = {}
        published: dict[str, dict[str, torch.Tensor]] = {}
        for name in o.methods:
            method = get_method(name)
            mine = [r for r in searches if r.method == name]
            bad = [r.unavailable for r in mine if r.unavailable]
            if bad:
                res.finding("info", "fooling.gradient_unavailable",
                            f"{method.title[:1].upper()}{method.title[1:]} could not run ({bad[0]}); only the "
                            "black-box evolution results apply.")
                continue
            r = SearchResult.concat([rec.result for rec in mine])
            timings[name] = round(sum(rec.seconds for rec in mine), 3)
            summary[method] = r
            report_method(res, method, r, names, self._levels(), o)
            published[name] = {names[t]: r.images[i] for i, t in enumerate(targets)}
        ctx.publish("fooling.images", FoolingImages(published))
        garbage = next((r for r in records if isinstance(r, GarbageRecord)), None)
        if garbage is not None:
            report_garbage(res, garbage.kinds, names, o.garbage_share)
            timings["garbage"] = garbage.seconds
        res.data["timings"] = timings
        if any(get_method(n).needs_gradient for n in o.methods):
            res.data["fast_path"] = fast_metadata(ctx.model, FastSettings.of(ctx.config))
        data = ctx.data
        far = report_distances(res, summary, names, getattr(data, "x", None), getattr(data, "y", None))
        report_most_fooled(res, summary, len(targets), o.threshold, o.most_classes, far, ctx.model.num_classes)
        res.summary = summary_line(summary, len(targets), o.threshold, res.data.get("garbage", {}).get("all"))
        return res

    def _levels(self) -> tuple[float, ...]:
        """The confidences whose first step/query is recorded: ``threshold`` and :data:`LEVELS`."""
        return tuple(sorted({self.options.threshold, *LEVELS}))
