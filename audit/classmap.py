"""Which model output each class folder of the data is: the folder-name -> index map.

Four ways make one, in this order: by name, when the model has class names (``--labels``, torchvision
weights, a checkpoint's names) and every folder is one of them; for folders named by number,
ImageFolder's convention (``sorted``: folder names sorted as strings, ``10`` before ``2``, each
folder its position) or the number the name spells (``numeric``); for other names without model
class names, the sorted folder names (ImageFolder's order). When the two number conventions
differ and both fit the model (``--class-order auto``), the loaded images' predictions decide
(:func:`choose_by_predictions`); ``--class-order sorted|numeric`` forces one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import DataError

ORDERS = ("auto", "sorted", "numeric")
#: at most this many images (spread over the data) decide between the two number conventions
DECIDE_MAX = 2048


@dataclass
class ClassMap:
    """``index``: the model index of each folder (folders in sorted order); ``names``: class
    names to adopt for the model's outputs (None: keep the model's or number them); ``how``:
    the convention used; ``other``: the other number convention's indices while undecided."""

    index: list[int]
    names: list[str] | None
    how: str
    other: list[int] | None = None

    def as_dict(self, folders: list[str]) -> dict[str, int]:
        return dict(zip(folders, self.index))


def _is_number(name: str) -> bool:
    return re.fullmatch(r"[0-9]+", name) is not None


def match_classes(folders: list[str], model_names: list[str] | None, num_classes: int | None,
                  order: str = "auto", names_source: str = "the model's class names") -> ClassMap:
    """The :class:`ClassMap` of ``folders`` (sorted names) for a model with ``model_names``
    (or None) and ``num_classes`` outputs (or None when unknown). Raises :class:`DataError`
    (one line naming a fix) when no convention fits."""
    if order not in ORDERS:
        raise DataError(f"class order {order!r} is not one of {', '.join(ORDERS)}; pass --class-order auto")
    numbers = all(_is_number(f) for f in folders)
    n = len(model_names) if model_names is not None else num_classes
    if model_names is not None and all(f in model_names for f in folders) and not (numbers and order != "auto"):
        return ClassMap([model_names.index(f) for f in folders], None, f"by name ({names_source})")
    if not numbers:
        if order == "numeric":
            raise DataError(f"--class-order numeric needs class folders named by number (found {folders[0]!r}); "
                            "pass --class-order auto")
        if model_names is not None:
            missing = next(f for f in folders if f not in model_names)
            raise DataError(f"data class folder {missing!r} is not one of {names_source} "
                            f"({', '.join(model_names[:6])}{', ...' if len(model_names) > 6 else ''}); "
                            "rename the folders or pass --labels FILE with the model's class names")
        if n is not None and len(folders) != n:
            raise DataError(f"the data has {len(folders)} class folders but the model has {n} outputs, "
                            "and no class names to match them by; pass --labels FILE (one model class name a line)")
        return ClassMap(list(range(len(folders))), list(folders), "sorted folder names (ImageFolder's order)")
    numeric = [int(f) for f in folders]
    by_position = list(range(len(folders)))
    numeric_ok = n is None or max(numeric) < n
    sorted_ok = n is None or len(folders) == n
    sorted_names = list(folders) if model_names is None else None
    if numeric == by_position:
        if not sorted_ok and not numeric_ok:
            raise DataError(f"the data has class folders 0..{max(numeric)} but the model has {n} outputs; remove the "
                            f"folders {n}..{max(numeric)} (classes the model does not have), or check that it is the "
                            "model for this data")
        return ClassMap(numeric, None, "numeric (the same as sorted: folders 0..K-1)")
    if order == "sorted" or (order == "auto" and sorted_ok and not numeric_ok):
        if not sorted_ok:
            fix = "pass --class-order numeric (folder 10 is output 10)" if numeric_ok else \
                f"remove the folders over {n - 1} (classes the model does not have)"
            raise DataError(f"--class-order sorted maps the {len(folders)} class folders to outputs 0..{len(folders) - 1} "
                            f"but the model has {n}: it needs one folder per class; {fix}")
        why = "" if order == "sorted" else f" (folder {max(numeric)} is out of range for {n} classes)"
        return ClassMap(by_position, sorted_names, f"sorted: folder names as strings, ImageFolder's order{why}")
    if not numeric_ok:
        over = [f for f, v in zip(folders, numeric) if v >= n]
        fix = "pass --class-order sorted (ImageFolder's order: each folder its position)" if sorted_ok \
            else f"remove the folder(s) {', '.join(over[:4])} (classes the model does not have)"
        raise DataError(f"data class folder {max(numeric)} is out of range for a model with {n} classes; {fix}")
    if order == "numeric" or not sorted_ok:
        return ClassMap(numeric, None, "numeric: the number each folder name spells")
    return ClassMap(numeric, None, "numeric: the number each folder name spells", other=by_position)


def choose_by_predictions(model, x: torch.Tensor, folder_idx: torch.Tensor, cm: ClassMap,
                          folders: list[str], batch_size: int = 256) -> tuple[ClassMap, str]:
    """Between ``cm``'s numeric map and its ``other`` (sorted) map, the one the model's
    predictions on ``x`` agree with more (numeric on a tie), and the note saying so."""
    assert cm.other is not None
    step = max(1, -(-len(x) // DECIDE_MAX))
    pred = model.logits(x[::step], batch_size=batch_size).argmax(1)
    fi = folder_idx[::step]
    acc_num = float((pred == torch.tensor(cm.index)[fi]).float().mean())
    acc_sort = float((pred == torch.tensor(cm.other)[fi]).float().mean())
    example = next(f for f, a, b in zip(folders, cm.index, cm.other) if a != b)
    i = folders.index(example)
    rates = f"{max(acc_sort, acc_num):.1%} of {len(pred)} images against {min(acc_sort, acc_num):.1%}"
    if acc_sort > acc_num:
        names = list(folders) if model.spec.class_names is None else None
        chosen = ClassMap(cm.other, names, "sorted: folder names as strings, ImageFolder's order")
        note = (f"class folders are numbers: mapped in ImageFolder's sorted-string order (folder {example} -> output "
                f"{cm.other[i]}, not {cm.index[i]}), which the model's predictions match ({rates} by the number "
                "each name spells); --class-order numeric forces the other")
    else:
        chosen = ClassMap(cm.index, None, "numeric: the number each folder name spells")
        tie = " (a tie: numeric is the default)" if acc_sort == acc_num else ""
        note = (f"class folders are numbers: mapped to the number each name spells (folder {example} -> output "
                f"{cm.index[i]}, not {cm.other[i]}), which the model's predictions match ({rates} in ImageFolder's "
                f"sorted-string order){tie}; --class-order sorted forces the other")
    return chosen, note
