"""The ε loop of the ``adversarial`` check on one work unit (a chunk of samples): which
samples each attack runs on at each ε, the per-sample bookkeeping (first ε at which each
attack fooled each sample, the worst-case adversarial, the smallest perturbation), validity
asserts and the final verification pass; and the unit's record.

Work shared across ε (docs/adversarial.md): a sample an attack fooled at ε counts as fooled
by it at every larger ε (its adversarial stays valid inside every larger ball). FGSM and noise
run at every ε from the smallest up, on the samples they have not fooled yet. The iterative
attacks (PGD, APGD, Square) do the same unless the budget's ``share_failures`` is on (fast,
standard): they then run from the largest ε down, each on the samples it fooled at the next
larger ε, and a sample one of them fails on at ε counts as not fooled by it at the smaller ε
(a failure carries down as an adversarial carries up). The minimum-norm attacks run first,
once; the gradient-free Square runs after the gradient attacks, at each ε on the samples they
all failed on there. Fooled samples leave the batch at once. An adversarial outside its
ε-ball or outside [0, 1] is a bug here and raises AssertionError.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import field
from typing import Any, Callable

import torch

from audit.batching import batched
from audit.fastpath import FastPath, FastSettings
from audit.model.layout import CompiledForward
from audit.records import record

from .apgd import APGDCE
from .attacks import ATTACKS, PGD, Attack, BoundedAttack, Guide, MinimumNormAttack
from .diagnostics import diagnose
from .objective import Objective
from .options import AdversarialOptions
from .plan import Plan
from .threat import max_epsilon, norm_of

__all__ = ["Engine", "NormRecord", "UnitRecord", "merge_norm", "TOL_REL", "TOL_ABS"]

#: Square queries from which a compiled forward pays for its compilation (:meth:`Engine._compile`)
COMPILE_QUERIES = 1000
#: ... on images of at least this many pixels (H·W); below, a forward pass costs too little
COMPILE_PIXELS = 32 * 32
#: one compiled network per model, per process
_COMPILED: "weakref.WeakKeyDictionary[Any, CompiledForward]" = weakref.WeakKeyDictionary()

#: validity tolerance of an adversarial's norm: ε·(1 + TOL_REL) + TOL_ABS
TOL_REL, TOL_ABS = 1e-5, 1e-6


@record
class NormRecord:
    """One norm's outcome on n samples (CPU). ``first[a]`` (n,) int64: index into ``eps`` of
    the smallest ε at which attack ``a`` fooled each sample (``len(eps)`` = never); ``adv``
    (n, C, H, W) the worst-case adversarial at its smallest fooling ε (the clean input where
    none) and ``adv_k`` (n,) int64 that ε's index; ``min_pert`` (n,) float the smallest
    perturbation norm of any adversarial found (inf: none); ``adv_logits`` (n, K) the logits of
    ``adv`` (zeros where there is no adversarial); ``min_norm`` (n,) the minimum-norm attacks'
    smallest perturbation with the unbounded PGD retry (None when none ran); ``control``: the
    attacks that ran as gradient-masking controls; ``unverified``: [dropped, re-found]
    adversarials of the verification pass; ``independent``, ``longer_tried``,
    ``longer_fooled`` (n, K) bool: the diagnostics on the plan's probe samples (:mod:`.diagnostics`;
    all False elsewhere, None when they did not run)."""

    norm: str
    eps: list[float]
    first: dict[str, torch.Tensor]
    adv: torch.Tensor
    adv_k: torch.Tensor
    min_pert: torch.Tensor
    adv_logits: torch.Tensor | None = None
    min_norm: torch.Tensor | None = None
    control: list[str] = field(default_factory=list)
    unverified: list[int] = field(default_factory=lambda: [0, 0])
    independent: torch.Tensor | None = None
    longer_tried: torch.Tensor | None = None
    longer_fooled: torch.Tensor | None = None

    @property
    def K(self) -> int:
        return len(self.eps)

    def worst_first(self) -> torch.Tensor:
        """(n,) int64: the first fooling ε index over every attack."""
        out = torch.full((len(self.adv_k),), self.K, dtype=torch.long)
        for t in self.first.values():
            out = torch.minimum(out, t)
        return out


@record
class UnitRecord:
    """One work unit's record: ``grad_bad`` (n,) bool the attacked samples whose clean margin
    gradient is zero or non-finite, ``runs`` one :class:`NormRecord` per norm, ``timings``
    seconds per ``<attack>_<norm>``, ``passes`` [forward, backward] sample passes,
    ``attack_passes`` those per ``<attack>_<norm>``, ``layout`` the model's memory layout
    during the attacks (:func:`audit.model.layout.channels_last`) and ``compiled`` whether the
    forward passes without gradients ran compiled (:meth:`Engine._compile`)."""

    grad_bad: torch.Tensor
    runs: list[NormRecord]
    timings: dict[str, float]
    passes: list[int]
    attack_passes: dict[str, list[int]] = field(default_factory=dict)
    layout: str = ""
    compiled: str = ""


def merge_norm(parts: list[NormRecord]) -> NormRecord:
    """One record over every sample from the records of consecutive units."""
    p0 = parts[0]

    def cat(name: str) -> torch.Tensor:
        return torch.cat([getattr(p, name) for p in parts])

    def opt(name: str) -> torch.Tensor | None:
        return None if getattr(p0, name) is None else cat(name)

    return NormRecord(norm=p0.norm, eps=list(p0.eps), first={a: torch.cat([p.first[a] for p in parts]) for a in p0.first},
                      adv=cat("adv"), adv_k=cat("adv_k"), min_pert=cat("min_pert"), adv_logits=cat("adv_logits"),
                      min_norm=opt("min_norm"), control=list(p0.control),
                      unverified=[sum(p.unverified[i] for p in parts) for i in range(2)],
                      independent=opt("independent"), longer_tried=opt("longer_tried"),
                      longer_fooled=opt("longer_fooled"))


class Engine:
    """Every attack of ``plan`` on its samples (one unit: ``plan`` is already restricted to
    them), drawing only from ``generator``. ``bar(total=, desc=, unit=)`` makes an inner
    progress bar (``ctx.bar``). The attacks reach the model through ``fast``'s fast path
    (:mod:`audit.fastpath`; under bf16 every candidate adversarial is confirmed in fp32)."""

    def __init__(self, plan: Plan, options: AdversarialOptions, model: Any, generator: torch.Generator, *,
                 batch_size: int, bar: Callable[..., Any], fast: FastSettings) -> None:
        self.plan, self.o, self.model, self.gen = plan, options, model, generator
        self.dev, self.bs, self.bar = model.device, batch_size, bar
        eot = plan.eot.draws  # > 1: EOT over a randomized model's draws (objective.py)
        self.path = path = FastPath(model, fast, compare=eot == 1)
        self.obj32 = Objective(model, targeted=plan.targeted, device=self.dev, eot=eot)  # confirmations, re-attacks
        self.obj = Objective(model, targeted=plan.targeted, device=self.dev, path=path, eot=eot)
        # gradient-free attacks: one draw per query even under EOT (any misclassifying draw is a
        # success under EOT's rule; the candidates are confirmed on eot fresh draws, _confirm)
        self.obj_free = self.obj if eot == 1 else Objective(model, targeted=plan.targeted, device=self.dev, path=path)
        self.settings = options.resolved
        made = [ATTACKS[a].from_options(options) for a in plan.attacks]
        # minimum-norm first, then the gradient attacks, then the gradient-free ones (Square's
        # control reads what every gradient attack found)
        self.attacks: list[Attack] = sorted(made, key=lambda a: (not a.minimum_norm, not a.uses_gradients))
        self.timings: dict[str, float] = {}
        self.attack_passes: dict[str, list[int]] = {}

    def run(self) -> UnitRecord:
        grad_bad = torch.zeros(self.plan.n, dtype=torch.bool)
        probe = self.plan.x[:8].to(self.dev)
        with self.path.layout(probe) as layout:
            if len(probe) and self.plan.grad_ok:  # at most what fits the free memory (audit.fastpath)
                self.bs = self.path.batch_size(probe, self.bs, role="adversarial", factor=self.plan.eot.draws)
            self._compile(probe)
            g0 = self._clean_gradients(grad_bad) if self.plan.grad_ok else None
            runs = [self._run_norm(norm, g0) for norm in self.plan.eps]
        return UnitRecord(grad_bad=grad_bad, runs=runs, timings=dict(self.timings), passes=self._passes(),
                          attack_passes=dict(self.attack_passes), layout=layout, compiled=self.compiled)

    def _compile(self, probe: torch.Tensor) -> None:
        """Unless the fast path compiles, a compiled network for the passes without gradients
        when many (Square at ≥ ``COMPILE_QUERIES`` queries, images of ≥ ``COMPILE_PIXELS`` pixels:
        a fixed rule) and the ``compile`` option allows (:class:`audit.model.layout.CompiledForward`)."""
        self.compiled = "eager (few forward passes: compiling would not pay)"
        if self.path.compiling and self.path.state.compiled is not None:
            self.compiled = "by the fast path ([audit] compile)"
        elif self.o.compile == "off":
            self.compiled = "eager (compile = \"off\")"
        elif self.o.compile == "on" or ("square" in self.plan.attacks and self.settings.square_queries >= COMPILE_QUERIES
                                         and self.plan.x.shape[-2] * self.plan.x.shape[-1] >= COMPILE_PIXELS):
            if len(probe):
                fast = _COMPILED.get(self.model)
                if fast is None or fast.network is not self.model.net:  # first use, or a new network
                    fast = _COMPILED[self.model] = CompiledForward(self.model, probe, compare=not self.plan.eot.enabled)
                self.obj.fast = self.obj_free.fast = fast if fast.net is not None else None
                self.compiled = fast.status
        if self.obj_free.approximate or self.obj_free.eot < self.obj32.eot:
            self.obj_free.exact = lambda x, lab: self.obj32(x, lab)[0]

    def _passes(self) -> list[int]:
        objs = {id(o): o for o in (self.obj, self.obj32, self.obj_free)}.values()
        return [sum(o.forwards for o in objs), sum(o.backwards for o in objs)]

    # ------------------------------------------------------------------ helpers
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x, batch_size=self.bs)

    def _on_device(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.plan.x[rows].to(self.dev), self.plan.lab[rows].to(self.dev)

    def _clean_gradients(self, grad_bad: torch.Tensor) -> torch.Tensor:
        """The margin's gradient at the clean inputs (n, C, H, W), non-finite values zeroed;
        marks the attacked samples where it is zero or non-finite in ``grad_bad``."""
        x, attacked = self.plan.x, self.plan.attacked
        g0 = torch.zeros_like(x)
        ai = attacked.nonzero().flatten()

        def fn(ch):
            _, g = self.obj(*self._on_device(ch), grad=True)
            g0[ch] = g.cpu()

        batched(ai, self.bs, fn)
        if len(ai):
            flat = g0[ai].flatten(1)
            grad_bad[ai] = (~torch.isfinite(flat).all(1)) | (flat.abs().amax(1) == 0)
        return torch.nan_to_num(g0, nan=0.0, posinf=0.0, neginf=0.0)

    def _confirm(self, xadv: torch.Tensor, rows: torch.Tensor, fooled: torch.Tensor,
                 obj: Objective | None = None) -> torch.Tensor:
        """With bf16 attacks, a compiled forward or fewer draws than EOT's (the gradient-free
        attacks, ``obj``): keep only the candidates the fp32 eager model (under EOT: any of its
        draws) also gets wrong."""
        obj = obj or self.obj
        if not (obj.approximate or obj.eot < self.obj32.eot) or not fooled.any():
            return fooled
        hit = fooled.nonzero().flatten()
        m, _ = self.obj32(xadv[hit.to(xadv.device)].to(self.dev), self.plan.lab[rows[hit]].to(self.dev))
        out = fooled.clone()
        out[hit] = (m < 0).cpu()
        return out

    def _record(self, nr: NormRecord, attack: str, k: int, rows: torch.Tensor, fooled: torch.Tensor,
                xadv: torch.Tensor) -> None:
        """Validate and store the adversarials of ``attack`` at ε index ``k`` for samples
        ``rows`` (candidates already confirmed in fp32, see :meth:`_confirm`)."""
        if not fooled.any():
            return
        gi = rows[fooled.cpu()]
        xa = xadv[fooled].detach().cpu()
        dn = self._valid(attack, nr.norm, nr.eps[k], gi, xa)
        first = nr.first[attack]
        new = first[gi] > k
        first[gi[new]] = k
        better = nr.adv_k[gi] > k
        nr.adv[gi[better]] = xa[better]
        nr.adv_k[gi[better]] = k
        nr.min_pert[gi] = torch.minimum(nr.min_pert[gi], dn)

    def _valid(self, attack: str, norm: str, eps: float, gi: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        """The perturbation norms (m,) of adversarials ``xa`` (m, C, H, W, CPU) of samples ``gi``;
        AssertionError when one is outside its ε-ball or outside [0, 1] (a bug of the audit)."""
        dn = norm_of(xa - self.plan.x[gi], norm)
        if not (dn <= eps * (1 + TOL_REL) + TOL_ABS).all() or xa.min() < -TOL_ABS or xa.max() > 1 + TOL_ABS:
            raise AssertionError(f"internal error: attack {attack} returned an adversarial outside the {norm} ball "
                                 f"ε={eps:.4g} (norm {float(dn.max()):.4g}) or outside [0, 1]; this is a bug in the audit")
        return dn

    # ------------------------------------------------------------------ one norm
    def _run_norm(self, norm: str, g0: torch.Tensor | None) -> NormRecord:
        plan, eps = self.plan, self.plan.eps[norm]
        n, K = plan.n, len(eps)
        nr = NormRecord(norm=norm, eps=eps, first={a: torch.full((n,), K, dtype=torch.long) for a in plan.attacks},
                        adv=plan.x.clone(), adv_k=torch.full((n,), K, dtype=torch.long),
                        min_pert=torch.full((n,), float("inf")))
        guide = Guide(x=plan.x, eps=eps, first=nr.first, grad0=g0)
        for attack in self.attacks:
            t0, p0 = time.perf_counter(), self._passes()
            if isinstance(attack, MinimumNormAttack):
                self._minimum_norm(nr, attack, guide)
            else:
                self._sweep(nr, attack, guide)
            self.timings[f"{attack.name}_{norm}"] = round(time.perf_counter() - t0, 3)
            self.attack_passes[f"{attack.name}_{norm}"] = [a - b for a, b in zip(self._passes(), p0)]
        nr.min_norm = guide.min_norm
        self._verify(nr)
        t0, p0 = time.perf_counter(), self._passes()
        self._diagnose(nr)
        self.timings[f"diagnostics_{norm}"] = round(time.perf_counter() - t0, 3)
        self.attack_passes[f"diagnostics_{norm}"] = [a - b for a, b in zip(self._passes(), p0)]
        return nr

    def _diagnose(self, nr: NormRecord) -> None:
        """The diagnostics (:func:`.diagnostics.diagnose`) on this unit's probe samples, their
        adversarials confirmed and validated like the ensemble's."""

        def record(gi: torch.Tensor, fooled: torch.Tensor, eps: float, xadv: torch.Tensor) -> torch.Tensor:
            fooled = self._confirm(xadv, gi, fooled)
            if fooled.any():
                self._valid("diagnostics", nr.norm, eps, gi[fooled], xadv[fooled.to(xadv.device)].detach().cpu())
            return fooled

        diagnose(nr, self.plan, self.obj, self._on_device, record, self.settings.apgd_steps, self.gen)

    def _minimum_norm(self, nr: NormRecord, attack: MinimumNormAttack, guide: Guide) -> None:
        """The unbounded attack once on every attacked sample: a sample whose smallest
        adversarial is ≤ ε counts as fooled at ε (the perturbation histogram and the
        unbounded-attack test read the rest)."""
        x, attacked, norm = self.plan.x, self.plan.attacked, nr.norm
        top = max_epsilon(norm, x.shape[1:])
        found = torch.full((self.plan.n,), float("inf"))
        found_adv = x.clone()
        bar = self.bar(total=1, desc=f"{attack.name} {norm}", unit="run")

        def fn(ch):
            best, xa = attack.minimize(self.obj, *self._on_device(ch), norm, max_eps=top)
            best = best.cpu()
            ok = self._confirm(xa, ch, torch.isfinite(best))
            best[~ok] = float("inf")
            found[ch] = best
            found_adv[ch] = xa.cpu()

        batched(attacked.nonzero().flatten(), self.bs, fn)
        bar.update(1)
        bar.close()
        for k, e in enumerate(nr.eps):  # the minimal perturbation ≤ ε: fooled at ε
            gi = (attacked & (found <= e) & (nr.first[attack.name] == nr.K)).nonzero().flatten()
            self._record(nr, attack.name, k, gi, torch.ones(len(gi), dtype=torch.bool), found_adv[gi])
        self._unbounded(nr, found, found_adv, top)
        nr.min_pert = torch.minimum(nr.min_pert, found)
        if guide.min_norm is None:
            guide.min_norm, guide.min_adv = found, found_adv
        else:  # several minimum-norm attacks: the smaller perturbation
            better = found < guide.min_norm
            guide.min_norm = torch.where(better, found, guide.min_norm)
            guide.min_adv = torch.where(better.view(-1, 1, 1, 1), found_adv, guide.min_adv)

    def _unbounded(self, nr: NormRecord, found: torch.Tensor, found_adv: torch.Tensor, top: float) -> None:
        """Carlini et al. 2019: with ε covering the whole input range every sample must fall.
        Where the minimum-norm attack failed, PGD at that ε gets a second try."""
        x, attacked = self.plan.x, self.plan.attacked
        ai = attacked.nonzero().flatten()
        miss = ai[~torch.isfinite(found[ai])]
        if len(miss) == 0:
            return
        pgd = PGD(steps=2 * self.settings.pgd_steps, restarts=1)

        def fn(ch):
            fooled, xa = pgd.run(self.obj, *self._on_device(ch), top, nr.norm, gen=self.gen)
            f = self._confirm(xa, ch, fooled.cpu())
            xa = xa.cpu()
            found[ch[f]] = norm_of(xa[f] - x[ch[f]], nr.norm)
            found_adv[ch[f]] = xa[f]

        batched(miss, self.bs, fn)

    def _sweep(self, nr: NormRecord, attack: BoundedAttack, guide: Guide) -> None:
        """``attack`` at each ε on the attacked samples it has not settled and that its
        :meth:`~.attacks.BoundedAttack.select` keeps: from the smallest ε up on those it has not
        fooled yet, or, for an iterative attack with ``share_failures``, from the largest ε down
        on those it fooled at the next larger ε (where it fails, it is not run at smaller ε)."""
        name, attacked = attack.name, self.plan.attacked
        if attack.is_control(guide):
            nr.control.append(name)
        down = attack.iterative and self.settings.share_failures
        bar = self.bar(total=nr.K, desc=f"{name} {nr.norm}", unit="ε")
        first = nr.first[name]
        failed = torch.zeros(self.plan.n, dtype=torch.bool)  # failed at a larger ε (down only)
        for k in (reversed(range(nr.K)) if down else range(nr.K)):
            todo = attacked & ~failed & (first > k)
            keep = attack.select(k, guide)
            if keep is not None:
                todo &= keep

            obj = self.obj if attack.uses_gradients else self.obj_free

            def fn(ch, k=k, eps=nr.eps[k], obj=obj):
                fooled, xa = attack.perturb(obj, *self._on_device(ch), eps, nr.norm, rows=ch, guide=guide, gen=self.gen)
                self._record(nr, name, k, ch, self._confirm(xa, ch, fooled.cpu(), obj), xa)

            batched(todo.nonzero().flatten(), self.bs, fn)
            if down:
                failed |= todo & (first > k)
            bar.update(1)
        bar.close()

    # ------------------------------------------------------------------ verification
    def _verify(self, nr: NormRecord) -> None:
        """A forward pass on every worst-case adversarial: it must still be adversarial; the
        ones that are not are forgotten and re-attacked (:meth:`_reattack`)."""
        x, lab = self.plan.x, self.plan.lab
        gi = (nr.adv_k < nr.K).nonzero().flatten()
        if len(gi) == 0:
            nr.adv_logits = torch.zeros(self.plan.n, self.model.num_classes)
            return
        m, z = self.obj32.verify(nr.adv[gi], lab[gi], self._forward)  # under EOT: the worst draw
        bad = gi[m >= 0]
        logits = torch.zeros(self.plan.n, z.shape[1])
        logits[gi] = z
        nr.adv_logits = logits
        if len(bad):
            # forget these samples' records, then give PGD a fresh, verified try per ε so that
            # robustness is not overestimated
            for t in nr.first.values():
                t[bad] = nr.K
            nr.adv_k[bad] = nr.K
            nr.adv[bad] = x[bad]
            nr.min_pert[bad] = float("inf")
            recovered = self._reattack(nr, bad)
            logits[bad] = self.obj32.verify(nr.adv[bad], lab[bad], self._forward)[1]
            nr.unverified = [len(bad), recovered]

    def _reattack(self, nr: NormRecord, idx: torch.Tensor) -> int:
        """APGD-CE (fp32, every EOT draw; the budget's ``apgd_steps``, at least twice
        ``pgd_steps``) at increasing ε on ``idx``, keeping only adversarials a separate
        verification pass confirms (recorded as that attack's, or the first attack's when it did
        not run). Returns how many samples it fooled."""
        x, lab = self.plan.x, self.plan.lab
        key = next((a for a in ("apgd_ce", "pgd") if a in nr.first), next(iter(nr.first)))
        pgd = APGDCE(steps=max(self.settings.apgd_steps, 2 * self.settings.pgd_steps), restarts=1)
        todo = idx
        for k, eps in enumerate(nr.eps):
            if len(todo) == 0:
                break
            fooled, xa = pgd.run(self.obj32, x[todo].to(self.dev), lab[todo].to(self.dev), eps, nr.norm, gen=self.gen)
            xa, cand = xa.cpu(), fooled.cpu()
            if cand.any():
                m, _ = self.obj32.verify(xa[cand], lab[todo[cand]], self._forward)
                ok_local = cand.nonzero().flatten()[m < 0]
                ok = todo[ok_local]
                nr.first[key][ok] = k
                nr.adv_k[ok] = k
                nr.adv[ok] = xa[ok_local]
                nr.min_pert[ok] = norm_of(xa[ok_local] - x[ok], nr.norm)
                todo = todo[~torch.isin(todo, ok)]
        return int(len(idx) - len(todo))
