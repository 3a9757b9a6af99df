"""Hugging Face ``datasets`` as evaluation data (the ``datasets`` extra: datasets, pyarrow).

- a folder written by ``Dataset.save_to_disk`` (``state.json``, ``dataset_info.json``), or by
  ``DatasetDict.save_to_disk`` (``dataset_dict.json``): its evaluation split is used (``val``,
  ``validation``, ``valid``, ``test``, in that order, as for split folders), with a note;
- Parquet: ``--data x.parquet``, or a folder of ``.parquet`` files (recursively; files named or
  foldered by split, as the Hub lays them out, ``data/validation-00000-of-00001.parquet``,
  load their evaluation split).

The image column is the one with the ``datasets.Image`` feature (else a column named ``image``
or ``img`` of encoded image bytes); the label column the one with a ``ClassLabel`` feature
(whose ``names`` are the class names), else a column named ``label`` (or ``labels``,
``target``, ...: :data:`~audit.dataforms.LABEL_COLUMNS`) of class indices or names. The
images stay encoded until :func:`audit.data.load_data` decodes the rows it keeps.
An ``imagefolder`` directory (``datasets``' ImageFolder builder's layout) is an ImageFolder
and loads as one (:mod:`audit.data`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .dataforms import LABEL_COLUMNS, Listing, inside
from .errors import DataError
from .files import MiB, regular_file, shown
from .layouts import EVAL_SPLITS, TRAIN_SPLITS

__all__ = ["hf_files", "list_hf"]

INSTALL = "pip install 'model-audit[datasets]'"
IMAGE_COLUMNS = ("image", "img", "images", "pixel_values")


def _saved(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or ((p / "state.json").is_file()
                                                                    and (p / "dataset_info.json").is_file()))


def _parquets(p: Path) -> list[Path]:
    """``p`` itself, or the ``.parquet`` files at most three folders deep in it (``x.parquet``,
    ``data/x.parquet``, ``default/validation/0000.parquet``), hidden ones aside."""
    if p.is_file():
        return [p] if p.suffix.lower() == ".parquet" else []
    found = [f for pat in ("*.parquet", "*/*.parquet", "*/*/*.parquet") for f in p.glob(pat)]
    return sorted(f for f in found if not any(s.startswith(".") for s in f.relative_to(p).parts))


def hf_files(p: Path) -> list[Path] | None:
    """None when ``p`` is not Hugging Face data; else the Parquet files found in it (``[]`` for a
    saved dataset folder): ``p`` is a saved dataset folder, a ``.parquet`` file, or a folder
    with Parquet files (at most three folders deep). The search runs once; :func:`list_hf`
    reads what it found."""
    if _saved(p):
        return []
    return _parquets(p) or None


def _libs():
    try:
        import datasets
        import pyarrow
    except ImportError as e:
        raise DataError(f"reading a Hugging Face dataset needs the datasets extra ({e.name} is missing); "
                        f"{INSTALL}") from None
    return datasets, pyarrow


def _pick_split(splits: Sequence[str], p: Path, how: str) -> tuple[str, str]:
    """The evaluation split of ``splits`` and the note; raises when only training splits are there."""
    low = {s.lower(): s for s in splits}
    for s in EVAL_SPLITS:
        if s in low:
            others = [o for o in splits if o != low[s]]
            alt = f" ({', '.join(others)} not used)" if others else ""
            return low[s], f"{shown(p)} holds the splits {', '.join(splits)}: the {low[s]} split is evaluated{alt}"
    raise DataError(f"{shown(p)} holds only the split(s) {', '.join(splits)} and no validation or test split; "
                    f"{how.format(split=splits[0])} to audit on it (accuracy on training data is optimistic)")


def _split_of(f: Path, root: Path) -> str | None:
    names = [s.lower() for s in f.relative_to(root).parts[:-1]] + [f.stem.lower().replace("_", "-").split("-")[0]]
    return next((n for n in reversed(names) if n in EVAL_SPLITS + TRAIN_SPLITS), None)


def _table(p: Path, files: list[Path]):
    """(pyarrow Table, datasets Features, notes, the folder that relative image paths start from)."""
    datasets, pyarrow = _libs()
    import pyarrow.parquet as pq

    notes: list[str] = []
    try:
        if _saved(p):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                split, note = _pick_split(list(ds), p, f"pass --data {shown(p)}/{{split}}")
                ds, notes = ds[split], [note]
            return ds.with_format("arrow")[:], ds.features, notes, p
        splits = {f: _split_of(f, p if p.is_dir() else p.parent) for f in files}
        if p.is_dir() and any(splits.values()):
            found = sorted({s for s in splits.values() if s}, key=lambda s: (EVAL_SPLITS + TRAIN_SPLITS).index(s))
            one = next(f for f in files if splits[f] == found[0])
            split, note = _pick_split(found, p, f"pass --data {shown(one)} (one of its files)")
            files, notes = [f for f in files if splits[f] == split], [note]
        table = pyarrow.concat_tables([pq.read_table(f) for f in files])
        notes.append(f"{len(files)} Parquet file(s) read" + (f" ({shown(files[0].name)}, ...)" if len(files) > 1 else ""))
        return table, datasets.Features.from_arrow_schema(table.schema), notes, files[0].parent
    except DataError:
        raise
    except (pyarrow.ArrowException, OSError, ValueError, TypeError, KeyError) as e:
        from .errors import first_line

        raise DataError(f"{shown(p)} is not a readable Hugging Face dataset ({first_line(e, 160)}); save it with "
                        "Dataset.save_to_disk or Dataset.to_parquet") from None


def _columns(features, table, where: str) -> tuple[str, str]:
    datasets, _ = _libs()
    cols = list(table.column_names)
    img = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    img = img or next((c for c in cols if c.lower() in IMAGE_COLUMNS), None)
    if img is None:
        raise DataError(f"{where} has no image column (columns: {', '.join(cols)}): give the images a "
                        "datasets.Image feature, e.g. ds.cast_column('image', datasets.Image())")
    lab = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    lab = lab or next((c for c in cols if c.lower() in LABEL_COLUMNS), None)
    if lab is None:
        raise DataError(f"{where} has no label column (columns: {', '.join(cols)}): give the labels a "
                        "datasets.ClassLabel feature or name their column label")
    return img, lab


def _source(col, i: int, base: Path, where: str):
    def read() -> bytes:
        v = col[i].as_py()
        if isinstance(v, dict):
            if v.get("bytes"):
                return v["bytes"]
            if v.get("path"):
                f = base / v["path"]
                if not inside(f, base):
                    raise DataError(f"{where} row {i}: the image path {v['path']!r} is outside {base}; save the dataset "
                                    "with Dataset.save_to_disk, which embeds the images")
                if f.exists():  # a FIFO or /dev/zero would never end (a missing file: the message below)
                    regular_file(f, f"{where} row {i}: image file", error=DataError, max_bytes=256 * MiB)
                try:
                    return f.read_bytes()
                except OSError as e:
                    raise DataError(f"{where} row {i}: the dataset refers to the image file {f}, which cannot be "
                                    f"read ({e.strerror}); put it back, or save the dataset with Dataset.save_to_disk, "
                                    "which embeds the images") from None
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        raise DataError(f"{where} row {i}: the image is empty; remove the row")
    return read


def list_hf(p: Path, files: list[Path] | None = None) -> Listing:
    """The rows of a Hugging Face dataset at ``p`` (see the module docstring) as a
    :class:`~audit.dataforms.Listing`: ids ``row N``, sources returning each row's encoded
    image, raw labels (with the ``ClassLabel``'s names when the column has one). Raises
    :class:`DataError` naming the install command when ``datasets`` is missing, and for an
    unreadable dataset, a missing image or label column, or an unlabelled row (-1)."""
    table, features, notes, base = _table(p, _parquets(p) if files is None else files)
    where = shown(p)
    if table.num_rows == 0:
        raise DataError(f"{where} has no rows")
    img, lab = _columns(features, table, where)
    raw: list[Any] = table.column(lab).to_pylist()
    bad = next((i for i, v in enumerate(raw) if v is None or (isinstance(v, int) and v < 0)), None)
    if bad is not None:
        raise DataError(f"{where} row {bad} has no label ({raw[bad]}): an unlabelled split (often the test split) "
                        "cannot be audited; use a labelled split such as validation")
    datasets, _ = _libs()
    feat = features.get(lab)
    names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else None
    notes.append(f"Hugging Face dataset: images from column {img!r}, labels from {lab!r}"
                 + (" (a ClassLabel)" if names else ""))
    col = table.column(img)
    items = [(f"row {i}", _source(col, i, base, where)) for i in range(table.num_rows)]
    return Listing(items, raw, where, names, notes, source=where)
