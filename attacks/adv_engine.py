"""The ε loop of the ``adversarial`` check: which samples each attack runs on at each ε,
the per-sample bookkeeping (first ε at which each attack fooled each sample, the worst-case
adversarial, the smallest perturbation), validity asserts, metrics and masking findings.
Images live in :mod:`attacks.adv_plots`; the attacks in :mod:`attacks.adv_core`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.batching import batched
from audit.data import stratified_indices
from audit.distributed import chunks
from audit.errors import ConfigError

from . import adv_core as core
from .adversarial import ATTACKS, GRADIENT_ATTACKS, default_epsilons, max_epsilon

TOL_REL, TOL_ABS = 1e-5, 1e-6


@dataclass
class NormRun:
    """Per-norm bookkeeping. ``first[a][i]`` is the index of the smallest ε at which attack
    ``a`` fooled sample ``i`` (``K`` = never); ``adv`` the worst-case adversarial at its
    smallest fooling ε; ``min_pert`` the smallest perturbation norm of any adversarial."""

    norm: str
    eps: list[float]
    n: int
    first: dict[str, torch.Tensor] = field(default_factory=dict)
    adv: torch.Tensor | None = None
    adv_k: torch.Tensor | None = None
    min_pert: torch.Tensor | None = None
    fmn_norm: torch.Tensor | None = None
    ran: list[str] = field(default_factory=list)
    square_scope: str = "all"
    adv_logits: torch.Tensor | None = None  #: logits of ``adv`` (zeros where no adversarial was found)
    unverified: list[int] = field(default_factory=lambda: [0, 0])  #: [dropped, re-found] adversarials

    #: per-sample fields, concatenated when work units merge
    PER_SAMPLE = ("adv", "adv_k", "min_pert", "fmn_norm", "adv_logits")

    def to_records(self) -> dict:
        """Plain containers (for checkpoints and for sending between processes)."""
        return {"norm": self.norm, "eps": list(self.eps), "n": self.n, "first": dict(self.first),
                "ran": list(self.ran), "square_scope": self.square_scope, "unverified": list(self.unverified),
                **{k: getattr(self, k) for k in self.PER_SAMPLE}}

    @classmethod
    def merge(cls, parts: list[dict]) -> "NormRun":
        """One NormRun from the records of consecutive sample units."""
        p0 = parts[0]
        nr = cls(norm=p0["norm"], eps=p0["eps"], n=sum(p["n"] for p in parts), ran=list(p0["ran"]),
                 square_scope=p0["square_scope"])
        nr.first = {a: torch.cat([p["first"][a] for p in parts]) for a in p0["first"]}
        for k in cls.PER_SAMPLE:
            if p0[k] is not None:
                setattr(nr, k, torch.cat([p[k] for p in parts]))
        nr.unverified = [sum(p["unverified"][i] for p in parts) for i in range(2)]
        return nr

    @property
    def K(self) -> int:
        return len(self.eps)

    def worst_first(self) -> torch.Tensor:
        out = torch.full((self.n,), self.K, dtype=torch.long)
        for t in self.first.values():
            out = torch.minimum(out, t)
        return out


class Engine:
    def __init__(self, options, ctx, res) -> None:
        self.o, self.ctx, self.res = options, ctx, res
        self.model = ctx.model
        self.dev = ctx.model.device
        self.bs = ctx.config.batch_size
        self.timings: dict[str, float] = {}
        self.gen = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(ctx.seed)

    # ------------------------------------------------------------------ setup
    def run(self) -> None:
        import time

        t_start = time.perf_counter()
        o, ctx, res = self.o, self.ctx, self.res
        data = ctx.data
        shape = tuple(data.input_shape)
        self.eps = {}
        for norm in o.norms:
            eps = sorted(float(e) for e in o.epsilons.get(norm, default_epsilons(norm, shape)))
            top = max_epsilon(norm, shape)
            if eps[-1] > top:
                raise ConfigError(f"[checks.adversarial] epsilons.{norm}: {eps[-1]} is beyond the input range "
                                  f"(the largest meaningful {norm} ε for {'x'.join(map(str, shape))} is {top:.4g})")
            self.eps[norm] = eps
        idx = torch.arange(len(data))
        if o.max_samples and len(data) > o.max_samples:
            idx = stratified_indices(data.y, o.max_samples, ctx.seed)
        self.idx = idx
        self.queries = {"forwards": 0, "backwards": 0}
        self.x, self.y = data.x[idx], data.y[idx]
        self.ids = [data.ids[i] for i in idx.tolist()]
        self.n = len(idx)
        clean_logits = ctx.logits[idx]
        self.clean_probs = clean_logits.softmax(1)
        self.correct = clean_logits.argmax(1) == self.y
        self.lab, self.targeted = self._labels(clean_logits)
        self.attacked = self.correct & (self.lab != self.y) if self.targeted else self.correct.clone()
        amp = o.precision == "bf16"
        # the attacks may run in bf16; verification (_verify) and re-attacks always run in fp32
        self.obj32 = core.Objective(self.model, targeted=self.targeted, device=self.dev)
        self.obj = core.Objective(self.model, targeted=self.targeted, device=self.dev,
                                  amp=torch.bfloat16 if amp else None)
        res.data["precision"] = "bf16" if amp else "fp32"
        res.metric("samples", self.n)

        self._sanity(clean_logits)
        self.grad_ok, why = ctx.agree("gradient_probe", self._gradient_probe())  # one verdict for every rank
        attacks = [a for a in ATTACKS if a in o.attacks]
        if not self.grad_ok:
            skipped = [a for a in attacks if a in GRADIENT_ATTACKS]
            attacks = [a for a in attacks if a not in GRADIENT_ATTACKS]
            res.finding("warn", "gradient_masking.no_gradients",
                        f"Input gradients cannot be computed ({why}); the gradient attacks ({', '.join(skipped)}) did "
                        "not run and only the gradient-free ones did, so robustness is likely overestimated.")
        self.attacks = attacks
        units = chunks(self.n, self.bs) or [torch.arange(0)]
        recs = ctx.map_units(len(units), lambda k, gen: self._unit(units[k], gen), tag="samples",
                             desc="attacking", unit="chunk")
        self._merge(recs)
        self.timings["attacks_total"] = round(time.perf_counter() - t_start, 3)
        from .adv_plots import report

        report(self)
        self.timings["total"] = round(time.perf_counter() - t_start, 3)

    # ------------------------------------------------------------------ work units
    def _unit(self, idx: torch.Tensor, gen: torch.Generator) -> dict:
        """Every attack on the samples ``idx`` (one work unit, see audit.distributed), with the
        unit's own generator; returns its per-sample records."""
        import copy

        sub = copy.copy(self)
        sub.x, sub.y, sub.lab = self.x[idx], self.y[idx], self.lab[idx]
        sub.correct, sub.attacked, sub.n = self.correct[idx], self.attacked[idx], len(idx)
        sub.gen, sub.timings = gen, {}
        sub.grad_bad = torch.zeros(sub.n, dtype=torch.bool)
        before = self._passes()
        sub.g0 = sub._clean_gradients() if self.grad_ok else None
        runs = [sub._run_norm(norm).to_records() for norm in self.o.norms]
        passes = [a - b for a, b in zip(self._passes(), before)]
        return {"grad_bad": sub.grad_bad, "runs": runs, "timings": sub.timings, "passes": passes}

    def _passes(self) -> tuple[int, int]:
        """Forward and backward passes (per sample) of the attacks so far, fp32 and bf16."""
        return (self.obj.forwards + self.obj32.forwards, self.obj.backwards + self.obj32.backwards)

    def _merge(self, recs: list[dict]) -> None:
        """The units' records as one run over all samples, and the findings computed from them."""
        fwd, bwd = self._passes()  # the probes before the units (the same on every rank)
        for r in recs:
            for key, t in r["timings"].items():  # summed over units: compute seconds, not wall time
                self.timings[key] = round(self.timings.get(key, 0.0) + t, 3)
            fwd, bwd = fwd + r["passes"][0], bwd + r["passes"][1]
        self.queries = {"forwards": fwd, "backwards": bwd}
        self.runs = [NormRun.merge([r["runs"][j] for r in recs]) for j in range(len(self.o.norms))]
        ai = self.attacked.nonzero().flatten()
        bad = torch.cat([r["grad_bad"] for r in recs])
        share = float(bad[ai].float().mean()) if len(ai) and self.grad_ok else 0.0
        if len(ai) and share > 0.05:
            self.res.finding("warn", "gradient_masking.zero_gradients",
                             f"The input gradient of the logit margin is zero or non-finite for {share:.0%} of the "
                             f"{len(ai)} attacked samples (shattered gradients: input quantization, non-differentiable "
                             "preprocessing); gradient attacks are blind there.")
        for nr in self.runs:
            if nr.fmn_norm is not None and len(ai):
                rate = float(torch.isfinite(nr.fmn_norm[ai]).float().mean())
                if rate < 0.99:
                    top = max_epsilon(nr.norm, self.x.shape[1:])
                    self.res.finding("warn", "gradient_masking.unbounded_attack_fails",
                                     f"With ε = {top:.3g} ({nr.norm}; any image is reachable) the gradient attacks "
                                     f"fooled only {rate:.1%} of {len(ai)} samples instead of ~100%: the gradients do "
                                     "not lead to the decision boundary (masking), or the model ignores its input.")
            dropped, recovered = nr.unverified
            if dropped:
                self.res.finding("info", "adversarial.unverified",
                                 f"{dropped} {nr.norm} adversarial(s) did not reproduce on a second forward pass "
                                 f"(numerical noise at the decision boundary); a fresh PGD run re-found {recovered} of "
                                 "them with a verified adversarial, the rest count as robust.")

    def _labels(self, clean_logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
        t = self.o.targeted
        if not t:
            return self.y.clone(), False
        if t == "least_likely":
            return clean_logits.argmin(1), True
        names = self.model.class_names
        if t in names:
            return torch.full_like(self.y, names.index(t)), True
        if t.isdigit() and int(t) < len(names):
            return torch.full_like(self.y, int(t)), True
        raise ConfigError(f"[checks.adversarial] targeted = {t!r} is not '', 'least_likely' or a class of the model "
                          f"({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x, batch_size=self.bs)

    def _sanity(self, clean_logits: torch.Tensor) -> None:
        """ε = 0 and repeated forward passes (Carlini et al. 2019 §5; randomness: Athalye et al. 2018)."""
        res = self.res
        again = self._forward(self.x)
        scale = 1 + clean_logits.abs().max()
        diff = float((again - clean_logits).abs().max() / scale)
        flips = int((again.argmax(1) != clean_logits.argmax(1)).sum())
        self.stochastic = diff > 1e-3 or flips > 0
        if self.stochastic:
            res.finding("warn", "gradient_masking.stochastic_outputs",
                        f"Two forward passes of the same {self.n} inputs differ (largest logit change {diff:.2g} of the "
                        f"logit scale, {flips} predictions changed): a randomized model needs EOT attacks "
                        "(Athalye et al. 2018); put it in eval mode or fix its randomness.")
        acc0 = float((again.argmax(1) == self.y).float().mean())
        acc = float(self.correct.float().mean())
        self.acc0, self.acc = acc0, acc
        if abs(acc0 - acc) > 1e-9:
            res.finding("warn", "gradient_masking.eps0_mismatch",
                        f"Robust accuracy at ε=0 is {acc0:.1%} but the clean accuracy is {acc:.1%}: the model's "
                        "output is not a function of its input alone.")
        if self.model.output_kind == "probabilities":
            res.finding("warn", "gradient_masking.probability_outputs",
                        "The model outputs probabilities, not logits; a softmax saturates and can zero the gradients "
                        "attacks use. The audit attacks the log-probabilities; export the pre-softmax logits.")

    def _gradient_probe(self) -> tuple[bool, str]:
        if self.n == 0:
            return False, "no samples"
        try:
            m, g = self.obj(self.x[:2].to(self.dev), self.lab[:2].to(self.dev), grad=True)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            if "does not require grad" in msg or "grad_fn" in msg:
                msg = "the model's output does not depend differentiably on its input (forward under torch.no_grad, " \
                      "detached, or a TorchScript model saved without autograd): " + msg
            return False, msg
        if g is None:
            return False, "autograd returned no gradient"
        return True, ""

    def _clean_gradients(self) -> torch.Tensor:
        g0 = torch.zeros_like(self.x)
        ai = self.attacked.nonzero().flatten()

        def fn(ch):
            _, g = self.obj(self.x[ch].to(self.dev), self.lab[ch].to(self.dev), grad=True)
            g0[ch] = g.cpu()

        batched(ai, self.bs, fn)
        if len(ai):
            flat = g0[ai].flatten(1)
            self.grad_bad[ai] = (~torch.isfinite(flat).all(1)) | (flat.abs().amax(1) == 0)
        return torch.nan_to_num(g0, nan=0.0, posinf=0.0, neginf=0.0)

    # ------------------------------------------------------------------ the ε loop
    def _confirm(self, xadv: torch.Tensor, gidx: torch.Tensor, fooled: torch.Tensor) -> torch.Tensor:
        """With bf16 attacks: keep only the candidates the fp32 model also gets wrong."""
        if self.obj.amp is None or not fooled.any():
            return fooled
        rows = fooled.nonzero().flatten()
        m, _ = self.obj32(xadv[rows.to(xadv.device)].to(self.dev), self.lab[gidx[rows]].to(self.dev))
        out = fooled.clone()
        out[rows] = (m < 0).cpu()
        return out

    def _record(self, nr: NormRun, attack: str, k: int, gidx: torch.Tensor, fooled: torch.Tensor,
                xadv: torch.Tensor) -> None:
        """Validate and store adversarials of ``attack`` at ε index ``k`` for samples ``gidx``
        (candidates already confirmed in fp32 by their producer, see :meth:`_confirm`)."""
        if not fooled.any():
            return
        gi = gidx[fooled.cpu()]
        xa = xadv[fooled].detach().cpu()
        d = xa - self.x[gi]
        dn = core.norm_of(d, nr.norm)
        eps = nr.eps[k]
        if not (dn <= eps * (1 + TOL_REL) + TOL_ABS).all() or xa.min() < -TOL_ABS or xa.max() > 1 + TOL_ABS:
            raise AssertionError(f"internal error: attack {attack} returned an adversarial outside the {nr.norm} ball "
                                 f"ε={eps:.4g} (norm {float(dn.max()):.4g}) or outside [0, 1]; this is a bug in the audit")
        first = nr.first[attack]
        new = first[gi] > k
        first[gi[new]] = k
        better = nr.adv_k[gi] > k
        nr.adv[gi[better]] = xa[better]
        nr.adv_k[gi[better]] = k
        nr.min_pert[gi] = torch.minimum(nr.min_pert[gi], dn)

    def _sweep(self, nr: NormRun, attack: str, attack_fn, select) -> None:
        """Run ``attack_fn(xb, lb, eps, gidx)`` at each ε on the attacked samples it has not
        fooled yet and that ``select(k)`` keeps."""
        import time
        t0 = time.perf_counter()
        bar = self.ctx.bar(total=nr.K, desc=f"{attack} {nr.norm}", unit="ε")
        first = nr.first[attack]
        for k, eps in enumerate(nr.eps):
            todo = self.attacked & (first == nr.K)
            if select is not None:
                todo &= select(k)
            gi = todo.nonzero().flatten()

            def fn(ch, k=k, eps=eps):
                fooled, xa = attack_fn(self.x[ch].to(self.dev), self.lab[ch].to(self.dev), eps, ch)
                self._record(nr, attack, k, ch, self._confirm(xa, ch, fooled.cpu()), xa)

            batched(gi, self.bs, fn)
            bar.update(1)
        bar.close()
        self.timings[f"{attack}_{nr.norm}"] = round(time.perf_counter() - t0, 3)

    def _run_norm(self, norm: str) -> NormRun:
        o = self.o
        eps = self.eps[norm]
        nr = NormRun(norm=norm, eps=eps, n=self.n)
        nr.adv = self.x.clone()
        nr.adv_k = torch.full((self.n,), len(eps), dtype=torch.long)
        nr.min_pert = torch.full((self.n,), float("inf"))
        for a in self.attacks:
            nr.first[a] = torch.full((self.n,), len(eps), dtype=torch.long)
        top = max_epsilon(norm, self.x.shape[1:])
        obj = self.obj

        if "fmn" in self.attacks:
            nr.fmn_norm = torch.full((self.n,), float("inf"))
            fmn_adv = self.x.clone()
            import time
            t0 = time.perf_counter()
            bar = self.ctx.bar(total=1, desc=f"fmn {norm}", unit="run")

            def fn(ch):
                best, xa = core.fmn(obj, self.x[ch].to(self.dev), self.lab[ch].to(self.dev), norm,
                                    steps=o.fmn_steps, max_eps=top)
                best = best.cpu()
                found = self._confirm(xa, ch, torch.isfinite(best))
                best[~found] = float("inf")
                nr.fmn_norm[ch] = best
                fmn_adv[ch] = xa.cpu()

            batched(self.attacked.nonzero().flatten(), self.bs, fn)
            bar.update(1)
            bar.close()
            for k, e in enumerate(eps):  # the minimal perturbation ≤ ε: fooled at ε
                gi = (self.attacked & (nr.fmn_norm <= e) & (nr.first["fmn"] == nr.K)).nonzero().flatten()
                self._record(nr, "fmn", k, gi, torch.ones(len(gi), dtype=torch.bool), fmn_adv[gi])
            self._unbounded(nr, fmn_adv, top)
            nr.min_pert = torch.minimum(nr.min_pert, nr.fmn_norm)
            self.timings[f"fmn_{norm}"] = round(time.perf_counter() - t0, 3)
            nr.ran.append("fmn")
        else:
            fmn_adv = None

        def window(ratio):
            if nr.fmn_norm is None or ratio <= 0:
                return None
            # samples the min-norm attack failed on are always attacked
            return lambda k: (~torch.isfinite(nr.fmn_norm)) | (nr.fmn_norm <= ratio * eps[k])

        if "fgsm" in self.attacks:
            self._sweep(nr, "fgsm", lambda xb, lb, e, ch: core.fgsm_from_grad(obj, xb, lb, self.g0[ch].to(self.dev), e, norm),
                        None)
            nr.ran.append("fgsm")
        if "pgd" in self.attacks:
            def pgd_fn(xb, lb, e, ch):
                init = None
                if fmn_adv is not None:
                    init = (fmn_adv[ch] - self.x[ch]).to(self.dev)
                    miss = ~torch.isfinite(nr.fmn_norm[ch])
                    if miss.any():
                        init[miss.to(self.dev)] = core.random_in_ball(xb[miss.to(self.dev)], e, norm, self.gen)
                return core.pgd(obj, xb, lb, e, norm, steps=o.pgd_steps, restarts=o.pgd_restarts, gen=self.gen, init=init)

            self._sweep(nr, "pgd", pgd_fn, window(o.pgd_window))
            nr.ran.append("pgd")
        if "square" in self.attacks:
            grad = [a for a in GRADIENT_ATTACKS if a in nr.first]
            nr.square_scope = o.square_scope if grad else "all"
            win = window(o.square_window)

            def sq_select(k):
                keep = win(k) if win is not None else torch.ones(self.n, dtype=torch.bool)
                if nr.square_scope == "control":  # only where every gradient attack failed at this ε
                    keep = keep & (torch.stack([nr.first[a] for a in grad]).amin(0) > k)
                return keep

            self._sweep(nr, "square", lambda xb, lb, e, ch: core.square(obj, xb, lb, e, norm, queries=o.square_queries,
                                                                       gen=self.gen), sq_select)
            nr.ran.append("square")
        if "noise" in self.attacks:
            self._sweep(nr, "noise", lambda xb, lb, e, ch: core.noise(obj, xb, lb, e, norm, draws=o.noise_draws,
                                                                     gen=self.gen), None)
            nr.ran.append("noise")
        self._verify(nr)
        return nr

    def _unbounded(self, nr: NormRun, fmn_adv: torch.Tensor, top: float) -> None:
        """Carlini et al. 2019: with ε covering the whole input range every sample must fall.
        The unbounded FMN run answers it; where FMN failed, PGD at that ε gets a second try."""
        ai = self.attacked.nonzero().flatten()
        miss = ai[~torch.isfinite(nr.fmn_norm[ai])]
        if len(miss):
            def fn(ch):
                fooled, xa = core.pgd(self.obj, self.x[ch].to(self.dev), self.lab[ch].to(self.dev), top, nr.norm,
                                      steps=2 * self.o.pgd_steps, restarts=1, gen=self.gen)
                f = self._confirm(xa, ch, fooled.cpu())
                xa = xa.cpu()
                nr.fmn_norm[ch[f]] = core.norm_of(xa[f] - self.x[ch[f]], nr.norm)
                fmn_adv[ch[f]] = xa[f]

            batched(miss, self.bs, fn)

    def _verify(self, nr: NormRun) -> None:
        """A forward pass on every worst-case adversarial: it must still be adversarial."""
        gi = (nr.adv_k < nr.K).nonzero().flatten()
        if len(gi) == 0:
            nr.adv_logits = torch.zeros(self.n, self.model.num_classes)
            return
        z = self._forward(nr.adv[gi])
        m = self.obj.margin_from_logits(z, self.lab[gi])
        bad = gi[m >= 0]
        logits = torch.zeros(self.n, z.shape[1])
        logits[gi] = z
        nr.adv_logits = logits
        if len(bad):
            # the stored adversarial does not reproduce: forget these samples' records, then give
            # PGD a fresh, verified try per ε so that robustness is not overestimated
            for t in nr.first.values():
                t[bad] = nr.K
            nr.adv_k[bad] = nr.K
            nr.adv[bad] = self.x[bad]
            nr.min_pert[bad] = float("inf")
            recovered = self._reattack(nr, bad)
            logits[bad] = self._forward(nr.adv[bad])
            nr.unverified = [len(bad), recovered]

    def _reattack(self, nr: NormRun, idx: torch.Tensor) -> int:
        """PGD (twice the steps) at increasing ε on ``idx``, keeping only adversarials that a
        separate forward pass confirms. Returns how many samples it fooled."""
        key = "pgd" if "pgd" in nr.first else next(iter(nr.first))
        todo = idx
        for k, eps in enumerate(nr.eps):
            if len(todo) == 0:
                break
            fooled, xa = core.pgd(self.obj32, self.x[todo].to(self.dev), self.lab[todo].to(self.dev), eps, nr.norm,
                                  steps=2 * self.o.pgd_steps, restarts=1, gen=self.gen)
            xa = xa.cpu()
            cand = fooled.cpu()
            if cand.any():
                z = self._forward(xa[cand])
                ok_local = cand.nonzero().flatten()[self.obj.margin_from_logits(z, self.lab[todo[cand]]) < 0]
                ok = todo[ok_local]
                nr.first[key][ok] = k
                nr.adv_k[ok] = k
                nr.adv[ok] = xa[ok_local]
                nr.min_pert[ok] = core.norm_of(xa[ok_local] - self.x[ok], nr.norm)
                todo = todo[~torch.isin(todo, ok)]
        return int(len(idx) - len(todo))

    # ------------------------------------------------------------------ numbers
    def first_of(self, nr: NormRun, a: str) -> torch.Tensor:
        """Per-sample first fooling ε index of an attack or a combination ("worst",
        "gradient" = FGSM ∪ PGD ∪ FMN, "gradient+square")."""
        if a == "worst":
            return nr.worst_first()
        if a in ("gradient", "gradient+square"):
            names = [g for g in GRADIENT_ATTACKS if g in nr.first] + (["square"] if a == "gradient+square" else [])
            return torch.stack([nr.first[g] for g in names]).amin(0)
        return nr.first[a]

    def curve_names(self, nr: NormRun) -> list[str]:
        names = [a for a in nr.first if not (a == "square" and nr.square_scope == "control")]
        if nr.square_scope == "control" and "square" in nr.first:
            names += ["gradient", "gradient+square"]
        return names + ["worst"]

    def curves(self, nr: NormRun) -> dict[str, list[float]]:
        out = {}
        for a in self.curve_names(nr):
            first = self.first_of(nr, a)
            out[a] = [float((self.correct & (first > k)).float().mean()) if self.n else float("nan")
                      for k in range(nr.K)]
        return out

    def success(self, nr: NormRun, a: str) -> list[float]:
        first = self.first_of(nr, a)
        att = self.attacked
        na = int(att.sum())
        return [float((att & (first <= k)).sum()) / na if na else float("nan") for k in range(nr.K)]
