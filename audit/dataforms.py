"""Data forms other than ImageFolder and tensor files: images listed with their labels.

- a folder of images with a labels file (``--data DIR --data-labels FILE``): a CSV with a header
  naming the image column (:data:`PATH_COLUMNS`) and the label column (:data:`LABEL_COLUMNS`),
  or ``path label`` lines split at the last whitespace, as ImageNet's validation labels are
  distributed (``ILSVRC2012_val_00000001.JPEG 65``); paths relative to DIR;
- a CSV of paths and labels (``--data labels.csv``; ``.tsv`` tab-separated), paths relative to
  the CSV's folder;
- Hugging Face ``datasets`` (:mod:`audit.hfdata`).

Labels are class indices (every label a whole number: output ``i``) or class names, matched to
the model's class names (an unknown name is refused); without model class names, the sorted
names are the classes (ImageFolder's convention) when their count equals the model's outputs.
Each form yields a :class:`Listing`; :func:`audit.data.load_data` decodes the images.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import DataError, UsageError
from .files import MiB, is_regular, regular_file, shown

__all__ = ["Listing", "IMAGE_EXTS", "PATH_COLUMNS", "LABEL_COLUMNS", "list_labelled", "map_labels",
           "map_class_label", "read_label_table", "labels_file_for"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: header names of the image column of a labels CSV (case-insensitive), in order of preference
PATH_COLUMNS = ("filename", "file_name", "file", "path", "filepath", "image", "image_path", "img", "image_id")
#: header names of the label column
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "target", "category", "y")
#: a labels file is read whole: more than this is not one
MAX_TABLE_BYTES = 256 * MiB

#: an image source: a file, or a function returning the encoded bytes (a dataset row)
Source = Path | Callable[[], bytes]


@dataclass
class Listing:
    """Images and their labels, before decoding. ``items``: (sample id, source) pairs, a
    source being a :class:`~pathlib.Path` or a function returning the image file's bytes;
    ``labels``: each item's raw label (an index or a class name); ``label_names``: the names of
    a ``ClassLabel`` that the indices refer to (None: see :func:`map_labels`); ``where``: what
    error messages name (the labels file, the dataset); ``source``: the data's name in results."""

    items: list[tuple[str, Source]]
    labels: list[Any]
    where: str
    label_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    source: str = ""  # the data's name in results (``data.source``)

    def assign(self, model_names: Sequence[str] | None, num_classes: int | None,
               names_source: str = "the model's class names") -> tuple[list[int], list[str] | None, dict, str]:
        """Each item's output index, the class names to adopt (None: the model's or numbers),
        the label -> index map and how labels were read (:func:`map_labels`, or
        :func:`map_class_label` for a ``ClassLabel``). Raises :class:`DataError`."""
        if self.label_names is not None:
            return map_class_label(self.label_names, [int(v) for v in self.labels], model_names, num_classes, self.where)
        return map_labels(self.labels, model_names, num_classes, self.where, names_source)


def _preview(names: Sequence[str]) -> str:
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


def _is_index(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.strip().isdigit())


def map_labels(labels: Sequence[Any], model_names: Sequence[str] | None, num_classes: int | None, where: str,
               names_source: str = "the model's class names") -> tuple[list[int], list[str] | None, dict, str]:
    """Each label's output index, the class names to adopt (or None), the name -> index map
    and how the labels were read. Whole numbers are output indices; otherwise names, matched
    to ``model_names`` or, without them, sorted (their count must equal ``num_classes``).
    Raises :class:`DataError` naming ``where`` for an index out of range or an unknown name."""
    n = len(model_names) if model_names is not None else num_classes
    if all(_is_index(v) for v in labels):
        y = [int(v) for v in labels]
        if n is not None and max(y) >= n:
            raise DataError(f"{where}: label {max(y)} is out of range for a model with {n} classes (labels are "
                            f"0-based class indices; subtract 1 if yours count from 1, or use class names)")
        return y, None, {}, "class indices"
    labels = [str(v).strip() for v in labels]
    found = sorted(set(labels))
    if model_names is not None:
        missing = next((v for v in found if v not in model_names), None)
        if missing is not None:
            raise DataError(f"{where}: label {missing!r} is not one of {names_source} ({_preview(list(model_names))}); "
                            "fix the label, or pass --labels FILE with the model's class names in output order")
        index = {v: list(model_names).index(v) for v in found}
        return [index[v] for v in labels], None, index, f"class names, matched to {names_source}"
    if n is not None and len(found) != n:
        raise DataError(f"{where}: the labels name {len(found)} classes ({_preview(found)}) but the model has {n} "
                        "outputs and no class names to match them by; pass --labels FILE (one model class name a "
                        "line, in output order) or use class indices as labels")
    index = {v: i for i, v in enumerate(found)}
    return [index[v] for v in labels], found, index, "class names, sorted (ImageFolder's order)"


