"""Sets larger than memory: images decoded on demand give the same numbers as loaded ones,
decode only what is asked for, and stay bounded."""
import threading

import numpy as np
import pytest
import torch

import audit.images as data_mod
from audit.data import load_data
from audit.lazydata import LazyImages, should_be_lazy


def test_lazy_images_index_like_a_tensor():
    x8 = torch.randint(0, 256, (11, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref, lazy = x8.float() / 255, LazyImages.from_uint8(x8)
    assert lazy.shape == ref.shape and len(lazy) == 11 and lazy.ndim == 4 and lazy.dtype == torch.float32
    mask = torch.zeros(11, dtype=torch.bool)
    mask[[1, 4, 9]] = True
    for idx in (3, -1, slice(2, 7), slice(None, None, 3), [5, 0, 5], torch.tensor([10, 2]), np.array([1, 2]),
                mask, torch.arange(0, 4), torch.tensor(6)):
        assert torch.equal(lazy[idx], ref[idx]), idx
    sub = lazy.take(torch.tensor([8, 3, 1]))
    assert torch.equal(sub[:], ref[[8, 3, 1]]) and torch.equal(sub[1], ref[3])
    with pytest.raises(IndexError):
        lazy[11]
    with pytest.raises(IndexError):
        lazy[torch.tensor([0, 12])]


def test_threshold_decides_and_env_overrides(monkeypatch):
    assert not should_be_lazy(1000, (3, 32, 32))  # 12 MB
    assert should_be_lazy(50_000, (3, 224, 224))  # ~30 GB
    monkeypatch.setenv("AUDIT_LAZY_BYTES", "1000")
    assert should_be_lazy(10, (3, 8, 8))
    assert not should_be_lazy(10, (3, 8, 8), lazy=False)


def _count_decodes(monkeypatch):
    calls = []
    real = data_mod.decode_image

    def counting(path, size=None, name=None):
        calls.append((path, threading.current_thread().name.startswith("audit-decode")))
        return real(path, size, name)

    monkeypatch.setattr(data_mod, "decode_image", counting)
    return calls


def test_a_lazy_folder_decodes_on_demand_and_equals_the_loaded_one(pattern_folder, monkeypatch):
    eager = load_data(pattern_folder, lazy=False)
    calls = _count_decodes(monkeypatch)
    lazy = load_data(pattern_folder, lazy=True)
    assert lazy.lazy and not eager.lazy
    assert len(calls) <= 2, "loading a lazy folder decodes the first image only (its shape, and a check)"
    assert any("decoded on demand" in n for n in lazy.notes) and lazy.describe()["decoded"] == "on demand"
    assert lazy.ids == eager.ids and torch.equal(lazy.y, eager.y)
    calls.clear()
    assert torch.equal(lazy.x[torch.tensor([3, 17])], eager.x[[3, 17]]) and len(calls) == 2
    assert torch.equal(lazy.x[:], eager.x)
    small = lazy.subset(torch.arange(0, 40, 5))  # small enough to hold: decoded once, a plain tensor
    assert isinstance(small.x, torch.Tensor) and torch.equal(small.x, eager.x[::5])


def test_uint8_tensor_files_stay_uint8(tmp_path, monkeypatch):
    x8 = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    torch.save({"x": x8, "y": torch.arange(6) % 3}, tmp_path / "d.pt")
    d = load_data(tmp_path / "d.pt", lazy=True)
    assert d.lazy and torch.equal(d.x[:], x8.float() / 255) and any("uint8" in n for n in d.notes)
    monkeypatch.setenv("AUDIT_LAZY_BYTES", str(10**12))
    assert not load_data(tmp_path / "d.pt").lazy  # small: loaded as float32 as before


def test_an_audit_of_a_lazy_set_gives_the_numbers_of_the_loaded_one(tiny_net, pattern_folder, monkeypatch):
    """The clean check (every image, batch by batch) and a check on a subset agree to the bit;
    the resume key is the files' identity, so a changed file changes it."""
    import os

    from audit import AuditModel, ModelSpec, run_audit
    from audit.checkpoint import content_key

    cfg = {"audit": {"checks": ["clean"], "batch_size": 7, "seed": 3}}
    model = AuditModel(tiny_net, ModelSpec(input_shape=(3, 16, 16))).finalize()
    eager = run_audit(model, load_data(pattern_folder, lazy=False), cfg)
    calls = _count_decodes(monkeypatch)
    lazy_data = load_data(pattern_folder, lazy=True)
    calls.clear()
    lazy = run_audit(model, lazy_data, cfg)
    assert lazy.frame.equals(eager.frame) and len(lazy.frame) > 3
    batched = sorted(str(p) for p, pooled in calls if pooled)  # the batch pass; the report's figures add a few
    assert len(batched) == len(set(batched)) == len(lazy_data), "the clean pass decodes each image once"
    key = content_key(model, lazy_data)
    f = sorted(pattern_folder.rglob("*.png"))[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert content_key(model, load_data(pattern_folder, lazy=True)) != key


def test_listed_images_load_lazily_too(tmp_path):
    """A CSV of paths and labels (audit.dataforms) goes through the same decoder."""
    from PIL import Image

    rows = ["path,label"]
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    eager, lazy = (load_data(tmp_path / "set.csv", lazy=v) for v in (False, True))
    assert lazy.lazy and torch.equal(lazy.x[:], eager.x) and torch.equal(lazy.y, eager.y) and lazy.ids == eager.ids


def test_a_listed_set_says_how_its_labels_were_read(tmp_path):
    """class_map_how (what `audit inspect` prints as the class map) for a CSV set is how its
    labels were read, not the tensor file's wording."""
    from PIL import Image

    rows = ["path,label"] + [f"{i}.png,{i % 2}" for i in range(4)]
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 50 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "set.csv").write_text("\n".join(rows) + "\n")
    d = load_data(tmp_path / "set.csv")
    assert d.class_map_how.startswith("labels read as") and d.class_map_how in d.notes
