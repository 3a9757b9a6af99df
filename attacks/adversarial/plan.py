"""What the ``adversarial`` check attacks, decided once per run before any work unit: the
evaluated samples, their labels or targets, the ε grids, the attacks that can run, and the
ε = 0 / repeated-forward sanity test (Carlini et al. 2019 §5; Athalye et al. 2018 for
randomness). The same on every process (deterministic, from the run's seed)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from audit.data import stratified_indices
from audit.gradients import gradients_computable
from audit.errors import ConfigError

from .attacks import ATTACKS
from .objective import EOT, correct_on_draws, decide_eot
from .options import AdversarialOptions
from .threat import epsilon_grid

if TYPE_CHECKING:  # pragma: no cover
    from audit.context import Context

__all__ = ["Plan", "Sanity", "prepare", "target_labels"]

@dataclass(frozen=True)
class Plan:
    """The evaluated samples (CPU): ``x`` (n, C, H, W) float in [0, 1], ``y`` (n,) int64 labels,
    ``lab`` (n,) int64 the labels (untargeted) or targets, ``correct`` (n,) bool clean
    prediction right, ``attacked`` (n,) bool the samples attacked (correct; targeted: and
    label ≠ target), ``clean_probs`` (n, K) float32, ``ids`` their n sample ids. ``eps``: norm
    -> sorted ε grid (options' norm order); ``attacks``: the attacks to run (registry order);
    ``skipped``: gradient attacks left out because ``gradient_problem`` (why input gradients
    cannot be used, or None). ``eot``: the EOT setting (:class:`.objective.EOT`; when enabled,
    ``correct`` and ``attacked`` hold only samples correct on every draw). ``probe`` (n,) bool:
    the attacked samples the diagnostics run on (:mod:`.diagnostics`; None: none)."""

    x: torch.Tensor
    y: torch.Tensor
    lab: torch.Tensor
    correct: torch.Tensor
    attacked: torch.Tensor
    clean_probs: torch.Tensor
    ids: list[str]
    targeted: bool
    eps: dict[str, list[float]]
    attacks: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    gradient_problem: str | None = None
    eot: EOT = EOT()
    probe: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def grad_ok(self) -> bool:
        """Whether input gradients can be computed (the gradient attacks run; the clean
        gradients are measured for ``gradient_masking.zero_gradients``)."""
        return gradients_computable(self.gradient_problem)

    def take(self, rows: torch.Tensor) -> "Plan":
        """The plan restricted to the samples ``rows`` (a work unit)."""
        r = rows.tolist()
        return replace(self, x=self.x[rows], y=self.y[rows], lab=self.lab[rows], correct=self.correct[rows],
                       attacked=self.attacked[rows], clean_probs=self.clean_probs[rows], ids=[self.ids[i] for i in r],
                       probe=None if self.probe is None else self.probe[rows])


@dataclass(frozen=True)
class Sanity:
    """The sanity test: ``acc`` the clean accuracy on the evaluated samples, ``acc0`` that of a
    fresh forward pass (robust accuracy at ε = 0), ``logit_change`` the largest logit change
    between the two passes relative to the logit scale, ``flips`` predictions that changed,
    ``probability_outputs`` whether the model outputs probabilities."""

    acc: float
    acc0: float
    logit_change: float
    flips: int
    probability_outputs: bool

    @property
    def stochastic(self) -> bool:
        return self.logit_change > 1e-3 or self.flips > 0


def target_labels(targeted: str, y: torch.Tensor, clean_logits: torch.Tensor,
                  class_names: list[str]) -> tuple[torch.Tensor, bool]:
    """(labels or targets (n,) int64, whether targeted) for the ``targeted`` option; raises
    ConfigError for a class the model does not have."""
    if not targeted:
        return y.clone(), False
    if targeted == "least_likely":
        return clean_logits.argmin(1), True
    if targeted in class_names:
        return torch.full_like(y, class_names.index(targeted)), True
    if targeted.isdigit() and int(targeted) < len(class_names):
        return torch.full_like(y, int(targeted)), True
    raise ConfigError(f"[checks.adversarial] targeted = {targeted!r} is not '', 'least_likely' or a class of the model "
                      f"({', '.join(class_names[:10])}{' ...' if len(class_names) > 10 else ''})")


def prepare(o: AdversarialOptions, ctx: "Context") -> tuple[Plan, Sanity]:
    """The plan and the sanity test, in this order: ε grids (ConfigError beyond the input
    range), the stratified subset of ``max_samples``, labels/targets, a fresh forward pass of
    the subset, then the input-gradient verdict ``ctx.gradient_problem``."""
    data, model = ctx.data, ctx.model
    shape = tuple(data.input_shape)
    eps = {norm: epsilon_grid(norm, o.epsilons.get(norm), shape) for norm in o.norms}
    idx = torch.arange(len(data))
    cap = o.resolved.max_samples
    if cap and len(data) > cap:
        idx = stratified_indices(data.y, cap, ctx.seed)
    x, y = data.x[idx], data.y[idx]
    clean_logits = ctx.logits[idx]
    correct = clean_logits.argmax(1) == y
    lab, targeted = target_labels(o.targeted, y, clean_logits, model.class_names)
    plan = Plan(x=x, y=y, lab=lab, correct=correct, attacked=correct & (lab != y) if targeted else correct.clone(),
                clean_probs=clean_logits.softmax(1), ids=[data.ids[i] for i in idx.tolist()], targeted=targeted, eps=eps)
    sanity = _sanity(model, x, y, correct, clean_logits, ctx.config.batch_size)
    stochastic = sanity.stochastic or getattr(model, "stochastic", False)  # the load-time probe's flag too
    eot = decide_eot(o.eot_samples, stochastic, f"largest logit change {sanity.logit_change:.2g} of the "
                                                f"logit scale, {sanity.flips} predictions changed")
    plan = replace(plan, eot=eot)
    if eot.enabled:  # ε = 0 under EOT: correct on every draw
        ok = correct_on_draws(model, x, y, eot.samples, batch_size=ctx.config.batch_size)
        plan = replace(plan, correct=plan.correct & ok, attacked=plan.attacked & ok)
        sanity = replace(sanity, acc0=float(plan.correct.float().mean()))
    plan = replace(plan, probe=_probe_samples(plan.attacked, o.probe_samples, ctx.seed))
    problem = ctx.gradient_problem
    attacks = tuple(a for a in ATTACKS if a in o.resolved.attacks)
    skipped = () if gradients_computable(problem) else tuple(a for a in attacks if ATTACKS[a].uses_gradients)
    return replace(plan, attacks=tuple(a for a in attacks if a not in skipped), skipped=skipped,
                   gradient_problem=problem), sanity


def _probe_samples(attacked: torch.Tensor, count: int, seed: int) -> torch.Tensor | None:
    """(n,) bool: ``count`` of the ``attacked`` samples drawn with the run's seed (all when
    fewer), or None for ``count`` = 0."""
    if count <= 0:
        return None
    idx = attacked.nonzero().flatten()
    pick = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed + 7919))[:count]]
    out = torch.zeros_like(attacked)
    out[pick] = True
    return out


def _sanity(model, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, clean_logits: torch.Tensor,
            batch_size: int) -> Sanity:
    again = model.logits(x, batch_size=batch_size)
    scale = 1 + clean_logits.abs().max()
    return Sanity(acc=float(correct.float().mean()), acc0=float((again.argmax(1) == y).float().mean()),
                  logit_change=float((again - clean_logits).abs().max() / scale),
                  flips=int((again.argmax(1) != clean_logits.argmax(1)).sum()),
                  probability_outputs=model.output_kind == "probabilities")
