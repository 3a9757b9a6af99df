import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(2)

from tests.tinymodels import PATTERNS, compile_as, make_patterns, save_compiled, train_tiny  # noqa: E402


def write_imagefolder(root: Path, x: torch.Tensor, y: torch.Tensor, names) -> Path:
    from PIL import Image

    for i, (img, c) in enumerate(zip(x, y.tolist())):
        d = root / names[c]
        d.mkdir(parents=True, exist_ok=True)
        a = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        Image.fromarray(a).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one intra-op thread (small ops spend their time in thread
    barriers, worse on a busy machine); the setting is restored after the module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_net():
    return train_tiny()


@pytest.fixture(scope="session")
def pattern_data():
    return make_patterns(10, seed=7)


@pytest.fixture(scope="session")
def pattern_folder(tmp_path_factory, pattern_data):
    x, y = pattern_data
    return write_imagefolder(tmp_path_factory.mktemp("patterns"), x, y, PATTERNS)


@pytest.fixture(scope="session")
def labels_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("labels") / "labels.txt"
    p.write_text("\n".join(PATTERNS) + "\n")
    return p


@pytest.fixture(scope="session")
def model_files(tmp_path_factory, tiny_net):
    """The tiny model saved in every supported format."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("models")
    ex = torch.rand(2, 3, 16, 16)
    save_compiled(compile_as(tiny_net, "torchscript", ex), d / "ts.pt")
    save_compiled(compile_as(tiny_net, "export", ex, dynamic_batch=True), d / "dyn.pt2")
    save_compiled(compile_as(tiny_net, "export", torch.rand(3, 3, 16, 16)), d / "static.pt2")
    torch.save(tiny_net.state_dict(), d / "sd.pth")
    torch.save({"epoch": 3, "model_state_dict": tiny_net.state_dict()}, d / "ckpt.pt")
    save_file({k: v.contiguous() for k, v in tiny_net.state_dict().items()}, d / "w.safetensors")
    torch.save(tiny_net, d / "pickle.pt")
    return d


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`audit demo` once per test session (every registered check on the bundled model)."""
    from audit.cli import main

    out = tmp_path_factory.mktemp("demo") / "out"
    rc = main(["demo", "--out", str(out), "-q"])
    return out, rc
