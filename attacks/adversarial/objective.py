"""The one quantity every attack of the ``adversarial`` check minimises: the logit margin, and
Expectation over Transformation (EOT) for randomized models.

For an untargeted attack the margin of a sample is ``z_y - max_{j != y} z_j`` (the sample is
fooled when it is negative), for a targeted one ``max_{j != t} z_j - z_t``. Using the logit
margin (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks") rather
than the cross-entropy keeps the gradient alive on very confident samples, where a float32
softmax saturates and the cross-entropy gradient becomes exactly zero. (A model that outputs
probabilities is attacked through their log, taken without a coarse floor by
:class:`audit.model.wrapper.ProbabilityLog`; log-probability differences are logit differences.)

A randomized model (its outputs differ between identical calls: random noise, resizing,
padding, dropout left on) is attacked with EOT (Athalye et al. 2018, "Obfuscated Gradients";
Carlini et al. 2019, "On Evaluating Adversarial Robustness"): with ``eot = S > 1`` every evaluation of the :class:`Objective` is
``S`` independent draws of the model; the gradient is their mean (the gradient of the expected
margin) and the margin returned is the *smallest* one, so that an attack succeeds when any
draw misclassifies and a sample counts as robust only if it stays correct on every draw. Every
attack gets this without a change. :func:`decide_eot` turns the ε = 0 sanity test into the
setting, :func:`correct_on_draws` is the clean (ε = 0) correctness under the same rule.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

__all__ = ["Objective", "EOT", "decide_eot", "correct_on_draws"]


@dataclass(frozen=True)
class EOT:
    """The EOT setting of a run: ``enabled``, ``samples`` the draws per evaluation (1 when not
    enabled), ``reason`` why (a sentence for results.json's ``data.eot`` and the findings)."""

    enabled: bool = False
    samples: int = 1
    reason: str = "two forward passes of the same inputs agree (a deterministic model): one draw per evaluation"

    @property
    def draws(self) -> int:
        """Model draws per evaluation of the objective: ``samples`` when enabled, else 1."""
        return self.samples if self.enabled else 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_eot(eot_samples: int, stochastic: bool, detail: str = "") -> EOT:
    """EOT with ``eot_samples`` draws when the outputs are ``stochastic`` (the ε = 0 sanity
    test; ``detail`` says what differed) and ``eot_samples`` > 1; otherwise off, with the reason."""
    if not stochastic:
        return EOT()
    seen = f"two forward passes of the same inputs differ{f' ({detail})' if detail else ''}"
    if eot_samples <= 1:
        return EOT(False, 1, f"{seen}, but eot_samples = 1: one draw per evaluation, no EOT (robustness is likely "
                             "overestimated)")
    return EOT(True, int(eot_samples), f"{seen}: gradients averaged over {eot_samples} draws of the model, and a "
                                       f"sample counts as robust only if all {eot_samples} draws classify it "
                                       "correctly (at ε = 0 too)")


@torch.no_grad()
def correct_on_draws(model: Any, x: torch.Tensor, y: torch.Tensor, draws: int, *, batch_size: int) -> torch.Tensor:
    """(n,) bool: the samples ``x`` (n, C, H, W) in [0, 1] (CPU) that ``draws`` independent
    forward passes of ``model`` (its ``logits(x, batch_size=)``) all classify as ``y`` (n,)
    int64: the clean (ε = 0) correctness of a randomized model under EOT."""
    ok = torch.ones(len(y), dtype=torch.bool)
    for _ in range(max(1, draws)):
        ok &= model.logits(x, batch_size=batch_size).argmax(1) == y
    return ok


class Objective:
    """The model plus the attack goal. ``lab`` (N,) int64 is the true label (untargeted) or
    the target class (targeted). ``path``: the :class:`audit.fastpath.FastPath` of the
    forward and backward passes (None: the model itself, fp32 eager). ``eot``: model draws per evaluation (1: a
    deterministic model; > 1: EOT, see the module docstring). ``forwards``/``backwards`` count
    the sample passes (the ``queries`` of the check; one per draw)."""

    def __init__(self, model: torch.nn.Module, *, targeted: bool = False, device: torch.device | None = None,
                 path: Any = None, eot: int = 1):
        if eot < 1:
            raise ValueError(f"eot must be ≥ 1 draw, not {eot}")
        self.model = model
        self.targeted = targeted
        self.device = device or torch.device("cpu")
        #: the fast path the logits go through (:class:`audit.fastpath.FastPath`: bf16 autocast,
        #: channels-last inputs, a compiled network); None: the fp32 eager model
        self.path = path
        self.eot = int(eot)
        self.forwards = 0
        self.backwards = 0
        #: a faster stand-in for forward passes without gradients (``x -> logits or None``,
        #: e.g. :class:`audit.model.layout.CompiledForward`); None: the model itself
        self.fast = None
        #: the exact margin (``(x, lab) -> (N,)``: fp32 eager, every EOT draw) that a hit found
        #: through an approximate or single-draw objective must share (:meth:`confirmed`)
        self.exact = None

    @property
    def amp(self) -> torch.dtype | None:
        """The autocast dtype of the passes (None: fp32)."""
        return None if self.path is None else self.path.amp

    @property
    def approximate(self) -> bool:
        """Whether margins may differ from the fp32 eager model's by rounding (autocast or a
        compiled stand-in): adversarials found are then confirmed before they count."""
        return self.fast is not None or (self.path is not None and self.path.approximate)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (N, K) float32 at ``x`` (N, C, H, W) (one draw), through
        :attr:`path` when set."""
        if self.path is not None:
            return self.path(x)
        return self.model(x).float()

    def confirmed(self, x: torch.Tensor, lab: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the samples whose margin ``m`` (N,) at ``x`` is negative and, when
        :attr:`exact` is set, negative under it too (so an attack does not stop searching on a
        hit that will not be confirmed)."""
        hit = m < 0
        if self.exact is None or not hit.any():
            return hit
        idx = hit.nonzero().flatten()
        out = torch.zeros_like(hit)
        out[idx] = self.exact(x[idx], lab[idx]).to(hit.device) < 0
        return out

    def _nograd_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast is not None and self.amp is None:
            z = self.fast(x)
            if z is not None:
                return z.float()
        return self.logits(x)

    def margin_from_logits(self, z: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """The margin (N,) of logits ``z`` (N, K) for labels/targets ``lab`` (N,)."""
        own = z.gather(1, lab[:, None]).squeeze(1)
        other = z.scatter(1, lab[:, None], float("-inf")).amax(1)
        return other - own if self.targeted else own - other

    def __call__(self, x: torch.Tensor, lab: torch.Tensor, *, grad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Margin (N,) at ``x`` (N, C, H, W) and, with ``grad``, its input gradient (N, C, H, W)
        float32. Under EOT (``eot`` > 1): the smallest margin over ``eot`` draws and the mean of
        their gradients."""
        n = x.shape[0]
        self.forwards += n * self.eot
        if not grad:
            with torch.no_grad():
                m = self.margin_from_logits(self._nograd_logits(x), lab)
                for _ in range(self.eot - 1):
                    m = torch.minimum(m, self.margin_from_logits(self._nograd_logits(x), lab))
            return m, None
        self.backwards += n * self.eot
        xg = x.detach().requires_grad_(True)
        worst, total = None, None
        for _ in range(self.eot):
            with torch.enable_grad():
                m = self.margin_from_logits(self.logits(xg), lab)
                (g,) = torch.autograd.grad(m.sum(), xg)
            m, g = m.detach(), g.float()
            worst = m if worst is None else torch.minimum(worst, m)
            total = g if total is None else total + g
        return worst, total if self.eot == 1 else total / self.eot

    @torch.no_grad()
    def verify(self, x: torch.Tensor, lab: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The verification pass: (margin (N,), logits (N, K)) on the CPU for candidate
        adversarials ``x`` (N, C, H, W) with labels/targets ``lab`` (N,); ``forward(x)`` is one
        batched draw of the model's float32 logits on the CPU (the engine's, without autocast).
        Under EOT the smallest margin over ``eot`` draws and the logits of the draw that gave it
        (an adversarial counts when any draw misclassifies); otherwise one pass. Not counted in
        ``forwards``."""
        lab = lab.cpu()
        z = forward(x)
        m = self.margin_from_logits(z, lab)
        for _ in range(self.eot - 1):
            zd = forward(x)
            md = self.margin_from_logits(zd, lab)
            lower = md < m
            m, z = torch.where(lower, md, m), torch.where(lower[:, None], zd, z)
        return m, z

    @property
    def passes(self) -> tuple[int, int]:
        """(forward, backward) sample passes so far."""
        return self.forwards, self.backwards
