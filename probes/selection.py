"""Choosing the classes a probe looks at (class visualization, the bias check)."""
from __future__ import annotations

__all__ = ["select_classes"]


def select_classes(names: list[str], wanted: list, max_classes: int) -> tuple[list[int], str]:
    """Class indices to visualize: ``wanted`` (names or indices) or all, evenly thinned to
    ``max_classes``. Returns (indices, a note when thinned); raises ValueError for an
    unknown name or an index out of range."""
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
    if max_classes <= 1:
        return [0], f"1 of {k} classes visualized (set [checks.class_viz] classes)"
    idx = sorted({round(i * (k - 1) / (max_classes - 1)) for i in range(max_classes)})
    return idx, f"{len(idx)} of {k} classes visualized (evenly spaced; set [checks.class_viz] classes)"
