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
- **significance**: the score is computed once per run, each run drawing a fresh random
  counter-example set from a pool of random images (the paper draws its random sets from
  ImageNet); CAVs between two disjoint random sets give the null distribution; a
  two-sided t-test compares the two (the paper's test). A score means something only
  with its p-value.

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


def train_cav(pos: torch.Tensor, neg: torch.Tensor, *, alpha: float = 0.01, iters: int = 100) -> torch.Tensor:
    """Unit CAV: the weight direction of an L2-regularized logistic regression separating
    ``pos`` (label 1) from ``neg`` (label 0), fitted by L-BFGS on features divided by their
    overall RMS (a scalar, so the direction is that of the original space)."""
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
    v = w.detach().float()
    n = v.norm()
    return v / n if n > 0 else v


def tcav_score(grad_feats: torch.Tensor, cav: torch.Tensor) -> float:
    """Share of inputs whose directional derivative along ``cav`` is positive."""
    return float(((grad_feats @ cav) > 0).float().mean())


def ttest_p(a: list[float], b: list[float]) -> float:
    """Two-sided two-sample t-test p-value (Kim et al. 2018); 1.0 when undefined."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return 1.0
    if np.allclose(a, a[0]) and np.allclose(b, b[0]):
        return 0.0 if not math.isclose(a[0], b[0]) else 1.0
    with warnings.catch_warnings():  # near-identical runs: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(a, b).pvalue)
    return 1.0 if not math.isfinite(p) else p


def run_cavs(acts_concept: torch.Tensor, acts_pool: torch.Tensor, draws: list[torch.Tensor], *,
             alpha: float = 0.01) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One CAV per run: the concept against a random counter-example set drawn from the pool
    (``draw[:m]``, m = min(concept size, half the pool)). Returns (CAVs, the random sets' rows)."""
    m = min(len(acts_concept), len(acts_pool) // 2)
    sets = [d[:m] for d in draws]
    return [train_cav(acts_concept, acts_pool[s], alpha=alpha) for s in sets], sets


def null_cavs(acts_pool: torch.Tensor, draws: list[torch.Tensor], size: int, *, alpha: float = 0.01) -> list[torch.Tensor]:
    """Random-vs-random CAVs: per run, two disjoint random sets of ``size`` from the pool."""
    m = min(size, len(acts_pool) // 2)
    return [train_cav(acts_pool[d[m:2 * m]], acts_pool[d[:m]], alpha=alpha) for d in draws]


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
    random-vs-random ``null`` scores (shares in [0, 1]), the t-test ``p``, ``n`` images of
    the class, ``mean`` and ``std`` of the scores."""

    cls: int
    concept: str
    scores: list
    null: list
    p: float
    n: int
    mean: float
    std: float


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
               class_x: dict[int, torch.Tensor], space: str, cav_alpha: float, viz=None, bar=None) -> LayerTcav:
    """TCAV at ``layer`` (Kim et al. 2018): one CAV per run and concept against the run's
    random set from ``pool`` (``draws``), random-vs-random CAVs as the null, the TCAV scores
    of each class's images ``class_x`` (k -> (n, C, H, W) in [0, 1]) and their t-test; with
    ``viz`` (:class:`audit.published.ClassVizImages`), the class pictures' concept alignment."""
    acts_pool = activations(model, [layer], pool, space=space)[layer]
    acts_c = {c: activations(model, [layer], x, space=space)[layer] for c, x in concepts.items()}
    nulls = null_cavs(acts_pool, draws, max(len(x) for x in concepts.values()), alpha=cav_alpha)
    cavs, rsets = {}, {}
    for c in concepts:
        cavs[c], rsets[c] = run_cavs(acts_c[c], acts_pool, draws, alpha=cav_alpha)
    rows = []
    for k, x in (bar(class_x.items(), desc=f"TCAV {layer}", unit="class") if bar else class_x.items()):
        if len(x) == 0:
            continue
        grads = gradients(model, [layer], x, k, space=space)[layer]
        for c in concepts:
            s = [tcav_score(grads, v) for v in cavs[c]]
            s0 = [tcav_score(grads, v) for v in nulls]
            rows.append(TcavRow(k, c, s, s0, ttest_p(s, s0), len(x), sum(s) / len(s),
                                float(torch.tensor(s).std()) if len(s) > 1 else 0.0))
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
