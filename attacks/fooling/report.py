"""Metrics, findings, images and ``data`` of the ``fooling`` check, from its records.

Nothing here runs the model: :mod:`attacks.fooling.check` hands over the merged
:class:`~attacks.fooling.search.SearchResult` of each method and the garbage records.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from audit.imaging import short
from audit.results import CheckResult

from .figures import gallery_png, garbage_examples_png, garbage_plot, pct
from .garbage import GarbageKind
from .methods import FoolingMethod
from .search import SearchResult

__all__ = ["report_method", "report_garbage", "report_most_fooled", "summary_line"]


def _median(v: list[float]) -> float | None:
    return statistics.median(v) if v else None


def _median_first(v: list[int | None]) -> float | None:
    """Median step/query count over all targets, a target that never got there counting as
    infinite; None when at least half never got there."""
    m = _median([math.inf if x is None else float(x) for x in v])
    return None if m is None or math.isinf(m) else m


def report_method(res: CheckResult, method: FoolingMethod, r: SearchResult, names: list[str],
                  levels: tuple[float, ...], o: Any) -> None:
    """The metrics, ``data.per_class`` entry and gallery of one method's merged result;
    ``o`` is the check's Options (``threshold``, ``gallery_max``)."""
    n = len(r.targets)
    fooled = [c >= o.threshold for c in r.best]
    name, cost = method.name, method.cost
    res.rate("fooling_rate", sum(fooled), n, method=name)
    res.metric("median_best_confidence", _median(r.best), method=name)
    res.metric(cost, r.used, method=name)
    for lv in levels:
        res.metric(f"{cost}_to_confidence", _median_first(r.first[lv]), method=name, confidence=lv)
    for i, t in enumerate(r.targets):
        res.metric("best_confidence", r.best[i], method=name, **{"class": names[t]})
        res.metric(f"{cost}_to_confidence", r.first[o.threshold][i], method=name, confidence=o.threshold,
                   **{"class": names[t]})
    res.data.setdefault("per_class", {})[name] = {
        names[t]: {"best_confidence": r.best[i], "predicted": names[r.pred[i]], "predicted_confidence": r.pred_conf[i],
                   f"{cost}_to": {str(lv): r.first[lv][i] for lv in levels}} for i, t in enumerate(r.targets)}
    shown = list(range(n))[: o.gallery_max]
    if shown:
        png = gallery_png(r, names, f"{method.title}, {r.used} {cost}", shown, o.threshold)
        res.image(f"gallery_{name}.png", png,
                  f"{name}: one synthesized image per target class, captioned with the predicted class and its "
                  f"confidence; {sum(fooled)}/{n} targets reach {o.threshold:g}")


def _garbage_row(g: GarbageKind, names: list[str]) -> dict:
    conf, pred = g.conf, g.pred
    top = int(pred.mode().values) if len(pred) else 0
    sure = pred[conf >= 0.99]
    return {"kind": g.kind, "conf": conf.tolist(), "share_90": float((conf >= 0.9).float().mean()),
            "share_99": float((conf >= 0.99).float().mean()), "top_class": names[top],
            "top_share": float((pred == top).float().mean()),
            "top_class_99": names[int(sure.mode().values)] if len(sure) else None}


