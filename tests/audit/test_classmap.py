"""audit/classmap.py: class folder -> model output, every way a map is made, and --class-order."""
import json

import pytest

from audit.classmap import match_classes
from audit.cli import main
from audit.data import load_data
from audit.errors import DataError
from audit.model import load_model
from tests.tinymodels import intensity_folder, save_intensity_net

FOLDERS = [str(i) for i in range(12)]
SORTED = sorted(FOLDERS)  # ImageFolder's order: '0', '1', '10', '11', '2', ...


@pytest.fixture(scope="module")
def net12(tmp_path_factory):
    return save_intensity_net(tmp_path_factory.mktemp("net") / "net12.pt")


def _folder(root, order: str):
    """12 folders named 0..11; each image is the output ImageFolder (sorted) or the number gives it."""
    mapping = {f: (SORTED.index(f) if order == "sorted" else int(f)) for f in FOLDERS}
    return intensity_folder(root, mapping, 12)


def test_labels_file_maps_by_name(tmp_path, net12):
    names = [f"c{(i * 5) % 12}" for i in range(12)]  # output i is named names[i]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    folder = intensity_folder(tmp_path / "d", {n: i for i, n in enumerate(names)}, 12)
    data = load_data(folder, model=load_model(net12, labels=tmp_path / "labels.txt", device="cpu"))
    assert data.class_map == {n: i for i, n in enumerate(names)} and "--labels" in data.notes[-1]
    assert load_model(net12, device="cpu").logits(data.x).argmax(1).tolist() == data.y.tolist()


def test_model_class_names_map_by_name_even_for_numbers():
    names = ["0", "1", "10", "11", "2", "3", "4", "5", "6", "7", "8", "9"]  # e.g. a checkpoint's class_to_idx
    cm = match_classes(SORTED, names, 12)
    assert cm.as_dict(SORTED)["10"] == 2 and cm.other is None and cm.how.startswith("by name")


def test_sorted_folder_names_without_model_names():
    cm = match_classes(["cat", "dog", "emu"], None, 3)
    assert cm.index == [0, 1, 2] and cm.names == ["cat", "dog", "emu"] and "sorted" in cm.how


def test_numeric_names_when_not_every_class_has_a_folder():
    cm = match_classes(["0", "2", "5"], None, 6)
    assert cm.index == [0, 2, 5] and cm.other is None and cm.how.startswith("numeric")


def test_numbers_out_of_range_fall_back_to_sorted():
    cm = match_classes(["1", "2", "3"], None, 3)  # folders 1..3, model outputs 0..2
    assert cm.index == [0, 1, 2] and "out of range" in cm.how


@pytest.mark.parametrize("folders,n,order,fix", [
    (["1", "2", "3"], 3, "numeric", "--class-order sorted"),
    (["0", "10"], 12, "sorted", "--class-order numeric"),
    (["cat"], 1, "numeric", "--class-order auto"),
    (["0", "20"], 12, "auto", r"remove the folder\(s\) 20"),
    (["0", "1", "2"], 2, "auto", r"remove the folders 2..2"),
    (["0"], 1, "bogus", "--class-order auto"),
])
def test_refusals_name_a_fix(folders, n, order, fix):
    with pytest.raises(DataError, match=fix) as e:
        match_classes(folders, None, n, order)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("trained", ["sorted", "numeric"])
def test_auto_picks_the_convention_the_model_predicts(tmp_path, net12, trained):
    model = load_model(net12, device="cpu")
    data = load_data(_folder(tmp_path, trained), model=model)
    assert data.class_map["10"] == (2 if trained == "sorted" else 10)
    assert "--class-order" in data.notes[-1] and "100.0%" in data.notes[-1]
    assert data.describe()["class_map"] == data.class_map
    if trained == "sorted":  # the model's outputs are ImageFolder's classes: named by their folders
        assert data.class_names[2] == "10" and model.class_names[2] == "10"
    else:
        assert model.spec.class_names is None


@pytest.mark.parametrize("order,expect", [("sorted", 2), ("numeric", 10)])
def test_class_order_forces_a_convention(tmp_path, net12, order, expect):
    data = load_data(_folder(tmp_path, "sorted"), model=load_model(net12, device="cpu"), class_order=order)
    assert data.class_map["10"] == expect


def test_without_a_model_numbers_are_numeric_with_a_note(tmp_path):
    data = load_data(_folder(tmp_path, "sorted"), num_classes=12)
    assert data.class_map["10"] == 10 and "--class-order sorted" in data.notes[-1]


def test_cli_records_the_map_in_results_and_reports(tmp_path, net12):
    out = tmp_path / "out"
    rc = main(["run", str(net12), "--data", str(_folder(tmp_path / "d", "sorted")), "--checks", "clean",
               "--out", str(out), "--quiet", "--class-order", "sorted"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["class_map"]["10"] == 2
    clean = next(c for c in res["checks"] if c["name"] == "clean")
    assert "100.0%" in clean["summary"]
    assert "Class map" in (out / "report.html").read_text() and "10 → 2" in (out / "report.html").read_text()
    assert "10 → 2" in (out / "summary.md").read_text()
    assert main(["run", str(net12), "--data", str(tmp_path / "d"), "--class-order", "bogus", "--out", str(out),
                 "--quiet"]) == 4
