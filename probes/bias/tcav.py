"""Concept activation vectors and TCAV scores (Kim et al. 2018, "Interpretability Beyond
Feature Attribution: Quantitative Testing with Concept Activation Vectors", ICML).

Our own implementation of the paper's procedure (captum's ``captum.concept.TCAV`` needs
scikit-learn for its default classifier, which is not a dependency here, caches every
activation and CAV on disk, and by default attributes with layer integrated gradients
rather than the plain gradient of the paper):

- a **CAV** for concept C at layer l is the unit normal of a linear classifier (L2-regularized
  logistic regression, like the paper's ``SGDClassifier(alpha=0.01)``) that separates the
  layer activations of C's examples from those of a random counter-example set, pointing
  towards C;
- the **conceptual sensitivity** of an input x of class k is the directional derivative
  ``S = grad_{f_l(x)} h_k(f_l(x)) . v`` of the class logit along the CAV;
- the **TCAV score** is the share of class-k inputs with ``S > 0``;
- **CAV quality**: each run's CAV is fitted on two thirds of each side and scored on the held-out
  third (balanced accuracy); a CAV that separates the concept from random images no better than
  random-vs-random CAVs separate two random sets means the layer does not represent the concept,
  and its TCAV score is noise (the paper's "CAVs near chance are not used");
- **significance**: the score is computed once per run, each run drawing a fresh random
  counter-example set from a pool of random images (the paper draws its random sets from
  ImageNet); CAVs between two disjoint random sets, fitted and held out identically, give the
  null distribution. Two Welch tests (unequal variances) over the runs: ``p_cav``, the held-out
  accuracy above the null's (one-sided), and ``p``, the TCAV scores different from the null's
  (two-sided, the paper's question). A row is significant only when both are: ``p_cav`` below
  alpha (the CAV is real: a precondition per concept and layer) and ``p`` below the
  (Bonferroni-corrected) level. The score test alone is not calibrated: a fixed positive set
  gives consistent CAVs whatever it holds (its own mean is a direction), so its runs vary far
  less than the null's, and random pseudo-concepts pass it far more often than alpha; with the
  CAV condition they pass in at most ~alpha of the tests (tests/probes/test_bias.py).

``space="pooled"`` (the default of the ``bias`` check) averages activations over spatial
positions before training the CAV, and sums the gradient over positions to match, so a
concept is found wherever it appears in the image; ``space="flatten"`` is the paper's exact
setting (the full C*H*W activation).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from audit.records import record
from probes.layers import capture


def features(act: torch.Tensor, space: str) -> torch.Tensor:
    """Activation (N, C, H, W) -> CAV feature space (N, D)."""
    if act.ndim == 4 and space == "pooled":
        return act.mean((2, 3))
    return act.reshape(act.shape[0], -1)


def grad_features(grad: torch.Tensor, space: str) -> torch.Tensor:
    """Gradient w.r.t. the activation in the same space as :func:`features`: the directional
    derivative along a pooled CAV v (added at every position) is ``sum_hw grad . v``."""
    if grad.ndim == 4 and space == "pooled":
        return grad.sum((2, 3))
    return grad.reshape(grad.shape[0], -1)


@torch.no_grad()
def activations(model, layers: list[str], x: torch.Tensor, *, space: str, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per layer, the CAV-space activations (N, D) of ``x`` (CPU float, in [0, 1])."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    with capture(model.net, layers) as store:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(model.device))
            for n in layers:
                out[n].append(features(store[n].float(), space).cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def gradients(model, layers: list[str], x: torch.Tensor, target: int, *, space: str,
              batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per layer, d logit_target / d activation for each input, in CAV space (N, D)."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    with capture(model.net, layers) as store:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(model.device).requires_grad_(True)  # frozen weights still need a graph
            logits = model(xb)
            acts = [store[n] for n in layers]
            grads = torch.autograd.grad(logits[:, target].sum(), acts)
            for n, g in zip(layers, grads):
                out[n].append(grad_features(g.float(), space).cpu())
    return {n: torch.cat(v) for n, v in out.items()}


def _logistic(pos: torch.Tensor, neg: torch.Tensor, alpha: float, iters: int):
    """L2-regularized logistic regression (``pos`` label 1) fitted by L-BFGS on features
    centred and divided by their overall RMS (a scalar, so the weight direction is that of the
    original space). Returns ``(w, b, mu, s)``: the decision is ``((x - mu) / s) @ w + b > 0``."""
    x = torch.cat([pos, neg]).double()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    mu = x.mean(0)
    s = (x - mu).pow(2).mean().sqrt().clamp_min(1e-12)
    z = (x - mu) / s
    w = torch.zeros(z.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros((), dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + 0.5 * alpha * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach(), mu, s


def _unit(w: torch.Tensor) -> torch.Tensor:
    v = w.float()
    n = v.norm()
    return v / n if n > 0 else v


def train_cav(pos: torch.Tensor, neg: torch.Tensor, *, alpha: float = 0.01, iters: int = 100) -> torch.Tensor:
    """Unit CAV (D,) float32: the weight direction of an L2-regularized logistic regression
    separating ``pos`` (N1, D) (label 1) from ``neg`` (N0, D) (label 0)."""
    return _unit(_logistic(pos, neg, alpha, iters)[0])


def holdout_split(order: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out rows, training rows) of a set of ``n``, from ``order`` (a permutation of at
    least ``n`` indices): the first third of ``order``'s entries below ``n`` is held out
    (none when ``n`` < 3)."""
    o = order[order < n]
    k = n // 3
    return o[:k], o[k:]


