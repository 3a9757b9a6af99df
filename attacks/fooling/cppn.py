"""Genome encodings for the black-box fooling search (Nguyen, Yosinski & Clune 2015).

Two encodings share one small interface (``random``, ``mutate``, ``render``, ``take``,
``put``) so that :func:`attacks.fooling.search.map_elites` treats them alike:

* :class:`DirectEncoding` -- the genome *is* the image: one gene per pixel and channel,
  initialized with uniform noise, as in the paper's direct encoding.
* :class:`CPPNEncoding` -- a compositional pattern-producing network (Stanley 2007): a small
  network of the pixel coordinates ``x``, ``y``, the distance ``r`` from the centre and a
  bias, whose units apply sine, Gaussian, sigmoid or linear functions. Evaluated at every
  pixel it paints the regular, symmetric, repeating patterns of the paper's figures.

The paper evolves CPPN topologies with NEAT (adding nodes and connections). Here a CPPN has
a fixed *maximal* topology -- ``layers`` hidden layers of ``width`` units, each layer fed by
the inputs and every earlier layer (dense skip connections, so functions compose) -- and
evolution switches connections on and off, changes a unit's function and perturbs weights.
That keeps a whole population one set of tensors, so rendering is a few batched matrix
products, and still lets the search grow and prune structure.

Every random draw uses the ``torch.Generator`` passed in (the check's seeded generator), so
the same seed gives the same images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: CPPN unit functions (Nguyen et al. 2015 use sine, sigmoid, Gaussian and linear units)
ACTIVATIONS = ("sin", "gauss", "sigmoid", "linear")


def _log_uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    u = torch.rand(n, generator=gen, device=device)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


# ----------------------------------------------------------------------------- direct encoding
class DirectEncoding:
    """One gene per pixel value, started from uniform noise. Mutation follows the paper's
    direct encoding (each gene mutated with probability ``rate``, here by a Gaussian step
    whose size is drawn log-uniformly per child) plus, in every child, one block move: a
    random rectangle (height and width each log-uniform from one pixel to the full side, so
    from dots to full-length lines) whose colour is shifted by one offset per channel. Block
    moves are the idea of Square Attack (Andriushchenko et al. 2020); on the tests' tiny model
    they took the direct search from 2-3 to 4 of 4 classes fooled at the same budget."""

    name = "evolution_direct"

    def __init__(self, shape: tuple[int, int, int], *, rate: float = 0.1, device=None) -> None:
        self.shape = tuple(shape)
        self.rate = rate
        self.device = torch.device(device or "cpu")

    def random(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(n, *self.shape, generator=gen, device=self.device)

    def mutate(self, parents: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = parents.shape
        dev = parents.device
        sigma = _log_uniform(n, 0.02, 0.5, gen, dev).view(n, 1, 1, 1)
        hit = torch.rand(parents.shape, generator=gen, device=dev) < self.rate
        noise = torch.randn(parents.shape, generator=gen, device=dev) * sigma
        child = parents + hit * noise
        # block moves: a random rectangle, its colour shifted by one offset per channel
        bh = _log_uniform(n, 1, h + 0.999, gen, dev).long().clamp(1, h)
        bw = _log_uniform(n, 1, w + 0.999, gen, dev).long().clamp(1, w)
        y0 = (torch.rand(n, generator=gen, device=dev) * (h - bh + 1)).long()
        x0 = (torch.rand(n, generator=gen, device=dev) * (w - bw + 1)).long()
        offset = torch.randn(n, c, 1, 1, generator=gen, device=dev) * 0.5
        yy = torch.arange(h, device=dev).view(1, h, 1)
        xx = torch.arange(w, device=dev).view(1, 1, w)
        box = ((yy >= y0.view(n, 1, 1)) & (yy < (y0 + bh).view(n, 1, 1))
               & (xx >= x0.view(n, 1, 1)) & (xx < (x0 + bw).view(n, 1, 1)))
        child = child + box.unsqueeze(1) * offset
        return child.clamp_(0, 1)

    def render(self, genomes: torch.Tensor) -> torch.Tensor:
        return genomes

    @staticmethod
    def take(genomes: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return genomes[idx]

    @staticmethod
    def put(genomes: torch.Tensor, idx: torch.Tensor, new: torch.Tensor) -> None:
        genomes[idx] = new


_REL = 0.3  # relative part of a weight mutation step



def _gauss(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-x * x) * 2 - 1


def _sigmoid_pm(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x) * 2 - 1


# ----------------------------------------------------------------------------- CPPN encoding
@dataclass
class CPPNGenomes:
    """A population of CPPNs as tensors with a leading population dimension: per layer the
    weights ``(P, fan_in, fan_out)``, the enabled-connection masks (same shape, bool) and, for
    hidden layers, each unit's function index ``(P, width)``. The last layer maps to the image
    channels through a sigmoid."""

    weights: list[torch.Tensor]
    masks: list[torch.Tensor]
    acts: list[torch.Tensor]

    def __len__(self) -> int:
        return self.weights[0].shape[0]


class CPPNEncoding:
    """Random compositional pattern-producing networks of (x, y, r, bias)."""

    name = "evolution_cppn"
    n_inputs = 4  # x, y, r, bias

    def __init__(self, shape: tuple[int, int, int], *, layers: int = 3, width: int = 8, rate: float = 0.1,
                 device=None, chunk_elems: int = 1 << 24) -> None:
        self.shape = tuple(shape)
        self.layers, self.width, self.rate = layers, width, rate
        self.device = torch.device(device or "cpu")
        self.chunk_elems = chunk_elems
        c, h, w = self.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        r = torch.sqrt(xs**2 + ys**2) / math.sqrt(2.0) * 2 - 1  # centre -1 .. corners +1
        self.max_freq = max(2.0, math.pi * min(h, w) / 4)
        self.coords = torch.stack([xs, ys, r, torch.ones_like(xs)], -1).reshape(h * w, 4).to(self.device)  # (pixels, 4)
        self.fan_in = [self.n_inputs + i * width for i in range(layers + 1)]
        self.fan_out = [width] * layers + [c]

    def random(self, n: int, gen: torch.Generator) -> CPPNGenomes:
        dev = self.device
        ws, ms, acts = [], [], []
        for i, (fi, fo) in enumerate(zip(self.fan_in, self.fan_out)):
            w = torch.randn(n, fi, fo, generator=gen, device=dev)
            if i == 0:  # coordinate weights: spatial frequencies from ~1 period up to ~4-pixel periods
                mag = _log_uniform(n * fi * fo, 1.0, self.max_freq, gen, dev).view(n, fi, fo)
                w = torch.sign(w) * mag
            else:
                w = w * (1.5 / math.sqrt(fi / 2))
            ws.append(w)
            ms.append(torch.rand(n, fi, fo, generator=gen, device=dev) < 0.6)
            if i < self.layers:
                acts.append(torch.randint(0, len(ACTIVATIONS), (n, fo), generator=gen, device=dev))
        return CPPNGenomes(ws, ms, acts)

    def mutate(self, parents: CPPNGenomes, gen: torch.Generator) -> CPPNGenomes:
        n = len(parents)
        dev = self.device
        sigma = _log_uniform(n, 0.05, 1.0, gen, dev).view(n, 1, 1)
        ws, ms, acts = [], [], []
        for wt, mk in zip(parents.weights, parents.masks):
            hit = torch.rand(wt.shape, generator=gen, device=dev) < max(self.rate * 2, 0.05)
            # steps relative to the weight's size, so high frequencies move as easily as low ones
            step = torch.randn(wt.shape, generator=gen, device=dev) * sigma * (1 + wt.abs() * _REL)
            ws.append(wt + hit * step)
            flip = torch.rand(mk.shape, generator=gen, device=dev) < self.rate * 0.2
            ms.append(mk ^ flip)
        for a in parents.acts:
            redraw = torch.rand(a.shape, generator=gen, device=dev) < self.rate * 0.5
            new = torch.randint(0, len(ACTIVATIONS), a.shape, generator=gen, device=dev)
            acts.append(torch.where(redraw, new, a))
        return CPPNGenomes(ws, ms, acts)

    def render(self, g: CPPNGenomes) -> torch.Tensor:
        """(P, C, H, W) images in [0, 1], rendered in population chunks to bound memory.

        Features are kept as (P, features, pixels) in one buffer that each layer appends its
        units to, and each unit's function is applied only to the units that use it."""
        c, h, w = self.shape
        n, npx, total = len(g), h * w, self.fan_in[-1]
        per = max(1, self.chunk_elems // (npx * total))
        out = []
        for s in range(0, n, per):
            sl = slice(s, min(n, s + per))
            p = sl.stop - sl.start
            feats = torch.empty(p, total, npx, device=self.device)
            feats[:, :self.n_inputs] = self.coords.t()
            for i in range(self.layers + 1):
                fi = self.fan_in[i]
                wt = (g.weights[i][sl] * g.masks[i][sl]).transpose(1, 2)  # (p, fan_out, fan_in)
                pre = torch.bmm(wt, feats[:, :fi])  # (p, fan_out, pixels)
                if i == self.layers:
                    out.append(torch.sigmoid(pre).view(p, c, h, w))
                    break
                flat = pre.view(-1, npx)
                acts = g.acts[i][sl].reshape(-1)
                for k, fn in ((0, torch.sin), (1, _gauss), (2, _sigmoid_pm)):  # 3 = linear: left as is
                    rows = (acts == k).nonzero().flatten()
                    if len(rows):
                        flat[rows] = fn(flat[rows])
                feats[:, fi:fi + self.width] = pre
        return torch.cat(out)

    @staticmethod
    def take(g: CPPNGenomes, idx: torch.Tensor) -> CPPNGenomes:
        return CPPNGenomes([t[idx] for t in g.weights], [t[idx] for t in g.masks], [t[idx] for t in g.acts])

    @staticmethod
    def put(g: CPPNGenomes, idx: torch.Tensor, new: CPPNGenomes) -> None:
        for dst, src in zip(g.weights + g.masks + g.acts, new.weights + new.masks + new.acts):
            dst[idx] = src
