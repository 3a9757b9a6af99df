"""Can an attribution map be trusted? The two quality tests of the ``attribution`` check.

* **Model-parameter randomization** (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"):
  the parameters of a copy of the model are re-drawn at random layer by layer, cascading from
  the top (logits) down to the input; after each step the method's maps are recomputed and
  compared with the trained model's maps by the Spearman rank correlation of their absolute
  values. A method that explains the *model* must change when the model is destroyed; one
  whose maps barely change (high correlation) shows the input, not what the model learnt.
* **Deletion and insertion** (Petsiuk et al. 2018, "RISE"): pixels are removed from the image
  (set to the lower bound, black) - or inserted into a blurred copy - in the order of the
  map, most important first, and the probability of the explained class is tracked. The area
  under the deletion curve should be low, under the insertion curve high, and both better
  than for a random order of the pixels.

Maps are (N, H, W) float tensors, images (N, C, H, W) in the model's bounds ([0, 1]).
"""
from __future__ import annotations


import torch
import torch.nn as nn

from probes.layers import deep_copy
import torch.nn.functional as F


# ----------------------------------------------------------------------------- rank correlation
def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor, ties getting their average rank (as scipy's rankdata - 1)."""
    sv, idx = torch.sort(v, stable=True)
    _, inverse, counts = torch.unique_consecutive(sv, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() + 1) / 2  # start + (count - 1) / 2
    ranks = torch.empty_like(avg[inverse])
    ranks[idx] = avg[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (flattened). A constant map carries no ranking:
    the correlation is then 0."""
    ra, rb = average_ranks(a.flatten().double().cpu()), average_ranks(b.flatten().double().cpu())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return 0.0 if den == 0.0 else float((ra * rb).sum()) / den


# ----------------------------------------------------------------------------- randomization
def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Parameter groups in registration order (input side first): one group per module
    holding parameters; a module with only 1-D parameters (a normalization layer, a
    bias-only module) joins the group before it. Returns (layer name, parameter names)."""
    raw: list[tuple[str, list[str], bool]] = []
    for name, p in model.named_parameters():
        prefix = name.rpartition(".")[0]
        if raw and raw[-1][0] == prefix:
            raw[-1][1].append(name)
            raw[-1] = (prefix, raw[-1][1], raw[-1][2] and p.ndim <= 1)
        else:
            raw.append((prefix, [name], p.ndim <= 1))
    groups: list[tuple[str, list[str]]] = []
    for prefix, names, only_1d in raw:
        if only_1d and groups:
            groups[-1][1].extend(names)
        else:
            groups.append((prefix, list(names)))
    return groups


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


@torch.no_grad()
def randomize_(model: nn.Module, names: list[str], g: torch.Generator) -> None:
    """Re-draw the named parameters in place: weights (2-D and more) from N(0, s^2) with s
    the trained tensor's std (the scale of a fresh initialization), 1-D parameters (biases,
    norm scales) from N(m, s^2) with their own mean and std."""
    ps = _params(model)
    for n in names:
        p = ps[n]
        t = p.detach().float()
        s = float(t.std()) if t.numel() > 1 else 0.0
        if t.numel() > 1 and s == 0.0:
            s = float(t.abs().mean()) or 0.01
        noise = torch.randn(p.shape, generator=g).to(p.device, torch.float32)
        m = 0.0 if p.ndim >= 2 else float(t.mean())
        p.copy_((noise * s + m).to(p.dtype))


def kept_steps(steps: int, most: int) -> list[int]:
    """The cascade steps (0 = the top group randomized, ``steps - 1`` = all) at which maps are
    computed: at most ``most`` (0: all), evenly spread, always the first and the last."""
    if most <= 0 or steps <= most:
        return list(range(steps))
    if most == 1:
        return [0]
    return sorted({round(i * (steps - 1) / (most - 1)) for i in range(most)})


def cascade_step(model: nn.Module, seed: int, step: int) -> tuple[str, nn.Module]:
    """``(layer, model)`` after ``step + 1`` steps of :func:`cascade` seeded with ``seed``:
    the cascade replayed from its seed (re-drawing weights is cheap next to the maps), so
    any process computes exactly the sequential cascade's model. IndexError past the end."""
    for k, (layer, net) in enumerate(cascade(model, torch.Generator().manual_seed(seed))):
        if k == step:
            return layer, net
    raise IndexError(f"cascade step {step} out of range")


def cascade(model: nn.Module, g: torch.Generator):
    """Yield ``(layer name, model)`` for the cascading randomization: a deep copy of
    ``model`` whose groups (see :func:`layer_groups`) are randomized one more at a time from
    the top (last group) down. The same copy is yielded each time, more randomized."""
    net = deep_copy(model)
    for layer, names in reversed(layer_groups(net)):
        randomize_(net, names, g)
        yield layer, net


# ----------------------------------------------------------------------------- deletion / insertion
def blur(x: torch.Tensor) -> torch.Tensor:
    """A strong blur: two box filters about an eighth of the image side wide (RISE's insertion start)."""
    k = max(3, (min(x.shape[-2:]) // 8) | 1)
    for _ in range(2):
        x = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
    return x


@torch.no_grad()
def deletion_insertion(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor, *,
                       steps: int = 16, low: float = 0.0, batch_size: int = 128,
                       baseline: str = "blur") -> tuple[torch.Tensor, torch.Tensor]:
    """Probability of ``target`` as pixels are deleted or inserted into a blurred copy, most
    attributed first (signed maps: most positive evidence first). A deleted pixel takes the
    ``baseline``'s value: ``"blur"`` (the blurred image, in distribution: Petsiuk et al. 2018's
    insertion start), ``"mean"`` (the image's mean colour) or ``"black"`` (``low``, off the
    data distribution). Returns (deletion, insertion) curves, each (N, steps + 1), at fractions
    0, 1/steps, ..., 1."""
    n, _, h, w = x.shape
    order = torch.argsort(maps.reshape(n, -1).to(x.device), dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(n, -1))
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    base = blur(x)
    gone = {"blur": base, "mean": x.mean((2, 3), keepdim=True).expand_as(x),
            "black": torch.full_like(x, low)}[baseline]
    curves = []
    for kind in ("deletion", "insertion"):
        probs = torch.empty(n, steps + 1)
        imgs, where = [], []
        for k, c in enumerate(counts):
            m = (rank < c).float().view(n, 1, h, w)
            imgs.append(x * (1 - m) + gone * m if kind == "deletion" else base * (1 - m) + x * m)
            where.append(k)
        allx = torch.stack(imgs, 1).reshape(n * (steps + 1), *x.shape[1:])
        tt = target.to(x.device).repeat_interleave(steps + 1)
        out = []
        for i in range(0, len(allx), batch_size):
            p = model(allx[i:i + batch_size]).float().softmax(1)
            out.append(p.gather(1, tt[i:i + batch_size, None])[:, 0].cpu())
        probs[:] = torch.cat(out).view(n, steps + 1)
        curves.append(probs)
    return curves[0], curves[1]


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each curve sampled at equal steps over [0, 1] (trapezoidal rule), (N,)."""
    s = curves.shape[1] - 1
    return (curves.sum(1) - (curves[:, 0] + curves[:, -1]) / 2) / s
