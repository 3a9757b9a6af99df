"""The classes a per-class check targets (class visualization, fooling images, the bias check).

A model may have thousands of outputs (ImageNet-1k, ImageNet-21k, iNaturalist); a check that
synthesizes or tests something per class cannot visit all of them, and its time and memory
must follow the classes it targets, not the model's output count. The rule the checks share:

1. the classes the user names (option ``classes``), when any: exactly those;
2. every class, when the model has at most ``max_classes``;
3. otherwise, with data: the classes the data brings up (:func:`data_classes`: its labels,
   then the model's top-1 predictions on it, most frequent first), at most ``max_classes``;
4. otherwise (no data): the check's own data-free choice (evenly spaced for class_viz, a
   seeded sample for fooling).
"""
from __future__ import annotations

import torch

__all__ = ["data_classes", "select_classes"]


def data_classes(labels: torch.Tensor | None, logits: torch.Tensor | None) -> list[int]:
    """Class indices the data brings up, most relevant first: the labels (``labels`` (N,)
    int64) by decreasing count, then the classes of the top-1 predictions (``logits`` (N, K)
    float, argmax per row) that are not labels, by decreasing count; ties by class index.
    Either may be None. O(N x K) for the argmax, then O(N log N): at most 2N classes."""
    out: list[int] = []
    for v in (labels, None if logits is None or logits.numel() == 0 else logits.argmax(1)):
        if v is None or v.numel() == 0:
            continue
        cls, counts = torch.unique(v.flatten().cpu().long(), return_counts=True)  # ascending class index
        order = torch.sort(-counts, stable=True).indices
        known = set(out)
        out += [c for c in cls[order].tolist() if c not in known]
    return out


def select_classes(names: list[str], wanted: list, max_classes: int, seen: list[int] | None = None,
                   option: str = "[checks.class_viz]") -> tuple[list[int], str]:
    """Class indices a check targets, by the module's rule: ``wanted`` (names or indices) when
    given, else all when ``len(names) <= max_classes``, else the first ``max_classes`` of
    ``seen`` (:func:`data_classes`) in ascending order when any, else all evenly thinned to
    ``max_classes``. Returns (indices, a note when not all were taken; ``option`` names the
    table in it); raises ValueError for an unknown name or an index out of range."""
    k = len(names)
    if wanted:
        out = []
        for w in wanted:
            if isinstance(w, int) or (isinstance(w, str) and w.isdigit() and w not in names):
                i = int(w)
                if not 0 <= i < k:
                    raise ValueError(f"class index {i} is out of range for a model with {k} classes")
                out.append(i)
            elif w in names:
                out.append(names.index(w))
            else:
                raise ValueError(f"class {w!r} is not one of the model's classes")
        return out, ""
    if k <= max_classes:
        return list(range(k)), ""
    if seen:
        idx = sorted(seen[:max(1, max_classes)])
        return idx, (f"{len(idx)} of {k} classes: the data's labels and the model's top-1 predictions on it "
                     f"(set {option} classes or max_classes)")
    if max_classes <= 1:
        return [0], f"1 of {k} classes (set {option} classes)"
    idx = sorted({round(i * (k - 1) / (max_classes - 1)) for i in range(max_classes)})
    return idx, f"{len(idx)} of {k} classes (evenly spaced; set {option} classes)"
