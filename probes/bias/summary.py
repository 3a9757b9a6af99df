"""From the ``bias`` check's records to its metrics and findings: the TCAV table, the flip
rates of the counterfactual insertion, the tie to ``class_viz``, and the
``bias.concept_dependence`` findings where both kinds of evidence agree."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from audit.results import CheckResult

from .insertion import flip_rates
from .tcav import LayerTcav, TcavRow, cav_accuracy

__all__ = ["Evidence", "gather", "fmt_p", "dependence_findings"]


def fmt_p(p: float) -> str:
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


@dataclass
class Evidence:
    """``tcav[(class, concept, layer)]`` TCAV rows (class-major, then layer, then concept),
    ``flips[(class, concept)]`` flip/control/n/p, ``viz[(class, concept, layer)]`` (score,
    others, ref), the concept predictions ``preds[concept]`` (N_base,), the significance
    levels (Bonferroni-corrected when asked) and ``leans[class]`` the dependences found:
    (concept, layer, TCAV row, flips)."""

    tcav: dict[tuple, TcavRow] = field(default_factory=dict)
    flips: dict[tuple, dict] = field(default_factory=dict)
    viz: dict[tuple, tuple] = field(default_factory=dict)
    preds: dict[str, torch.Tensor] = field(default_factory=dict)
    alpha_eff: float = 0.0
    alpha_flip: float = 0.0
    alpha_cav: float = 0.0
    leans: dict[int, list] = field(default_factory=dict)

    def cav_ok(self, t: TcavRow) -> bool:
        """Whether the row's CAVs beat random-vs-random ones on held-out examples (``p_cav``
        below the uncorrected alpha): a precondition per concept and layer."""
        return t.p_cav < self.alpha_cav

    def significant(self, t: TcavRow) -> bool:
        """A real CAV and a TCAV score different from the null at the corrected level."""
        return self.cav_ok(t) and t.p < self.alpha_eff


def gather(res: CheckResult, names: list[str], classes: list[int], concepts: list[str], layers: list[str],
           layer_recs: list[LayerTcav], ctrl_pred: torch.Tensor, preds: dict[str, torch.Tensor],
           base_y: torch.Tensor, o) -> Evidence:
    """The evidence of every unit, with the metrics ``tcav_score``/``tcav_score_random``/
    ``tcav_p_value``, ``cav_accuracy``/``cav_accuracy_random``/``cav_p_value`` (per concept and
    layer), ``flip_rate``/``flip_rate_control``/``flip_p_value`` and ``viz_concept_score``;
    ``bias.cav_near_chance`` (info) where a concept's CAVs are no better than random ones."""
    ev = Evidence(preds=preds)
    by_layer = {r.layer: {(t.cls, t.concept): t for t in r.rows} for r in layer_recs}
    for k in classes:
        for ln in layers:
            for c in concepts:
                t = by_layer[ln].get((k, c))
                if t is not None:
                    ev.tcav[k, c, ln] = t
    ev.alpha_eff = o.alpha / max(1, len(ev.tcav)) if o.bonferroni else o.alpha
    ev.alpha_flip = o.alpha / (len(classes) * len(concepts)) if o.bonferroni else o.alpha
    ev.alpha_cav = o.alpha
    seen = set()
    for (k, c, ln), t in ev.tcav.items():
        q = {"class": names[k], "concept": c, "layer": ln}
        res.metric("tcav_score", t.mean, **q)
        res.metric("tcav_score_random", t.null_mean, **q)
        res.metric("tcav_p_value", t.p, **q)
        if (c, ln) not in seen:  # the CAVs are the concept's at the layer, whatever the class
            seen.add((c, ln))
            acc, acc0 = cav_accuracy(t)
            res.metric("cav_accuracy", acc, concept=c, layer=ln)
            res.metric("cav_accuracy_random", acc0, concept=c, layer=ln)
            res.metric("cav_p_value", t.p_cav, concept=c, layer=ln)
            if not ev.cav_ok(t):
                res.finding("info", "bias.cav_near_chance",
                            f"Concept {c!r} is not tested by TCAV at layer {ln}: its CAVs tell held-out {c!r} "
                            f"examples from random images no better than CAVs between two random sets do "
                            f"(balanced accuracy {acc:.2f} against {acc0:.2f}, p = {fmt_p(t.p_cav)}), so the "
                            f"layer does not represent it linearly and its TCAV scores are noise. More or more "
                            f"distinct examples, or another layer ([checks.bias] layers), may separate it.",
                            concept=c, layer=ln, cav_accuracy=round(acc, 4), p_value=t.p_cav)
    for c in concepts:
        for k in classes:
            f = ev.flips[k, c] = flip_rates(preds[c], ctrl_pred, base_y, k)
            q = {"class": names[k], "concept": c}
            res.rate("flip_rate", f["flipped"], f["n"], **q)
            res.rate("flip_rate_control", f["control_flipped"], f["n"], **q)
            res.metric("flip_p_value", f["p"], **q)
    for r in layer_recs:
        for v in r.viz:
            ev.viz[v.cls, v.concept, r.layer] = (v.score, v.others, v.ref)
            res.metric("viz_concept_score", v.score, **{"class": names[v.cls], "concept": v.concept, "layer": r.layer})
    return ev


