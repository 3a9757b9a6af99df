"""Data forms beside ImageFolder and tensor files: a flat folder with a labels file, a CSV of
paths and labels, Hugging Face datasets (save_to_disk folders, Parquet); an `imagefolder`
directory is an ImageFolder. Class names, labels and counts; bad files are one line, exit 4,
with a fix that works."""
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from audit.data import load_data
from audit.errors import DataError, UsageError
from audit.model import AuditModel
from audit.model.spec import ModelSpec

NAMES = ["ant", "bee", "cat"]


class MeanColour(nn.Module):
    """Class = the brightest channel: images coloured by class are classified right (outputs
    past the third are never chosen)."""

    def __init__(self, n: int = 3):
        super().__init__()
        self.n = n

    def forward(self, x):
        m = x.mean((2, 3)) * 10
        return torch.cat([m, m[:, :1].expand(-1, self.n - 3) * 0 - 1], 1)


def _model(names=NAMES, n=3) -> AuditModel:
    return AuditModel(MeanColour(n), ModelSpec(input_shape=(3, 8, 8), class_names=names, num_classes=n),
                      info={"format": "test"}).finalize()


def _image(c: int, k: int = 0) -> Image.Image:
    a = np.zeros((8, 8, 3), np.uint8) + np.uint8(10 + k)
    a[..., c] = 200
    return Image.fromarray(a)