def map_class_label(names: list[str], y: list[int], model_names: Sequence[str] | None, num_classes: int | None,
                    where: str) -> tuple[list[int], list[str] | None, dict, str]:
    """Like :func:`map_labels` for labels ``y`` indexing a ``ClassLabel``'s ``names``: matched by
    name when every name is one of ``model_names``; else taken in the ClassLabel's order when
    it has as many names as the model has outputs (``num_classes``, or the model's names), its
    names adopted. Raises :class:`DataError` otherwise."""
    n = len(model_names) if model_names is not None else num_classes
    if model_names is not None and all(v in model_names for v in names):
        index = {v: list(model_names).index(v) for v in names}
        return [index[names[i]] for i in y], None, index, "ClassLabel names, matched to the model's class names"
    if n is None or len(names) == n:
        differ = f" (its names differ from the model's: {names[0]!r} vs {model_names[0]!r})" if model_names else ""
        return list(y), list(names), {}, f"ClassLabel indices, in the ClassLabel's order{differ}"
    raise DataError(f"{where}: the ClassLabel has {len(names)} names ({_preview(names)}) but the model has {n} "
                    "outputs, and they are not the model's class names; pass --labels FILE with the model's class "
                    "names in output order (the ClassLabel's names are then matched to them)")


def _read_text(p: Path, what: str) -> str:
    regular_file(p, what, error=DataError, max_bytes=MAX_TABLE_BYTES)
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {p} is not UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                        "save it as UTF-8") from None


def _column(header: list[str], choices: Sequence[str]) -> int | None:
    low = [h.strip().lower() for h in header]
    return next((low.index(c) for c in choices if c in low), None)


def _csv_rows(p: Path, text: str) -> list[tuple[str, str, int]]:
    rows = [(i + 1, r) for i, r in enumerate(csv.reader(io.StringIO(text), delimiter="\t" if p.suffix.lower() == ".tsv"
                                                          else ",")) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"labels file {p} is empty; it needs a header (filename,label) and one row per image")
    header = rows[0][1]
    ci, li = _column(header, PATH_COLUMNS), _column(header, LABEL_COLUMNS)
    if ci is None or li is None:
        if len(header) == 2 and Path(header[0].strip()).suffix.lower() in IMAGE_EXTS:  # no header: path,label
            ci, li, rows = 0, 1, [(0, header)] + rows
        else:
            raise DataError(f"labels file {p} has the columns {', '.join(header)}: name the image column "
                            f"{PATH_COLUMNS[0]} (or {', '.join(PATH_COLUMNS[1:4])}) and the label column "
                            f"{LABEL_COLUMNS[0]} in its first line")
    out = []
    for line, r in rows[1:]:
        if len(r) <= max(ci, li) or not r[ci].strip() or not r[li].strip():
            raise DataError(f"labels file {p} line {line}: expected a {header[ci]} and a {header[li]}, found "
                            f"{','.join(r)!r}; fill in or remove the line")
        out.append((r[ci].strip(), r[li].strip(), line))
    return out