def fit_cav(pos: torch.Tensor, neg: torch.Tensor, order: torch.Tensor, *, alpha: float = 0.01,
            iters: int = 100) -> tuple[torch.Tensor, float]:
    """A CAV fitted on two thirds of ``pos`` and of ``neg`` (:func:`holdout_split` by ``order``)
    and its balanced accuracy in [0, 1] on the held-out third (the mean of the two sides'
    accuracies; NaN when a side has fewer than 3 examples, the CAV then fitted on everything)."""
    hp, tp = holdout_split(order, len(pos))
    hn, tn = holdout_split(order, len(neg))
    if len(hp) == 0 or len(hn) == 0:
        return train_cav(pos, neg, alpha=alpha, iters=iters), float("nan")
    w, b, mu, s = _logistic(pos[tp], neg[tn], alpha, iters)

    def says_pos(x):
        return ((x.double() - mu) / s @ w + b) > 0

    acc = 0.5 * (float(says_pos(pos[hp]).double().mean()) + float((~says_pos(neg[hn])).double().mean()))
    return _unit(w), acc


def tcav_score(grad_feats: torch.Tensor, cav: torch.Tensor) -> float:
    """Share of inputs whose directional derivative along ``cav`` is positive."""
    return float(((grad_feats @ cav) > 0).float().mean())


