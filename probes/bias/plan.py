"""What the ``bias`` check tests in a run: the concept sets, the classes and layers, and every
random choice of the run (random counter-example sets, the images per class, the base images
and which exemplar is pasted onto each), drawn from the check's generator once, on every
process, in a fixed order. The work units then draw nothing, so they compute the same
numbers wherever they run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.targets import data_classes, select_classes

from .concepts import load_concepts, random_from_data
from .insertion import paste_at, pick_exemplars, usable_exemplars
from .layers import probe_layers

__all__ = ["BiasPlan", "make_plan"]


@dataclass
class BiasPlan:
    """``skip``: why nothing is tested (no concept given), else empty. ``concepts`` and
    ``randoms``: name -> images (N, C, H, W) in [0, 1]; ``pool`` all random images pooled.
    ``layers``: the TCAV layers (empty when they cannot be hooked); ``draws``: one random
    permutation of the pool per TCAV run; ``splits``: per run a random permutation of
    ``range(max(pool, largest concept))``, which rows each side of a CAV holds out
    (:func:`probes.bias.tcav.holdout_split`); ``class_idx``: per tested class the data indices of
    its TCAV images. ``base_idx``: the correctly classified data images pasted onto;
    ``usable``/``picks``: per concept (``""``: the control, the pool) the usable exemplars and
    which one goes onto each base image."""

    skip: str = ""
    concepts: dict[str, torch.Tensor] = field(default_factory=dict)
    randoms: dict[str, torch.Tensor] = field(default_factory=dict)
    random_note: str = ""
    classes_note: str = ""  #: how the classes were chosen when not all (audit.targets.select_classes)
    pool: torch.Tensor | None = None
    classes: list[int] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    draws: list[torch.Tensor] = field(default_factory=list)
    splits: list[torch.Tensor] = field(default_factory=list)
    class_idx: dict[int, torch.Tensor] = field(default_factory=dict)
    base_idx: torch.Tensor | None = None
    usable: dict[str, torch.Tensor] = field(default_factory=dict)
    picks: dict[str, torch.Tensor] = field(default_factory=dict)

    def pasted(self, base: torch.Tensor, name: str) -> torch.Tensor:
        """``base`` with concept ``name``'s picked exemplars pasted in (``""``: the control)."""
        return paste_at(base, self.usable[name][self.picks[name]])[0]


def make_plan(ctx, o) -> BiasPlan:
    """The plan for options ``o``; ValueError for a concepts path that is not a folder or an
    unknown class, KeyError for an unknown layer."""
    model, data, g = ctx.model, ctx.data, ctx.generator
    if not o.concepts:
        return BiasPlan(skip="No concept examples were given ([checks.bias] concepts = DIR, one folder of images "
                             "per concept), so no concept dependence was tested.")
    concepts, randoms = load_concepts(o.concepts, model.spec.input_shape)
    if not concepts:
        return BiasPlan(skip=f"{o.concepts} holds no concept folder besides random sets.")
    note = ""
    if len(randoms) == 0:
        randoms, note = random_from_data(data.x, o.random_pool, g)
    many = len(model.class_names) > o.max_classes
    classes, classes_note = select_classes(model.class_names, list(o.classes), o.max_classes,
                                           data_classes(data.y, ctx.logits) if many else None, "[checks.bias]")
    plan = BiasPlan(concepts=concepts, randoms=randoms, random_note=note, pool=torch.cat(list(randoms.values())),
                    classes=classes, classes_note=classes_note)
    layers, fired = probe_layers(model, list(o.layers), o.n_layers, data.x[:1])
    if fired:
        plan.layers = layers
        plan.draws = [torch.randperm(len(plan.pool), generator=g) for _ in range(o.runs)]
        for k in plan.classes:
            idx = (data.y == k).nonzero().flatten()
            plan.class_idx[k] = idx[torch.randperm(len(idx), generator=g)[:o.max_per_class]]
    correct = (ctx.preds == data.y).nonzero().flatten()
    plan.base_idx = correct[torch.randperm(len(correct), generator=g)[:o.max_base]]
    for name, x in [("", plan.pool), *concepts.items()]:
        plan.usable[name] = usable_exemplars(x)
        plan.picks[name] = pick_exemplars(plan.usable[name], len(plan.base_idx), g)
    if fired:  # drawn last, so the draws above are those of runs before CAVs were held out
        span = max(len(plan.pool), *(len(x) for x in concepts.values()))
        plan.splits = [torch.randperm(span, generator=g) for _ in range(o.runs)]
    return plan