def report_garbage(res: CheckResult, kinds: list[GarbageKind], names: list[str], garbage_share: float) -> None:
    """Garbage-in confidence: metrics per kind and pooled (``input=all``, each kind weighted
    equally), ``data.garbage``, the two figures and ``fooling.overconfident_on_garbage``
    when a kind gets >= 0.99 confidence in at least ``garbage_share`` of its inputs."""
    if not kinds:
        return
    rows, table, caps = [], {}, []
    for g in kinds:
        row = _garbage_row(g, names)
        rows.append(row)
        table[g.kind] = {k: v for k, v in row.items() if k != "conf"} | {"n": len(g.conf), "median": _median(row["conf"])}
        res.metric("garbage_median_confidence", table[g.kind]["median"], input=g.kind)
        for lv in (0.9, 0.99):
            res.rate("garbage_share_confident", int((g.conf >= lv).sum()), len(g.conf), input=g.kind, confidence=lv)
        i = int(g.conf.argmax())
        caps.append(f"{g.kind}\n→ {short(names[int(g.pred[i])])} {pct(float(g.conf[i]))}")
    # pooled over kinds, each kind weighted equally (a constant image counts as much as 32 noise images)
    for lv, key in ((0.9, "share_90"), (0.99, "share_99")):
        v = sum(r[key] for r in rows) / len(rows)
        res.metric("garbage_share_confident", v, input="all", confidence=lv)
        table.setdefault("all", {})[key] = v
    res.data["garbage"] = table
    res.image("garbage_confidence.png", garbage_plot(rows),
              "Garbage-in confidence: max-softmax confidence per input kind (box, dots), the share at >= 0.9 and "
              ">= 0.99 and the class each kind is most often given")
    res.image("garbage_examples.png", garbage_examples_png([g.example for g in kinds], caps),
              "The most confidently classified garbage input of each kind, with its predicted class")
    over = [r for r in rows if r["share_99"] >= garbage_share and r["share_99"] > 0]
    if over:
        what = ", ".join(f"{r['kind']} {r['share_99']:.0%} (most often as {r['top_class_99']})" for r in over)
        res.finding("warn", "fooling.overconfident_on_garbage",
                    f"Inputs with no object get >= 99% confidence: {what} of the samples; the model's confidence "
                    "does not signal that an input is meaningless.", kinds=[r["kind"] for r in over])


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) root-mean-square pixel distance between two image sets (N, C, H, W)."""
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double()) / math.sqrt(a[0].numel())


def report_distances(res: CheckResult, summary: dict[FoolingMethod, SearchResult], names: list[str],
                     data_x: torch.Tensor | None, data_y: torch.Tensor | None) -> dict[str, bool] | None:
    """How far each fooling image is from the real images of its target class: per method and
    class ``fooling_nearest_real_distance`` (RMS pixel distance, [0, 1] pixels, to the nearest
    real image of the target class), against ``real_nearest_distance`` (per class, the median
    over its real images of the distance to their nearest other real image of the class: how
    close a real example usually is to another). Returns, per method, whether its images are
    *far from every real example* (the median over classes of the fooling image's distance
    above the 95th percentile of the real images' nearest-neighbour distances); None without
    data (nothing to compare with)."""
    if data_x is None or data_y is None or len(data_x) == 0:
        return None
    real_nn: list[float] = []
    for c in torch.unique(data_y).tolist():
        xc = data_x[data_y == c]
        if len(xc) > 1:
            d = _rms(xc, xc)
            d.fill_diagonal_(float("inf"))
            nn_c = d.min(1).values
            real_nn += nn_c.tolist()
            res.metric("real_nearest_distance", float(nn_c.median()), **{"class": names[c]})
    if not real_nn:
        return None
    cut = float(torch.tensor(real_nn).quantile(0.95))
    far: dict[str, bool] = {}
    for m, r in summary.items():
        dists = []
        for i, t in enumerate(r.targets):
            xc = data_x[data_y == t]
            if len(xc):
                v = float(_rms(r.images[i:i + 1], xc).min())
                dists.append(v)
                res.metric("fooling_nearest_real_distance", v, method=m.name, **{"class": names[t]})
        if dists:
            far[m.name] = float(torch.tensor(dists).median()) > cut
    res.data["distances"] = {"real_nn_p95": cut, "far_from_real": far}
    return far


def report_most_fooled(res: CheckResult, summary: dict[FoolingMethod, SearchResult], n: int, threshold: float,
                       most_classes: float, far: dict[str, bool] | None = None, num_classes: int = 0) -> None:
    """``fooling.most_classes_fooled`` when some method's fooling rate exceeds ``most_classes``.
    The images are called *unrecognizable* only for methods whose images ``far`` says lie
    farther from every real example of their class than real examples lie from each other
    (:func:`report_distances`); otherwise the message says *synthesized images*."""
    rates = {m.name: sum(c >= threshold for c in r.best) / n for m, r in summary.items()}
    if not rates or max(rates.values()) <= most_classes:
        return
    parts = [f"{m.name} {round(rates[m.name] * n)}/{n} (median best {pct(_median(r.best) or 0)}, {r.used} {m.cost})"
             for m, r in summary.items()]
    over = [m for m, v in rates.items() if v > most_classes]
    if far is not None and over and all(far.get(m) for m in over):
        what = ("Unrecognizable synthesized images (farther from every real image of their class than real "
                "images are from each other)")
    elif far is None:
        what = "Synthesized images (not compared with real images: no data)"
    else:
        what = ("Synthesized images (some as close to real images of their class as real images are to each "
                "other: not shown to be unrecognizable)")
    chance = f" (chance level {1 / num_classes:.1%})" if num_classes else ""
    res.finding("warn", "fooling.most_classes_fooled",
                f"{what} get >= {threshold:.0%} confidence{chance} for most target classes: "
                f"{'; '.join(parts)}. The model's confidence is no evidence that an object is present.",
                fooling_rate={m: round(v, 4) for m, v in rates.items()})


def summary_line(summary: dict[FoolingMethod, SearchResult], n: int, threshold: float, garbage: dict | None) -> str:
    """The one-line summary: fooled counts per method and the pooled garbage share at 0.99."""
    parts = [f"{m.name} {sum(c >= threshold for c in r.best)}/{n} fooled" for m, r in summary.items()]
    if garbage:
        parts.append(f"garbage >=0.99: {garbage['share_99']:.0%}")
    return "; ".join(parts)
