"""The threat models of the ``adversarial`` check: the norms, their geometry in pixel space and
the ε grids.

Every perturbation lives in the model's [0, 1] pixel space (normalization is inside the
model): a perturbation ``d`` of a batch ``x`` is an (N, C, H, W) float tensor with ``x + d``
in [0, 1]; its size is measured per sample in the L∞ or the L2 norm, and ε is in that scale
(L∞ 8/255 = 0.0314). Nothing here depends on the rest of the check.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

from audit.errors import ConfigError

__all__ = ["Norm", "NORMS", "NORM_LABEL", "default_epsilons", "max_epsilon", "epsilon_grid", "fmt_eps",
           "norm_of", "dual_norm_of", "per_sample", "project", "in_bounds", "steepest", "random_in_ball",
           "random_on_sphere"]

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
NORM_LABEL = {"linf": "L∞", "l2": "L2"}
LINF_DEFAULT = (0.5, 1, 2, 4, 8, 12, 16)  # in 1/255


# ----------------------------------------------------------------------------- ε grids
def default_epsilons(norm: str, input_shape: Sequence[int]) -> list[float]:
    """The default ε grid of ``norm`` for inputs of shape (C, H, W). L∞: 0.5/255 … 16/255.
    L2: the same grid scaled by √(C·H·W)·0.2875 (CIFAR's common pair L∞ 8/255 ↔ L2 0.5 at
    3×32×32), rounded to 3 significant digits."""
    linf = [v / 255 for v in LINF_DEFAULT]
    if norm == "linf":
        return linf
    dim = math.prod(input_shape)
    return [float(f"{v * math.sqrt(dim) * 0.2875:.3g}") for v in linf]


def max_epsilon(norm: str, input_shape: Sequence[int]) -> float:
    """The ε that covers the whole input range for inputs of shape (C, H, W): any image in
    [0, 1] is within it of any other (L∞: 1; L2: √(C·H·W))."""
    return 1.0 if norm == "linf" else math.sqrt(math.prod(input_shape))


def epsilon_grid(norm: str, given: Sequence[float] | None, input_shape: Sequence[int]) -> list[float]:
    """The sorted ε grid of ``norm``: ``given`` (the ``epsilons`` option), or the default.
    Raises :class:`~audit.errors.ConfigError` when an ε is beyond :func:`max_epsilon` (only
    known once the input shape is)."""
    eps = sorted(float(e) for e in (given if given else default_epsilons(norm, input_shape)))
    top = max_epsilon(norm, input_shape)
    if eps[-1] > top:
        raise ConfigError(f"[checks.adversarial] epsilons.{norm}: {eps[-1]} is beyond the input range "
                          f"(the largest meaningful {norm} ε for {'x'.join(map(str, input_shape))} is {top:.4g})")
    return eps


def fmt_eps(e: float, norm: str) -> str:
    """ε for a caption: L∞ in 1/255 (``"8/255"``, ``"4.96/255"``), L2 to 3 digits."""
    if norm == "linf":
        v = e * 255
        return f"{v:g}/255" if abs(v - round(v * 2) / 2) < 1e-6 else f"{v:.2f}/255"
    return f"{e:.3g}"


# ----------------------------------------------------------------------------- geometry
def norm_of(d: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm (N,) of a batch of perturbations (N, ...)."""
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def dual_norm_of(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample dual norm (N,) of a batch of gradients: L1 for L∞, L2 for L2."""
    flat = g.flatten(1)
    return flat.abs().sum(1) if norm == "linf" else flat.norm(dim=1)


def per_sample(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or an (N,) tensor shaped (N, 1, 1, ...) to broadcast over ``like``'s samples."""
    if not isinstance(v, torch.Tensor):
        v = torch.full((like.shape[0],), float(v), device=like.device)
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def project(d: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Each perturbation of ``d`` projected onto its ε-ball (``eps`` a scalar or (N,))."""
    e = per_sample(eps, d)
    if norm == "linf":
        return torch.maximum(torch.minimum(d, e), -e)
    n = per_sample(norm_of(d, "l2"), d)
    return d * torch.where(n > e, e / n.clamp_min(1e-12), torch.ones_like(n))


def in_bounds(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The perturbation that keeps ``x + d`` inside [0, 1]."""
    return (x + d).clamp(0, 1) - x


def steepest(g: torch.Tensor, norm: str) -> torch.Tensor:
    """Unit steepest-ascent direction of a gradient under the norm (its sign for L∞)."""
    if norm == "linf":
        return g.sign()
    return g / per_sample(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)


def random_in_ball(like: torch.Tensor, eps: torch.Tensor | float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """Uniform random points inside the ε-balls, shaped and placed like ``like`` (drawn from
    the CPU generator ``gen``)."""
    e = per_sample(eps, like).cpu()
    if norm == "linf":
        r = (torch.rand(like.shape, generator=gen) * 2 - 1) * e
    else:
        u = torch.randn(like.shape, generator=gen)
        u = u / per_sample(u.flatten(1).norm(dim=1).clamp_min(1e-12), u)
        dim = like[0].numel()
        rad = torch.rand(like.shape[0], generator=gen) ** (1.0 / dim)
        r = u * per_sample(rad, u) * e
    return r.to(like.device, like.dtype)


def random_on_sphere(like: torch.Tensor, eps: torch.Tensor | float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """Random perturbations of norm exactly ε: ±ε signs (L∞) or a random direction (L2)."""
    e = per_sample(eps, like).cpu()
    if norm == "linf":
        r = (torch.randint(0, 2, like.shape, generator=gen).float() * 2 - 1) * e
    else:
        u = torch.randn(like.shape, generator=gen)
        r = u / per_sample(u.flatten(1).norm(dim=1).clamp_min(1e-12), u) * e
    return r.to(like.device, like.dtype)
