"""The ``clean`` check: how accurate and how confident is the model on the given data?

Metrics: ``accuracy`` (overall and per class), ``mean_confidence`` (mean max-softmax),
``expected_calibration_error`` (Guo et al. 2017, "On Calibration of Modern Neural
Networks": equal-width confidence bins, sum over bins of |accuracy - confidence| weighted by
the bin's share of samples) with its 95% bootstrap interval, ``l2_calibration_error_debiased``
(Kumar et al. 2019), ``nll`` (mean negative log-likelihood of the true class); see
:mod:`audit.calibration`. ``clean.miscalibrated`` needs the ECE interval's lower bound above
the threshold; a point estimate above it with an interval that reaches below is
``clean.calibration_inconclusive``.
Images: confusion matrix, reliability diagram, the most confidently wrong samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .calibration import debiased_l2_calibration_error, ece_interval, expected_calibration_error  # noqa: F401
from .check import Check, Unit
from .imaging import figure_png, image_grid, new_figure, short
from .options import opt
from .records import record
from .registry import register_check
from .results import CheckResult, Metric, SampleTable


@register_check("clean")
class CleanCheck(Check):
    description = "accuracy (overall and per class), confidence, calibration (ECE), confusion matrix, confident mistakes"
    metrics = {
        "accuracy": "share of samples whose top-1 prediction is the label (per class with `class`)",
        "mean_confidence": "mean max-softmax probability over all samples",
        "expected_calibration_error": "|accuracy - confidence| averaged over confidence bins (Guo et al. 2017), with "
                                      "its 95% bootstrap interval",
        "l2_calibration_error_debiased": "the debiased estimate of the l2 calibration error (Kumar et al. 2019)",
        "nll": "mean negative log-likelihood of the true class",
        "samples": "number of evaluated samples",
    }
    findings = {
        "model.probability_outputs": "the model returns probabilities, not logits (the adversarial check rates the consequence)",
        "model.output_adapted": "the model's output was adapted to a logits tensor (tuple or dict output)",
        "clean.near_chance": "accuracy is at or near chance level: the model or its preprocessing is wrong",
        "clean.weak_class": "one class is far less accurate than the others",
        "clean.miscalibrated": "confidence does not match accuracy (the ECE's 95% interval lies above the threshold)",
        "clean.calibration_inconclusive": "the ECE is above the threshold but its 95% interval reaches below it: "
                                          "too few samples to say",
    }

    @dataclass
    class Options:
        ece_bins: int = opt(15, min=1, max=10_000, doc="equal-width confidence bins of the ECE")
        ece_warn: float = opt(0.1, min=0, max=1, doc="an ECE whose 95% interval lies above this raises "
                                                     "clean.miscalibrated")
        weak_class_ratio: float = opt(0.5, min=0, max=1, doc="a class below this fraction of overall accuracy is weak")
        mistakes: int = opt(12, min=0, doc="most confidently wrong examples shown")

    def compute(self, unit: Unit, ctx, generator) -> "CleanRecord":
        """Everything from the clean logits the runner computed once (one unit)."""
        probs = ctx.probs
        y = ctx.data.y
        conf, pred = probs.max(1)
        nll = -torch.log(probs[torch.arange(len(y)), y].clamp_min(1e-12))
        return CleanRecord(confidence=conf, pred=pred, nll=nll)

    def summarize(self, records: list["CleanRecord"], ctx) -> CheckResult:
        o, r = self.options, records[0]
        res = CheckResult(self.name)
        data, model = ctx.data, ctx.model
        names = model.class_names
        y, conf, pred = data.y, r.confidence, r.pred
        correct = pred == y
        acc = float(correct.float().mean())
        ece, table = expected_calibration_error(conf, correct, o.ece_bins)
        lo, hi = ece_interval(conf, correct, o.ece_bins, seed=ctx.seed)
        res.rate("accuracy", int(correct.sum()), len(y))
        res.metric("mean_confidence", float(conf.mean()))
        res.metrics.append(Metric("expected_calibration_error", ece, {"bins": o.ece_bins}, ci_low=lo, ci_high=hi))
        res.metric("l2_calibration_error_debiased", debiased_l2_calibration_error(conf, correct, o.ece_bins),
                   bins=o.ece_bins)
        res.metric("nll", float(r.nll.mean()))
        res.metric("samples", len(y))
        per_class = {}
        for c in torch.unique(y).tolist():  # the classes present: O(N x present), not O(N x K)
            m = y == c
            per_class[c] = float(correct[m].float().mean())
            res.rate("accuracy", int(correct[m].sum()), int(m.sum()), **{"class": names[c]})
        self._findings(res, model, acc, per_class, (ece, lo, hi), float(conf.mean()), len(y))
        self._images(res, data, names, y, pred, conf, correct, table, ece)
        res.summary = (f"accuracy {acc:.1%}, mean confidence {float(conf.mean()):.1%}, ECE {ece:.3f}"
                       + (f" [{lo:.3f}–{hi:.3f}]" if lo is not None else "") + f", n={len(y)}")
        res.samples = SampleTable(data.ids, {"label": y.tolist(), "pred": pred.tolist(),
                                             "confidence": [round(float(v), 5) for v in conf],
                                             "correct": correct.tolist()})
        res.data["calibration_bins"] = table
        return res

    def _findings(self, res: CheckResult, model, acc: float, per_class: dict[int, float],
                  ece_ci: tuple[float, float | None, float | None], mean_conf: float, n: int) -> None:
        o, names = self.options, model.class_names
        if model.output_kind == "probabilities":
            res.finding("info", "model.probability_outputs",
                        "The model outputs probabilities (rows sum to 1), not logits; gradients through a softmax "
                        "saturate, which weakens gradient attacks and attributions. Export the pre-softmax logits.")
        for note in model.adaptations:
            if "probabilit" not in note:
                res.finding("info", "model.output_adapted", f"Model output adapted: {note}.")
        present = len(per_class)
        chance = 1.0 / max(present, 1)
        if present > 1 and acc <= chance + 0.5 * (1 - chance) * 0.2:
            res.finding("fail", "clean.near_chance",
                        f"Accuracy {acc:.1%} is near chance ({chance:.1%} for {present} classes): check the labels, "
                        "the class-name mapping and the --mean/--std normalization.")
        elif present > 1:
            for c, a in per_class.items():
                if a < o.weak_class_ratio * acc:
                    res.finding("warn", "clean.weak_class",
                                f"Class {names[c]} has accuracy {a:.1%}, under {o.weak_class_ratio:.0%} of the overall {acc:.1%}.",
                                class_=names[c])
        ece, lo, hi = ece_ci
        if ece > o.ece_warn:
            direction = "over" if mean_conf > acc else "under"
            ci = f"95% interval [{lo:.3f}, {hi:.3f}]" if lo is not None else "no interval (one sample)"
            if lo is not None and lo > o.ece_warn:
                res.finding("warn", "clean.miscalibrated",
                            f"Expected calibration error is {ece:.3f} ({ci}, all above {o.ece_warn}): the model is "
                            f"{direction}confident (mean confidence {mean_conf:.1%} vs accuracy {acc:.1%}).")
            else:
                res.finding("info", "clean.calibration_inconclusive",
                            f"Expected calibration error is {ece:.3f}, above {o.ece_warn}, but its {ci} reaches below "
                            f"it: the {n} samples cannot tell a miscalibrated model from a calibrated "
                            "one (the plug-in ECE reads high on small sets); evaluate more samples.")

    def _images(self, res: CheckResult, data, names, y, pred, conf, correct, table, ece) -> None:
        res.image("confusion.png", _confusion_png(y, pred, names), "Confusion matrix (rows: true class, columns: predicted)")
        res.image("reliability.png", _reliability_png(table, ece), f"Reliability diagram, ECE {ece:.3f}")
        wrong = (~correct).nonzero().flatten()
        if len(wrong):
            order = wrong[conf[wrong].argsort(descending=True)][: self.options.mistakes]
            caps = [f"{short(names[int(y[i])])} → {short(names[int(pred[i])])} {float(conf[i]):.1%}" for i in order]
            res.image("confident_mistakes.png", image_grid([data.x[i] for i in order], caps),
                      f"The {len(order)} most confidently wrong predictions (true → predicted, confidence)")


@record
class CleanRecord:
    """The clean check's one record: per sample (N,) max-softmax ``confidence`` (float32),
    ``pred`` (int64) and ``nll`` of the true class (float32)."""

    confidence: torch.Tensor
    pred: torch.Tensor
    nll: torch.Tensor


def _confusion_png(y: torch.Tensor, pred: torch.Tensor, names: list[str]) -> bytes:
    k = len(names)
    present = sorted(set(y.tolist()) | set(pred.tolist()))
    if k > 30:  # keep it legible: the classes that occur, at most 30
        present = present[:30]
    idx = {c: i for i, c in enumerate(present)}
    cm = np.zeros((len(present), len(present)), dtype=int)
    for t, p in zip(y.tolist(), pred.tolist()):
        if t in idx and p in idx:
            cm[idx[t], idx[p]] += 1
    size = max(3.5, 0.45 * len(present) + 1.5)
    fig, ax = new_figure(size + 0.8, size)
    im = ax.imshow(cm, cmap="Blues")
    labels = [short(names[c]) for c in present]
    ax.set_xticks(range(len(present)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(present)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(present) <= 15:
        for i in range(len(present)):
            for j in range(len(present)):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return figure_png(fig)


def _reliability_png(table: list[dict], ece: float) -> bytes:
    fig, ax = new_figure(4.2, 4.0)
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
    if table:
        mids = [(b["lo"] + b["hi"]) / 2 for b in table]
        width = table[0]["hi"] - table[0]["lo"]
        ax.bar(mids, [b["accuracy"] for b in table], width=width * 0.9, alpha=0.7, label="accuracy", edgecolor="black")
        ax.plot([b["confidence"] for b in table], [b["accuracy"] for b in table], "o", color="C3", ms=3, label="bin mean")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return figure_png(fig)
