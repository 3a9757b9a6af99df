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


def mcnemar_p(only_concept: int, only_control: int) -> float:
    """Exact two-sided McNemar test: of the images where exactly one of the two pastes flipped
    the prediction, is the concept's share different from one half?"""
    from scipy import stats

    n = only_concept + only_control
    return 1.0 if n == 0 else float(stats.binomtest(only_concept, n, 0.5).pvalue)


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


# --------------------------------------------------------------------- counterfactual pasting
def foreground_mask(img: torch.Tensor, *, lo: float = 0.12, hi: float = 0.25, border: int = 2) -> torch.Tensor:
    """Soft mask (N, 1, H, W) of what differs from each image's background, the background
    being a plane (per channel: a + b x + c y) fitted to the border pixels; specks thinner
    than 3 pixels are removed (a morphological opening) and the edge is softened. Suits
    concept examples shown on a plain or graded background."""
    n, c, h, w = img.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ring = torch.zeros(h, w, dtype=torch.bool)
    ring[:border], ring[-border:], ring[:, :border], ring[:, -border:] = True, True, True, True
    design = torch.stack([torch.ones(h, w), xx, yy], -1)           # (H, W, 3)
    pinv = torch.linalg.pinv(design[ring])                         # (3, B)
    coef = torch.einsum("kb,ncb->nck", pinv, img[:, :, ring])      # (N, C, 3)
    bg = torch.einsum("hwk,nck->nchw", design, coef)
    dist = (img - bg).abs().amax(1, keepdim=True)
    m = ((dist - lo) / (hi - lo)).clamp(0, 1)
    pool = torch.nn.functional.max_pool2d
    m = pool(-pool(-m, 3, stride=1, padding=1), 3, stride=1, padding=1)  # opening: erode, then dilate
    return torch.nn.functional.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)


def usable_exemplars(exemplars: torch.Tensor, *, min_area: float = 0.005, max_area: float = 0.4) -> torch.Tensor:
    """The exemplars whose foreground mask covers a sensible share of the image (a mask over
    most of the image means the background was not found; an empty one, nothing to paste).
    All of them when none qualifies."""
    area = foreground_mask(exemplars).mean((1, 2, 3))
    ok = (area >= min_area) & (area <= max_area)
    return exemplars[ok] if ok.any() else exemplars


def paste(base: torch.Tensor, exemplars: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random usable exemplar (by its :func:`foreground_mask`) onto each base image,
    at the same position. Returns (pasted images, the foreground masks used)."""
    ex = usable_exemplars(exemplars)
    ex = ex[torch.randint(0, len(ex), (len(base),), generator=generator)]
    m = foreground_mask(ex)
    return (base * (1 - m) + ex * m).clamp(0, 1), m