def read_label_table(p: Path) -> list[tuple[str, str, int]]:
    """(image path, label, line number) of each row of a labels file: a ``.csv`` / ``.tsv``
    (or any file whose first line has a comma) with a header naming a :data:`PATH_COLUMNS`
    and a :data:`LABEL_COLUMNS` column (or two header-less columns, path first), else
    whitespace-separated ``path label`` lines (a ``filename label`` header line is skipped).
    Raises :class:`DataError` for a missing, non-UTF-8 or empty file, or a malformed line."""
    text = _read_text(p, "labels file")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if p.suffix.lower() in (".csv", ".tsv") or (lines and "," in lines[0]):
        rows = _csv_rows(p, text)
    else:
        rows = []
        for i, ln in enumerate(text.splitlines(), 1):
            if not ln.strip() or ln.lstrip().startswith("#"):
                continue
            parts = ln.strip().rsplit(None, 1)
            if len(parts) != 2:
                raise DataError(f"labels file {p} line {i}: expected `path label` (e.g. ILSVRC2012_val_00000001.JPEG "
                                f"65), found {ln.strip()[:80]!r}; fix or remove the line")
            rows.append((parts[0], parts[1], i))
        if rows and rows[0][0].lower() in PATH_COLUMNS and rows[0][1].lower() in LABEL_COLUMNS:
            rows = rows[1:]  # a header line
    if not rows:
        raise DataError(f"labels file {p} lists no images; it needs one `path label` line (or CSV row) per image")
    return rows


def inside(f: Path, base: Path) -> bool:
    """Whether ``f`` (links followed) lies inside the folder ``base``."""
    try:
        return f.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):
        return False


def _resolve_image(base: Path, rel: str, where: str) -> Path:
    """``base / rel`` checked: inside ``base`` (a listed ``../x`` or absolute path is refused: a
    labels file from elsewhere must not pull other files of this machine into a report), an
    existing regular file with an image extension. Raises :class:`DataError`."""
    f = base / rel
    if not inside(f, base):
        raise DataError(f"{where}: image {rel!r} is outside {base}; list paths relative to {base}, with the images "
                        "inside it")
    if not f.exists():
        raise DataError(f"{where}: image {rel!r} is not in {base}; fix the path (relative to {base}) or remove the line")
    if not is_regular(f):
        raise DataError(f"{where}: {rel!r} is not a regular file (a folder, FIFO or device); list image files only")
    if f.suffix.lower() not in IMAGE_EXTS:
        raise DataError(f"{where}: {rel!r} is not an image ({', '.join(IMAGE_EXTS)}); remove the line")
    return f


def list_labelled(base: Path, table: Path) -> Listing:
    """The images a labels file ``table`` lists, paths relative to ``base`` (the ``--data``
    folder, or the CSV's own folder for ``--data file.csv``), with their raw labels. Images in
    ``base`` that the table leaves out are noted (a labels file may list a subset). Raises
    :class:`DataError` naming the file and line of a missing image, a listed twice image or a
    malformed row."""
    rows = read_label_table(table)
    files = [_resolve_image(base, rel, f"labels file {table} line {line}") for rel, _, line in rows]
    seen: dict[Path, int] = {}
    for f, (rel, _, line) in zip(files, rows):
        if f in seen:
            raise DataError(f"labels file {table} lists {rel!r} twice (lines {seen[f]} and {line}); keep one line")
        seen[f] = line
    notes = [f"{len(rows)} images listed in {shown(table)}"]
    loose = [f for f in base.iterdir() if f.suffix.lower() in IMAGE_EXTS and f not in seen]
    if loose:
        notes.append(f"{len(loose)} image(s) in {shown(base)} are not in {shown(table)} and are left out "
                     f"(e.g. {shown(loose[0].name)})")
    ids = [shown(f.relative_to(base)) if f.is_relative_to(base) else shown(f) for f in files]
    source = shown(table) if table.parent == base and table.suffix.lower() in (".csv", ".tsv") else \
        f"{shown(base)} (labels: {shown(table)})"
    return Listing(list(zip(ids, files)), [lab for _, lab, _ in rows], f"labels file {table}", notes=notes,
                   source=source)


def labels_file_for(p: Path, labels_file: str | None) -> tuple[Path, Path] | None:
    """(base folder, labels file) when ``p`` (the ``--data`` path) is a labels form: a folder with
    ``labels_file``, or a ``.csv`` / ``.tsv`` file. Raises :class:`UsageError` for a labels
    file given with data that is not a folder."""
    if labels_file is not None:
        if not p.is_dir():
            raise UsageError(f"--data-labels lists the images of a folder; give --data DIR (the folder the paths in "
                             f"{labels_file} are relative to), not {p}")
        return p, Path(labels_file)
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
        return p.parent, p
    return None