def _flat(root, labels):
    """Images 0000.png ... coloured by their class; returns their file names."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i, c in enumerate(labels):
        _image(c, i).save(root / f"ILSVRC2012_val_{i:08d}.png")
        names.append(f"ILSVRC2012_val_{i:08d}.png")
    return names


LABELS = [0, 2, 1, 2, 0, 2]


def _check(data, model, labels=LABELS, names=NAMES):
    assert data.class_names == names
    assert data.y.tolist() == labels
    assert data.describe()["per_class"] == {n: labels.count(i) for i, n in enumerate(names)}
    assert (model.logits(data.x).argmax(1) == data.y).all()  # each image went with its own label


def test_flat_folder_with_imagenet_style_label_lines(tmp_path):
    files = _flat(tmp_path / "val", LABELS)
    _image(1).save(tmp_path / "val" / "stray.png")
    (tmp_path / "val.txt").write_text("".join(f"{f} {c}\n" for f, c in zip(files, LABELS)))
    model = _model()
    data = load_data(tmp_path / "val", model=model, labels_file=tmp_path / "val.txt")
    _check(data, model)
    assert data.ids == files
    assert any("1 image(s) in" in n and "left out (e.g. stray.png)" in n for n in data.notes), data.notes
    assert any(n == "labels read as class indices" for n in data.notes)
    sub = load_data(tmp_path / "val", model=model, labels_file=tmp_path / "val.txt", samples=3, seed=1)
    assert sorted(sub.y.tolist()) == [0, 1, 2]  # class-stratified
    assert all(data.y[data.ids.index(i)] == y for i, y in zip(sub.ids, sub.y.tolist()))


def test_flat_folder_with_a_csv_of_class_names(tmp_path):
    files = _flat(tmp_path / "imgs", LABELS)
    rows = "".join(f"{NAMES[c]},camera {i},{f}\n" for i, (f, c) in enumerate(zip(files, LABELS)))
    (tmp_path / "labels.csv").write_text("Label,source,File_Name\n" + rows)  # any column order, case
    model = _model(names=["bee", "cat", "ant"])  # matched by name, not by position
    data = load_data(tmp_path / "imgs", model=model, labels_file=tmp_path / "labels.csv")
    assert data.class_names == ["bee", "cat", "ant"]
    assert data.y.tolist() == [{0: 2, 1: 0, 2: 1}[c] for c in LABELS]
    assert data.class_map == {"ant": 2, "bee": 0, "cat": 1}
    data = load_data(tmp_path / "imgs", model=_model(names=None), labels_file=tmp_path / "labels.csv")
    _check(data, _model())  # no model names: the sorted label names are the classes


def test_a_csv_given_as_data_with_paths_relative_to_it(tmp_path):
    d = tmp_path / "set"
    files = _flat(d / "images", LABELS)
    (d / "test.csv").write_text("path,class\n" + "".join(f"images/{f},{NAMES[c]}\n" for f, c in zip(files, LABELS)))
    model = _model(names=None)
    data = load_data(d / "test.csv", model=model)
    _check(data, model)
    assert data.ids == [f"images/{f}" for f in files]
    assert model.spec.class_names == NAMES and model.spec.sources["class_names"] == "data"


@pytest.mark.parametrize("content,message,fix", [
    ("{f0} 0\n{f1}\n", r"line 2: expected `path label` .*found 'ILSVRC2012_val_00000001.png'; fix or remove the line",
     "{f0} 0\n{f1} 2\n"),
    ("{f0} 0\nmissing.png 1\n", r"line 2: image 'missing.png' is not in .*; fix the path \(relative to .*\) or remove",
     "{f0} 0\n"),
    ("{f0} 0\n{f1} 3\n", r"label 3 is out of range for a model with 3 classes \(labels are 0-based class indices; "
     r"subtract 1 if yours count from 1", "{f0} 0\n{f1} 2\n"),
    ("{f0} ant\n{f1} dog\n", r"label 'dog' is not one of the model's class names \(given\) \(ant, bee, cat\); fix the "
     r"label", "{f0} ant\n{f1} cat\n"),
    ("{f0} 0\n{f0} 1\n", r"lists 'ILSVRC2012_val_00000000.png' twice \(lines 1 and 2\); keep one line", "{f0} 0\n"),
])
def test_a_bad_labels_file_is_one_line_and_its_fix_works(tmp_path, content, message, fix):
    files = _flat(tmp_path / "val", [0, 2])
    lab = tmp_path / "val.txt"
    lab.write_text(content.format(f0=files[0], f1=files[1]))
    with pytest.raises(DataError, match=message) as e:
        load_data(tmp_path / "val", model=_model(), labels_file=lab)
    assert "\n" not in str(e.value)
    lab.write_text(fix.format(f0=files[0], f1=files[1]))
    assert len(load_data(tmp_path / "val", model=_model(), labels_file=lab)) >= 1


def test_bad_csv_and_flat_folder_errors_name_the_fix(tmp_path, capsys):
    from audit.cli import main

    files = _flat(tmp_path / "val", [0, 1, 2])
    (tmp_path / "bad.csv").write_text("name,cls\n" + "".join(f"{f},{c}\n" for c, f in enumerate(files)))
    with pytest.raises(DataError, match=r"has the columns name, cls: name the image column filename .* and the label "
                                        r"column label in its first line"):
        load_data(tmp_path / "bad.csv", model=_model())
    (tmp_path / "bad.csv").write_text("filename,label\n" + "".join(f"val/{f},{c}\n" for c, f in enumerate(files)))
    assert load_data(tmp_path / "bad.csv", model=_model()).y.tolist() == [0, 1, 2]

    torch.jit.save(torch.jit.trace(MeanColour(), torch.rand(1, 3, 8, 8)), tmp_path / "m.pt")
    (tmp_path / "names.txt").write_text("\n".join(NAMES))
    base = ["run", str(tmp_path / "m.pt"), "--labels", str(tmp_path / "names.txt"), "--checks", "clean", "--quiet",
            "--out", str(tmp_path / "out")]
    assert main(base + ["--data", str(tmp_path / "val")]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no class subfolders" in err and "--data-labels FILE" in err, err
    (tmp_path / "val.txt").write_text("".join(f"{f} {c}\n" for c, f in enumerate(files)))
    assert main(base + ["--data", str(tmp_path / "val"), "--data-labels", str(tmp_path / "val.txt")]) == 0
    assert main(base + ["--data", str(tmp_path / "bad.csv"), "--data-labels", str(tmp_path / "val.txt")]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data-labels lists the images of a folder; give --data DIR" in err, err


# ----------------------------------------------------------------------------- Hugging Face datasets
def _hf(labels, names=NAMES, label_feature=True):
    datasets = pytest.importorskip("datasets")
    feats = {"image": datasets.Image(),
             "label": datasets.ClassLabel(names=names) if label_feature else datasets.Value("string")}
    col = labels if label_feature else [names[c] for c in labels]
    return datasets.Dataset.from_dict({"image": [_image(c, i) for i, c in enumerate(labels)], "label": col},
                                      features=datasets.Features(feats))


def test_a_saved_dataset_dict_loads_its_validation_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": _hf([0, 1]), "validation": _hf(LABELS)}).save_to_disk(str(tmp_path / "dd"))
    model = _model(names=None)
    data = load_data(tmp_path / "dd", model=model)
    _check(data, model)
    assert data.ids[:2] == ["row 0", "row 1"]
    assert any("the validation split is evaluated (train not used)" in n for n in data.notes), data.notes
    assert model.spec.class_names == NAMES  # from the ClassLabel
    datasets.DatasetDict({"train": _hf([0, 1])}).save_to_disk(str(tmp_path / "only"))
    with pytest.raises(DataError, match=r"holds only the split\(s\) train and no validation or test split; pass --data "
                                        r".*only/train to audit on it"):
        load_data(tmp_path / "only", model=_model())
    assert len(load_data(tmp_path / "only" / "train", model=_model())) == 2  # the fix named


def test_classlabel_names_are_matched_to_the_model_or_taken_in_order(tmp_path):
    _hf(LABELS).save_to_disk(str(tmp_path / "one"))
    data = load_data(tmp_path / "one", model=_model(names=["cat", "ant", "bee"]))
    assert data.y.tolist() == [{0: 1, 1: 2, 2: 0}[c] for c in LABELS] and data.class_names == ["cat", "ant", "bee"]
    data = load_data(tmp_path / "one", model=_model(names=["a", "b", "c"]))  # other names, same count: by index
    assert data.y.tolist() == LABELS
    assert any("ClassLabel indices, in the ClassLabel's order (its names differ from the model's: 'ant' vs 'a')" in n
               for n in data.notes), data.notes
    with pytest.raises(DataError, match=r"the ClassLabel has 3 names \(ant, bee, cat\) but the model has 4 outputs.*"
                                        r"pass --labels FILE"):
        load_data(tmp_path / "one", model=_model(names=["a", "b", "c", "d"], n=4))
    assert load_data(tmp_path / "one", model=_model(names=["cat", "bee", "ant", "d"], n=4)).y.tolist() == \
        [{0: 2, 1: 1, 2: 0}[c] for c in LABELS]  # the fix: the model's names, which the ClassLabel's are matched to


def test_parquet_files_and_folders(tmp_path):
    _hf(LABELS).to_parquet(str(tmp_path / "v.parquet"))
    model = _model(names=None)
    _check(load_data(tmp_path / "v.parquet", model=model), model)
    hub = tmp_path / "hub" / "data"
    hub.mkdir(parents=True)
    _hf([0, 1]).to_parquet(str(hub / "train-00000-of-00001.parquet"))
    _hf(LABELS[:3]).to_parquet(str(hub / "validation-00000-of-00002.parquet"))
    _hf(LABELS[3:]).to_parquet(str(hub / "validation-00001-of-00002.parquet"))
    data = load_data(tmp_path / "hub", model=_model())
    _check(data, _model())
    assert any("the validation split is evaluated" in n for n in data.notes)
    _hf(LABELS, label_feature=False).to_parquet(str(tmp_path / "names.parquet"))  # string labels: class names
    _check(load_data(tmp_path / "names.parquet", model=_model()), _model())
    train = tmp_path / "trainonly"
    train.mkdir()
    _hf([0, 1]).to_parquet(str(train / "train-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=r"holds only the split\(s\) train .*; pass --data .*train-00000-of-00001"
                                        r"\.parquet \(one of its files\) to audit on it"):
        load_data(train, model=_model())
    assert len(load_data(train / "train-00000-of-00001.parquet", model=_model())) == 2


def test_images_stored_as_paths_are_read_from_their_files(tmp_path):
    """Dataset.to_parquet keeps an Image feature built from files as paths: they are read
    from the files; a missing one is one line naming save_to_disk, which embeds them."""
    datasets = pytest.importorskip("datasets")
    for i, c in enumerate(LABELS):
        _image(c, i).save(tmp_path / f"{i}.png")
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / f"{i}.png") for i in range(6)], "label": LABELS})
    ds = ds.cast_column("image", datasets.Image()).cast_column("label", datasets.ClassLabel(names=NAMES))
    ds.to_parquet(str(tmp_path / "paths.parquet"))
    _check(load_data(tmp_path / "paths.parquet", model=_model()), _model())
    (tmp_path / "3.png").unlink()
    with pytest.raises(DataError, match=r"paths.parquet row 3: the dataset refers to the image file .*3.png, which "
                                        r"cannot be read .*save the dataset with Dataset.save_to_disk"):
        load_data(tmp_path / "paths.parquet", model=_model())


def test_bad_hugging_face_data_is_one_line_with_the_fix(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [_image(0)], "target": [-1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "target": datasets.ClassLabel(names=NAMES)}))
    ds.save_to_disk(str(tmp_path / "test"))
    with pytest.raises(DataError, match=r"row 0 has no label \(-1\): an unlabelled split .* use a labelled split"):
        load_data(tmp_path / "test", model=_model())
    ds.remove_columns("target").save_to_disk(str(tmp_path / "nolab"))
    with pytest.raises(DataError, match=r"has no label column \(columns: image\): give the labels a "
                                        r"datasets.ClassLabel feature or name their column label"):
        load_data(tmp_path / "nolab", model=_model())
    ds.remove_columns("target").add_column("label", [2]).save_to_disk(str(tmp_path / "fixed"))
    assert load_data(tmp_path / "fixed", model=_model()).y.tolist() == [2]  # the fix: a column named label
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"junk.parquet is not a readable Hugging Face dataset"):
        load_data(tmp_path / "junk.parquet", model=_model())
    monkeypatch.setitem(sys.modules, "datasets", None)  # the extra not installed
    with pytest.raises(DataError, match=r"needs the datasets extra \(datasets is missing\); "
                                        r"pip install 'model-audit\[datasets\]'"):
        load_data(tmp_path / "fixed", model=_model())


def test_an_imagefolder_directory_loads_as_datasets_reads_it(tmp_path):
    """`datasets`' imagefolder layout (split folders of class folders) is an ImageFolder: the
    same class names and labels as `load_dataset("imagefolder")` gives."""
    datasets = pytest.importorskip("datasets")
    for split, labels in (("train", [0, 1, 2]), ("validation", LABELS)):
        for i, c in enumerate(labels):
            (tmp_path / "data" / split / NAMES[c]).mkdir(parents=True, exist_ok=True)
            _image(c, i).save(tmp_path / "data" / split / NAMES[c] / f"{i}.png")
    ref = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"))
    model = _model(names=None)
    data = load_data(tmp_path / "data", model=model)
    val = ref["validation"]
    assert data.class_names == val.features["label"].names
    ours = dict(zip(data.ids, data.y.tolist()))
    theirs = {"/".join(p.split("/")[-2:]): y for p, y in zip([im.filename for im in val["image"]], val["label"])}
    assert ours == theirs


def test_a_labels_file_cannot_reach_outside_its_folder(tmp_path):
    """`../x.png` and absolute paths are refused (one line naming the fix): a labels file from
    elsewhere must not pull other images of this machine into a report."""
    import numpy as np
    from PIL import Image

    from audit.data import load_data
    from audit.errors import DataError

    (tmp_path / "data").mkdir()
    for name in ("data/a.png", "secret.png"):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / name)
    for line in ("../secret.png 0", f"{tmp_path / 'secret.png'} 0"):
        (tmp_path / "labels.txt").write_text(f"a.png 0\n{line}\n")
        with pytest.raises(DataError, match="is outside .*; list paths relative to") as e:
            load_data(tmp_path / "data", labels_file=tmp_path / "labels.txt")
        assert "\n" not in str(e.value)
    (tmp_path / "labels.txt").write_text("a.png 0\n")
    assert len(load_data(tmp_path / "data", labels_file=tmp_path / "labels.txt")) == 1