def welch_p(a: list[float], b: list[float], alternative: str = "two-sided") -> float:
    """Welch's two-sample t-test p-value (unequal variances; ``alternative`` "two-sided" or
    "greater": mean of ``a`` above ``b``'s). NaN values are dropped; 1.0 when a side has fewer
    than 2 values; two constant samples give 0 (or 1) when their values differ in the tested
    direction (or not)."""
    from scipy import stats

    a = [v for v in a if math.isfinite(v)]
    b = [v for v in b if math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return 1.0
    if np.allclose(a, a[0]) and np.allclose(b, b[0]):
        differ = a[0] > b[0] + 1e-12 if alternative == "greater" else not math.isclose(a[0], b[0])
        return 0.0 if differ else 1.0
    with warnings.catch_warnings():  # near-identical runs: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)
    return 1.0 if not math.isfinite(p) else p


def run_cavs(acts_concept: torch.Tensor, acts_pool: torch.Tensor, draws: list[torch.Tensor],
             splits: list[torch.Tensor], *, alpha: float = 0.01
             ) -> tuple[list[torch.Tensor], list[float], list[torch.Tensor]]:
    """One CAV per run: the concept against a random counter-example set drawn from the pool
    (``draw[:m]``, m = min(concept size, half the pool)), held out by the run's ``split``.
    Returns (CAVs, held-out accuracies, the random sets' rows)."""
    m = min(len(acts_concept), len(acts_pool) // 2)
    sets = [d[:m] for d in draws]
    fits = [fit_cav(acts_concept, acts_pool[r], sp, alpha=alpha) for r, sp in zip(sets, splits)]
    return [f[0] for f in fits], [f[1] for f in fits], sets


def null_cavs(acts_pool: torch.Tensor, draws: list[torch.Tensor], splits: list[torch.Tensor], size: int, *,
              alpha: float = 0.01) -> tuple[list[torch.Tensor], list[float]]:
    """Random-vs-random CAVs fitted exactly like :func:`run_cavs`'s: per run, a random set of
    the concept's ``size`` (``draw[m:2m]``) against the run's counter-example set
    (``draw[:m]``), held out by the run's ``split``. Returns (CAVs, held-out accuracies)."""
    m = min(size, len(acts_pool) // 2)
    fits = [fit_cav(acts_pool[d[m:2 * m]], acts_pool[d[:m]], sp, alpha=alpha) for d, sp in zip(draws, splits)]
    return [f[0] for f in fits], [f[1] for f in fits]


def concept_alignment(acts: torch.Tensor, cavs: list[torch.Tensor], random_acts: list[torch.Tensor]) -> torch.Tensor:
    """Cosine between each activation (N, D), taken relative to the mean of the run's random
    counter-examples, and the run's CAV; averaged over the runs (N,). Scale-free, so it
    compares an optimized picture (whose activations may be far larger than a photo's) with
    real examples: 0 = no more along the concept than the random images, 1 = exactly along it."""
    out = []
    for v, r in zip(cavs, random_acts):
        rel = acts - r.mean(0)
        out.append(torch.nn.functional.cosine_similarity(rel, v.view(1, -1).expand_as(rel), dim=1))
    return torch.stack(out).mean(0)


# --------------------------------------------------------------------- one layer's TCAV (a work unit)
@record
class TcavRow:
    """TCAV of class ``cls`` for ``concept`` at one layer: per run the ``scores`` and the
    random-vs-random ``null`` scores (shares in [0, 1]) and the CAVs' held-out balanced
    accuracies ``acc`` and ``null_acc``; ``p`` (two-sided Welch: ``scores`` against ``null``)
    and ``p_cav`` (one-sided Welch: ``acc`` above ``null_acc``; the same for every class);
    ``n`` images of the class, ``mean`` and ``std`` of the scores."""

    cls: int
    concept: str
    scores: list
    null: list
    p: float
    n: int
    mean: float
    std: float
    acc: list
    null_acc: list
    p_cav: float

    @property
    def null_mean(self) -> float:
        return _mean(self.null)


def _mean(v: list[float]) -> float:
    f = [a for a in v if math.isfinite(a)]
    return sum(f) / len(f) if f else float("nan")


def cav_accuracy(row: TcavRow) -> tuple[float, float]:
    """(the concept's, the random-vs-random) mean held-out CAV accuracy of ``row``'s runs."""
    return _mean(row.acc), _mean(row.null_acc)


@record
class VizRow:
    """How far class ``cls``'s class visualization points along ``concept``'s CAVs at one
    layer: ``score`` (cosine, mean over runs and pictures), ``others`` the other classes'
    pictures' mean (NaN when none), ``ref`` the concept's own examples'."""

    cls: int
    concept: str
    score: float
    others: float
    ref: float


@record
class LayerTcav:
    """Everything TCAV computed at ``layer``: ``rows`` (:class:`TcavRow`, class-major, then
    concept) and ``viz`` (:class:`VizRow`, concept-major, then class; empty without
    ``class_viz.images``)."""

    layer: str
    rows: list
    viz: list


def layer_tcav(model, layer: str, *, concepts: dict[str, torch.Tensor], pool: torch.Tensor, draws: list[torch.Tensor],
               splits: list[torch.Tensor], class_x: dict[int, torch.Tensor], space: str, cav_alpha: float, viz=None,
               bar=None) -> LayerTcav:
    """TCAV at ``layer`` (Kim et al. 2018): one CAV per run and concept against the run's
    random set from ``pool`` (``draws``), held out by the run's ``splits``; random-vs-random
    CAVs of the concept's size as the null; the TCAV scores of each class's images ``class_x``
    (k -> (n, C, H, W) in [0, 1]) and their tests (:class:`TcavRow`); with ``viz``
    (:class:`audit.published.ClassVizImages`), the class pictures' concept alignment."""
    acts_pool = activations(model, [layer], pool, space=space)[layer]
    acts_c = {c: activations(model, [layer], x, space=space)[layer] for c, x in concepts.items()}
    sizes = {c: min(len(a), len(acts_pool) // 2) for c, a in acts_c.items()}
    nulls = {m: null_cavs(acts_pool, draws, splits, m, alpha=cav_alpha) for m in sorted(set(sizes.values()))}
    cavs, accs, rsets = {}, {}, {}
    for c in concepts:
        cavs[c], accs[c], rsets[c] = run_cavs(acts_c[c], acts_pool, draws, splits, alpha=cav_alpha)
    p_cav = {c: welch_p(accs[c], nulls[sizes[c]][1], "greater") for c in concepts}
    rows = []
    for k, x in (bar(class_x.items(), desc=f"TCAV {layer}", unit="class") if bar else class_x.items()):
        if len(x) == 0:
            continue
        grads = gradients(model, [layer], x, k, space=space)[layer]
        for c in concepts:
            null_v, null_acc = nulls[sizes[c]]
            s = [tcav_score(grads, v) for v in cavs[c]]
            s0 = [tcav_score(grads, v) for v in null_v]
            rows.append(TcavRow(k, c, s, s0, welch_p(s, s0), len(x), sum(s) / len(s),
                                float(torch.tensor(s).std()) if len(s) > 1 else 0.0, accs[c], null_acc, p_cav[c]))
    out = LayerTcav(layer, rows, [])
    if viz is not None:
        vx, vcls = viz.images.float(), torch.as_tensor(viz.classes)
        acts_v = activations(model, [layer], vx, space=space)[layer]
        for c in concepts:
            rs = [acts_pool[r] for r in rsets[c]]
            proj = concept_alignment(acts_v, cavs[c], rs)
            ref = float(concept_alignment(acts_c[c], cavs[c], rs).mean())
            per = {int(k): float(proj[vcls == k].mean()) for k in vcls.unique()}
            for k, v in per.items():
                others = [w for j, w in per.items() if j != k]
                out.viz.append(VizRow(k, c, v, sum(others) / len(others) if others else float("nan"), ref))
    return out
