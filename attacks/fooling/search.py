"""The two searches of the ``fooling`` check (Nguyen, Yosinski & Clune 2015, "Deep Neural
Networks are Easily Fooled: High Confidence Predictions for Unrecognizable Images").

* :func:`gradient_ascent` -- white-box: from uniform noise, Adam ascent on the target class's
  log-softmax, with L2 decay toward mid-gray, optional periodic Gaussian blur, clamped to the
  model's bounds, all target classes optimized in one batch (Simonyan et al. 2014; the paper's
  Section 3.5 and Yosinski et al. 2015 regularization).
* :func:`map_elites` -- black-box (outputs only): MAP-Elites (Mouret & Clune 2015) whose cells
  are the target classes, over either genome encoding of :mod:`attacks.fooling.cppn`.

Both return a :class:`SearchResult`: per target class the best image, its confidence for the
target and its predicted class, and the first step (or query count) at which the target's
confidence reached each threshold. Confidence is the softmax over *all* classes of the model.
"""
from __future__ import annotations

from dataclasses import field
from typing import Callable

import torch
import torch.nn.functional as F

from audit.fastpath import sync_every
from audit.records import record

#: the confidence levels whose first step / query is recorded per class
LEVELS = (0.99, 0.999, 0.9999)


@record
class SearchResult:
    """Per target class (in the order of ``targets``, class indices): ``images`` (T, C, H, W)
    float32 on the CPU, the best image (in the model's bounds once the caller mapped it),
    ``best`` its confidence for the target (softmax in [0, 1]), ``pred`` the predicted class
    (index) of that image and ``pred_conf`` its confidence, and ``first`` -- per level
    (default :data:`LEVELS`) the step or query count at which the target first reached it
    (None if never). ``used`` is the steps run (gradient) or images queried (evolution)."""

    targets: list[int]
    images: torch.Tensor
    best: list[float]
    pred: list[int]
    pred_conf: list[float]
    first: dict[float, list[int | None]]
    used: int
    notes: list[str] = field(default_factory=list)

    @classmethod
    def concat(cls, parts: list["SearchResult"]) -> "SearchResult":
        """One result from searches over consecutive groups of targets (work units)."""
        if len(parts) == 1:
            return parts[0]
        return cls(targets=[t for p in parts for t in p.targets], images=torch.cat([p.images for p in parts]),
                   best=[b for p in parts for b in p.best], pred=[q for p in parts for q in p.pred],
                   pred_conf=[c for p in parts for c in p.pred_conf],
                   first={lv: [f for p in parts for f in p.first[lv]] for lv in parts[0].first},
                   used=max(p.used for p in parts), notes=[n for p in parts for n in p.notes])


#: ``log_odds`` builds the (rows, targets, classes) tensor of the textbook form up to this many
#: elements (bit-identical to earlier releases); beyond, :func:`_others_logsumexp` in O(rows x classes)
DENSE_LIMIT = 2**22


def log_odds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log(p_t / (1 - p_t))`` for each row and each target column: (N, T) float32 from
    ``logits`` (N, K) and ``targets`` (T,) class indices. Unlike the log-probability it does
    not saturate at 0 as ``p_t`` nears 1 in float32, so a search can still tell 0.99999 from
    0.9999. Time and memory O(N x (K + T)) once N x T x K exceeds :data:`DENSE_LIMIT` (a
    model with thousands of classes), O(N x T x K) below."""
    z = logits.float()
    n, k = z.shape
    zt = z[:, targets]  # (N, T)
    if k == 1:
        return zt
    if n * len(targets) * k > DENSE_LIMIT:
        return zt - _others_logsumexp(z, targets)
    others = z.unsqueeze(1).expand(n, len(targets), k).clone()
    others[:, torch.arange(len(targets)), targets] = float("-inf")
    return zt - others.logsumexp(-1)


def row_log_odds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:func:`log_odds` of one target per row: (N,) from ``logits`` (N, K) and ``targets``
    (N,), in O(N x K) (the diagonal of ``log_odds(logits, targets)``, the same numbers)."""
    z = logits.float()
    if z.shape[1] == 1:
        return z[:, 0]
    rows = torch.arange(len(z), device=z.device)
    others = z.clone()
    others[rows, targets] = float("-inf")
    return z[rows, targets] - others.logsumexp(-1)