def dependence_findings(res: CheckResult, ev: Evidence, names: list[str], classes: list[int], concepts: list[str],
                        layers: list[str], o) -> None:
    """``bias.concept_dependence`` (severity ``o.severity``) for each class x concept with a
    significant and strong TCAV score at some layer (the most significant is reported) and a
    flip rate above the control by ``o.min_flip`` with McNemar p below the corrected alpha;
    when no layer could be hooked (``layers`` empty: TCAV did not run), on the flip test alone,
    the message naming that evidence. Fills ``ev.leans`` ((concept, layer, TCAV or None, flips))."""
    for k in classes:
        for c in concepts:
            rows = [(ln, ev.tcav[k, c, ln]) for ln in layers if (k, c, ln) in ev.tcav]
            strong = [(ln, t) for ln, t in rows if ev.significant(t) and t.mean >= o.min_score and t.mean > t.null_mean]
            f = ev.flips.get((k, c))
            flips = f is not None and f["flip"] - f["control"] >= o.min_flip and f["p"] < ev.alpha_flip
            if not layers and flips:  # TCAV could not run: the counterfactual evidence stands alone
                ev.leans.setdefault(k, []).append((c, None, None, f))
                res.finding(o.severity, "bias.concept_dependence",
                            f"Class {names[k]!r} depends on concept {c!r} by counterfactual evidence alone: pasting "
                            f"{c!r} onto {f['n']} images of other classes turns {f['flip']:.0%} of them into "
                            f"{names[k]!r} (random pastes: {f['control']:.0%}; McNemar p = {fmt_p(f['p'])}). TCAV, "
                            "the test inside the network, was not run (no layer could be hooked).",
                            class_=names[k], concept=c, layer=None, tcav_score=None, p_value=None,
                            flip_rate=round(f["flip"], 4))
                continue
            if not strong or not flips:
                continue
            ln, t = min(strong, key=lambda e: e[1].p)
            ev.leans.setdefault(k, []).append((c, ln, t, f))
            acc, acc0 = cav_accuracy(t)
            msg = (f"Class {names[k]!r} depends on concept {c!r}: TCAV score {t.mean:.2f} at layer {ln} "
                   f"(random-vs-random {t.null_mean:.2f}, p = {fmt_p(t.p)}, {len(t.scores)} runs; the CAVs "
                   f"tell held-out {c!r} examples from random ones at balanced accuracy {acc:.2f}, random "
                   f"CAVs {acc0:.2f}), and pasting {c!r} onto {f['n']} images of other classes "
                   f"turns {f['flip']:.0%} of them into {names[k]!r} (random pastes: {f['control']:.0%}; "
                   f"McNemar p = {fmt_p(f['p'])}).")
            vs = ev.viz.get((k, c, ln))
            if vs is not None:
                msg += (f" Its class visualization points along the {c!r} direction: cosine {vs[0]:.2f} "
                        f"(other classes' pictures {vs[1]:.2f} on average, the {c!r} examples themselves "
                        f"{vs[2]:.2f}).")
            res.finding(o.severity, "bias.concept_dependence", msg, class_=names[k], concept=c, layer=ln,
                        tcav_score=round(t.mean, 4), p_value=t.p, flip_rate=round(f["flip"], 4))
