"""Garbage-in confidence for the ``fooling`` check: how sure is the model on inputs that hold
no object at all? (Nguyen et al. 2015 show that classifiers give near-certain labels to
noise and simple patterns; Hendrycks & Gimpel 2017 use max-softmax as the baseline
out-of-distribution score.) Needs no data.

Input kinds (:data:`KINDS`): ``uniform_noise`` (every value uniform in the bounds),
``gaussian_noise`` (mid-gray plus N(0, 0.25) per value, clamped), ``black``, ``gray``,
``white`` (one constant image each), ``stripes`` (horizontal or vertical two-colour bars,
random period, phase and colours) and ``checkerboard`` (random cell size, phase, colours).

:func:`measure_garbage` scores them (one work unit of the check); the figures are in
:mod:`attacks.fooling.figures`.
"""
from __future__ import annotations

import torch

from audit.records import record

__all__ = ["KINDS", "GarbageKind", "garbage_inputs", "measure_garbage"]

KINDS = ("uniform_noise", "gaussian_noise", "black", "gray", "white", "stripes", "checkerboard")
_CONSTANT = {"black": 0.0, "gray": 0.5, "white": 1.0}


def _two_colours(n: int, c: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Half black-and-white pairs, half random colours."""
    a = torch.rand(n, c, 1, 1, generator=gen)
    b = torch.rand(n, c, 1, 1, generator=gen)
    bw = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float()
    return a * (1 - bw), b * (1 - bw) + bw


def garbage_inputs(kind: str, n: int, shape: tuple[int, int, int], gen: torch.Generator,
                   bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``n`` images of ``kind`` (1 for the constant kinds) in ``bounds``, (N, C, H, W) on CPU."""
    c, h, w = shape
    lo, hi = bounds
    if kind in _CONSTANT:
        x = torch.full((1, c, h, w), _CONSTANT[kind])
    elif kind == "uniform_noise":
        x = torch.rand(n, c, h, w, generator=gen)
    elif kind == "gaussian_noise":
        x = (0.5 + 0.25 * torch.randn(n, c, h, w, generator=gen)).clamp(0, 1)
    elif kind in ("stripes", "checkerboard"):
        yy = torch.arange(h).view(1, h, 1)
        xx = torch.arange(w).view(1, 1, w)
        top = max(2, min(h, w) // (2 if kind == "stripes" else 4))
        size = torch.randint(1, top + 1, (n, 1, 1), generator=gen)
        phase = torch.randint(0, 2 * top, (n, 1, 1), generator=gen)
        if kind == "stripes":
            vertical = torch.rand(n, 1, 1, generator=gen) < 0.5
            coord = torch.where(vertical, xx.expand(n, h, w), yy.expand(n, h, w))
            m = ((coord + phase) // size) % 2
        else:
            m = (((yy + phase) // size) + ((xx + phase) // size)) % 2
        a, b = _two_colours(n, c, gen)
        x = torch.where(m.unsqueeze(1).bool(), a, b).expand(n, c, h, w).clone()
    else:
        raise ValueError(f"unknown garbage input kind {kind!r} (known: {', '.join(KINDS)})")
    return lo + (hi - lo) * x


@record
class GarbageKind:
    """The model's answers on the inputs of one garbage ``kind``: ``conf`` (N,) float32
    max-softmax confidence, ``pred`` (N,) int64 predicted class, ``example`` (C, H, W)
    float32 the most confidently classified input (in the model's bounds)."""

    kind: str
    conf: torch.Tensor
    pred: torch.Tensor
    example: torch.Tensor


def measure_garbage(model, kinds: list[str], samples: int, gen: torch.Generator, *,
                    batch_size: int) -> list[GarbageKind]:
    """Score ``samples`` inputs of each of ``kinds`` (one for the constant kinds), drawn in
    that order from ``gen`` at the model's input shape and in its bounds. ``model`` is an
    AuditModel; raises ValueError for an unknown kind."""
    out = []
    for kind in kinds:
        x = garbage_inputs(kind, samples, tuple(model.spec.input_shape), gen, model.spec.bounds)
        conf, pred = model.logits(x, batch_size=batch_size).float().softmax(1).max(1)
        out.append(GarbageKind(kind, conf, pred, x[int(conf.argmax())].clone()))
    return out