def _others_logsumexp(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of each row of ``z`` (N, K) over every class but each target: (N, T).
    With ``m`` the row's maximum and ``s = sum exp(z - m)``: a target that is not the row's
    argmax leaves the argmax's term 1 in the sum, so ``s - exp(z_t - m) >= s / 2`` loses no
    precision to cancellation; for the argmax itself the sum is taken with it masked out."""
    m, arg = z.max(1, keepdim=True)
    e = (z - m).exp()
    rest = m + (e.sum(1, keepdim=True) - e[:, targets]).log()
    masked = z.scatter(1, arg, float("-inf")).logsumexp(1, keepdim=True)
    return torch.where(arg == targets.view(1, -1), masked, rest)


def _record_first(first: dict[float, list[int | None]], conf: torch.Tensor, at: int) -> None:
    """Set ``first[level][i] = at`` where ``conf[i]`` reached ``level`` first (map_elites)."""
    for lv in first:
        row = first[lv]
        for i in (conf >= lv).nonzero().flatten().tolist():
            if row[i] is None:
                row[i] = at


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur with reflect padding (radius 2 sigma, at least 1)."""
    r = max(1, int(round(2 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    pad = min(r, x.shape[2] - 1, x.shape[3] - 1)
    if pad < r:
        return x
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gradient_ascent(model: Callable[[torch.Tensor], torch.Tensor], targets: list[int], shape: tuple[int, int, int], *,
                    steps: int, lr: float, l2_decay: float, blur_every: int, blur_sigma: float,
                    bounds: tuple[float, float], batch_size: int, gen: torch.Generator, device: torch.device,
                    early_stop: bool = True, levels: tuple[float, ...] = LEVELS, progress=None,
                    path: Callable[[torch.Tensor], torch.Tensor] | None = None) -> SearchResult:
    """Adam ascent (Kingma & Ba 2015, per pixel value) on ``log softmax(model(x))[target]``
    from uniform noise, one image per target class, ``batch_size`` classes at a time. After
    every step: decay toward the middle of ``bounds`` by ``l2_decay`` (Yosinski et al. 2015),
    blur every ``blur_every`` steps (0: never), clamp to ``bounds``. With ``early_stop`` an
    image leaves the batch once it is past the highest of ``levels`` (its best image is kept),
    and the batch ends when none is left (checked every :func:`audit.fastpath.sync_every`
    steps: the steps in between do not synchronize with the device). ``path`` (an
    :class:`audit.fastpath.FastPath`, e.g. bf16 autocast) replaces ``model`` in the steps;
    when it is approximate, each best image's confidence is that of the fp32 ``model``
    (confirmed) and a level counts as reached only if that confidence reaches it. Raises
    RuntimeError if no gradient reaches the input (the caller reports it)."""
    lo, hi = bounds
    t_all = torch.tensor(targets, dtype=torch.long)
    n = len(targets)
    rec = _Best(n, shape, levels, device)
    used = 0
    x0 = lo + (hi - lo) * torch.rand(n, *shape, generator=gen)  # drawn on CPU: same images on any device
    bar = progress(total=steps * ((n + batch_size - 1) // batch_size), desc="gradient", unit="step") if progress else None
    for s in range(0, n, batch_size):
        ids = torch.arange(s, min(n, s + batch_size), device=device)  # global indices of this batch
        used = max(used, _ascend_batch(path or model, x0[ids.cpu()].to(device), t_all.to(device)[ids], ids, rec,
                                       steps=steps, lr=lr, l2_decay=l2_decay, blur_every=blur_every,
                                       blur_sigma=blur_sigma, bounds=bounds, device=device, early_stop=early_stop,
                                       bar=bar))
    if bar is not None:
        bar.close()
    images = rec.images.cpu()
    pred, pconf, tconf = _predict(model, images, device, batch_size, t_all)
    best, first = rec.best.cpu(), rec.first()
    if getattr(path, "approximate", False):  # confirmed in fp32: the verdicts never rest on bf16 numbers
        best = tconf
        first = {lv: [f if float(best[i]) >= lv else None for i, f in enumerate(row)] for lv, row in first.items()}
    return SearchResult(list(targets), images, best.tolist(), pred, pconf, first, used)


class _Best:
    """The best image per target so far (by log-odds), its confidence and the first step
    at which each level was reached, all on ``device`` (no host-device copy per step);
    ``images`` (N, C, H, W)."""

    def __init__(self, n: int, shape: tuple[int, int, int], levels: tuple[float, ...], device) -> None:
        self.images = torch.zeros(n, *shape, device=device)
        self.best = torch.full((n,), -1.0, device=device)
        self.best_lo = torch.full((n,), -float("inf"), device=device)
        self.levels = tuple(levels)
        self.first_at = torch.full((len(self.levels), n), -1, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, g: torch.Tensor, x: torch.Tensor, logits: torch.Tensor, lp: torch.Tensor, tt: torch.Tensor,
               step: int, live: torch.Tensor) -> torch.Tensor:
        """Keep the images ``x`` (rows ``g`` of the targets, ``tt`` their classes, ``live`` (m,)
        bool the rows still optimized) that beat their target's best; returns their
        confidences (m,) on the device."""
        lo_t = row_log_odds(logits.detach(), tt)
        conf = lp.detach().exp()
        better = (lo_t > self.best_lo[g]) & live
        self.images[g] = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x.detach(), self.images[g])
        self.best_lo[g] = torch.where(better, lo_t, self.best_lo[g])
        self.best[g] = torch.where(better, conf, self.best[g])
        for j, lv in enumerate(self.levels):
            f = self.first_at[j, g]
            self.first_at[j, g] = torch.where((f < 0) & (conf >= lv) & live, torch.full_like(f, step), f)
        return conf

    def first(self) -> dict[float, list[int | None]]:
        """Level -> the first step per target that reached it (None: never)."""
        at = self.first_at.cpu().tolist()
        return {lv: [v if v >= 0 else None for v in at[j]] for j, lv in enumerate(self.levels)}


def _ascend_batch(model, x: torch.Tensor, tt: torch.Tensor, ids: torch.Tensor, rec: _Best, *, steps: int, lr: float,
                  l2_decay: float, blur_every: int, blur_sigma: float, bounds: tuple[float, float],
                  device: torch.device, early_stop: bool, bar) -> int:
    """Adam ascent of one batch (``x`` its starting images on ``device``, ``tt`` their
    targets, ``ids`` their rows in ``rec``); returns the last step run. An image past the top
    level is masked at once and leaves the batch at the next synchronization step."""
    lo, hi = bounds
    mid = (lo + hi) / 2
    b1, b2, eps = 0.9, 0.999, 1e-8
    top = max(rec.levels)
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    alive = torch.ones(len(ids), dtype=torch.bool, device=device)  # rows still optimized
    rows = torch.arange(len(ids), device=device)  # rows in the batch (alive or masked)
    every = sync_every(device)
    used = 0
    for step in range(steps + 1):  # step 0 only scores the starting noise
        xa = x[rows].requires_grad_(True)
        logits = model(xa)
        lp = logits.float().log_softmax(1)[torch.arange(len(rows), device=device), tt[rows]]
        live = alive[rows]
        conf = rec.update(ids[rows], xa, logits, lp, tt[rows], step, live)
        keep = live & (conf < top) if early_stop else live
        alive[rows] = keep
        sync = (step + 1) % every == 0
        if step == steps or (sync and not bool(keep.any())):
            break
        # the input's gradient only: a model whose weights still require grad gets no weight
        # gradients computed and kept (a K x D last layer's would cost as much as the pass)
        (grad,) = torch.autograd.grad(-lp.sum(), xa, allow_unused=True)
        if grad is None or (step == 0 and not bool(grad.abs().sum() > 0)):
            raise RuntimeError("the input gradient is missing or zero")
        with torch.no_grad():
            t = step + 1
            m[rows] = b1 * m[rows] + (1 - b1) * grad
            v[rows] = b2 * v[rows] + (1 - b2) * grad * grad
            xn = xa.detach() - lr * (m[rows] / (1 - b1**t)) / ((v[rows] / (1 - b2**t)).sqrt() + eps)
            if l2_decay > 0:
                xn = mid + (xn - mid) * (1 - l2_decay)
            if blur_every > 0 and t % blur_every == 0:
                xn = gaussian_blur(xn, blur_sigma)
            x[rows] = xn.clamp(lo, hi)
        if sync:
            rows = rows[keep]
        used = t
        if bar is not None:
            bar.update(1)
    return used


@torch.no_grad()
def _predict(model, images: torch.Tensor, device, batch_size: int, targets: torch.Tensor
             ) -> tuple[list[int], list[float], torch.Tensor]:
    """(predicted class, its confidence, the target's confidence (N,) CPU) of every image
    under the fp32 ``model``."""
    preds, confs, tconf = [], [], []
    for s in range(0, len(images), batch_size):
        p = model(images[s:s + batch_size].to(device)).float().softmax(1)
        c, k = p.max(1)
        preds += k.cpu().tolist()
        confs += c.cpu().tolist()
        tconf.append(p.gather(1, targets[s:s + batch_size].to(device)[:, None]).squeeze(1).cpu())
    return preds, confs, torch.cat(tconf) if tconf else torch.empty(0)


@torch.no_grad()
def map_elites(model: Callable[[torch.Tensor], torch.Tensor], encoding, targets: list[int], *, queries: int,
               children: int, gen: torch.Generator, device: torch.device, batch_size: int = 256,
               immigrants: float = 0.125, early_stop: bool = True, levels: tuple[float, ...] = LEVELS,
               progress=None) -> SearchResult:
    """MAP-Elites whose cells are the target classes (Mouret & Clune 2015; Nguyen et al. 2015).

    The archive keeps one elite genome per target class. A first generation of random genomes
    (``children`` per target) seeds it; then every generation breeds ``children`` mutants from
    each cell's elite -- a (1 + children) evolution strategy per class -- and scores them all
    in batched forward passes. Each child replaces *every* cell whose elite it beats on that
    class's log-odds, not only its parent's. A share ``immigrants`` of each generation's
    children are fresh random genomes instead (random restarts: a cell stuck on a local optimum
    can be taken over by a new lineage; like every child they are scored for all classes).
    With ``early_stop`` only the cells not yet past the highest of ``levels`` breed, so the
    budget goes to the classes still unfooled, and the search ends when none is left. Stops
    after ``queries`` images at most (the budget; the last generation is cut short, cells
    taken round-robin)."""
    t = torch.tensor(targets, dtype=torch.long, device=device)
    n = len(targets)
    per_gen = max(1, children * n)
    init = min(per_gen, queries)
    pop = encoding.random(init, gen)
    fit, conf, pred, pconf = _score(model, encoding.render(pop), t, batch_size)
    best_fit, bi = fit.max(0)
    elites = encoding.take(pop, bi)
    e_conf = conf[bi, torch.arange(n, device=device)]
    e_pred, e_pconf = pred[bi], pconf[bi]
    first: dict[float, list[int | None]] = {lv: [None] * n for lv in levels}
    used = init
    _record_first(first, e_conf.cpu(), used)
    bar = progress(total=queries, desc=encoding.name, unit="img") if progress else None
    if bar is not None:
        bar.update(init)
    cursor = 0
    top = max(levels)
    while used < queries:
        # with early_stop, cells past the top level stop breeding: their budget goes to the rest
        active = (e_conf < top).nonzero().flatten() if early_stop else torch.arange(n, device=device)
        if len(active) == 0:
            break
        b = min(children * len(active), queries - used)
        cells = active[(cursor + torch.arange(b, device=device)) % len(active)]
        cursor = (cursor + b) % len(active)
        kids = encoding.mutate(encoding.take(elites, cells), gen)
        k = int(b * immigrants)
        if k:  # fresh random genomes in random slots: restarts for stuck cells
            slots = torch.randperm(b, generator=gen, device=device)[:k]
            encoding.put(kids, slots, encoding.random(k, gen))
        fit, conf, pred, pconf = _score(model, encoding.render(kids), t, batch_size)
        used += b
        cf, ci = fit.max(0)
        up = (cf > best_fit).nonzero().flatten()
        if len(up):
            src = ci[up]
            encoding.put(elites, up, encoding.take(kids, src))
            best_fit[up] = cf[up]
            e_conf[up] = conf[src, up]
            e_pred[up], e_pconf[up] = pred[src], pconf[src]
            _record_first(first, e_conf.cpu(), used)
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
    images = encoding.render(elites).cpu()
    return SearchResult(list(targets), images, e_conf.cpu().tolist(), e_pred.cpu().tolist(),
                        e_pconf.cpu().tolist(), first, used)


def _score(model, images: torch.Tensor, t: torch.Tensor, batch_size: int):
    """(log-odds (N, T), target confidences (N, T), predicted class (N,), its confidence (N,))."""
    logits = torch.cat([model(images[s:s + batch_size]).float() for s in range(0, len(images), batch_size)])
    p = logits.softmax(1)
    pc, pk = p.max(1)
    return log_odds(logits, t), p[:, t], pk, pc
