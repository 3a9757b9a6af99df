"""Evaluation sets of any size: peak memory and throughput of `audit run --checks clean` on a
folder of JPEGs, against torchvision's ImageFolder + DataLoader reading the same files.

    python bench/data.py                 # 50,000 256 px JPEGs at 224 px (issue 17's setting)
    python bench/data.py --n 2000        # a quick look

Generates the images once under --root (10 class folders of smooth random shapes, JPEG
quality 90, cached between runs), saves a small TorchScript CNN taking 3x224x224, then runs,
each in its own process, (a) this project's CLI on the folder with ``--resize --checks clean``
(the images decoded on demand, :mod:`audit.lazydata`) and (b) the peer: ``ImageFolder`` with
``Resize((224, 224)) + ToTensor`` and a ``DataLoader`` (batch 256, one worker per core) feeding
the same model. Prints images/s, wall seconds and peak resident memory (max RSS of the process,
workers included) for both, and their ratios. Both times run from before torch is imported
to the last image scored: ours includes loading and probing the model, listing the folder and
writing the clean check's reports, the peer its loop. Goal (issue 17): at least 1/1.2 of the peer's
throughput, under 4 GiB peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def _make_one(args) -> None:
    path, seed, size = args
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
        d.ellipse((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    im.save(path, quality=90)


def make_images(root: Path, n: int, size: int) -> Path:
    """``n`` JPEGs of ``size`` px in ``CLASSES`` folders under ``root/n{n}-{size}`` (kept)."""
    from multiprocessing import Pool

    folder = root / f"n{n}-{size}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    jobs = []
    for i in range(n):
        d = folder / f"class{i % CLASSES:02d}"
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((d / f"{i:06d}.jpg", i, size))
    t = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(_make_one, jobs, chunksize=256)
    done.write_text(f"{n} images in {time.perf_counter() - t:.0f} s\n")
    return folder


def make_model(path: Path, crop: int) -> None:
    import warnings

    import torch
    import torch.nn as nn

    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notice
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, CLASSES)).eval()
    torch.jit.save(torch.jit.trace(net, torch.rand(2, 3, crop, crop)), str(path))


_OURS = """
import resource, sys, time
from audit.cli import main
t = time.perf_counter()
rc = main({args!r})
wall = time.perf_counter() - t
kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print("RESULT", rc, wall, kib)
"""

_PEER = """
import resource, time
t = time.perf_counter()  # as for ours: the imports, the model's load and the listing count
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
model = torch.jit.load({model!r}).eval()
ds = datasets.ImageFolder({folder!r}, transform=transforms.Compose([transforms.Resize(({crop}, {crop})),
                                                                    transforms.ToTensor()]))
correct = n = 0
with torch.no_grad():
    for x, y in DataLoader(ds, batch_size=256, num_workers={workers}):
        correct += int((model(x).argmax(1) == y).sum()); n += len(y)
wall = time.perf_counter() - t
kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("RESULT", 0, wall, kib)
"""


def _run(code: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        raise SystemExit(f"benchmark process failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    _, rc, wall, kib = line.split()
    return {"exit": int(rc), "seconds": float(wall), "peak_gib": int(kib) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=256, help="generated image side, pixels")
    ap.add_argument("--crop", type=int, default=224, help="the model's input side, pixels")
    ap.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "audit-bench-data"))
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args()
    folder = make_images(Path(a.root), a.n, a.size)
    work = Path(tempfile.mkdtemp(prefix="audit-bench-data-"))
    model = work / "model.pt"
    make_model(model, a.crop)
    ours = _run(_OURS.format(args=["run", str(model), "--data", str(folder), "--input-size", f"3x{a.crop}x{a.crop}",
                                   "--resize", "--checks", "clean", "-q", "--out", str(work / "out")]))
    peer = _run(_PEER.format(model=str(model), folder=str(folder), crop=a.crop, workers=os.cpu_count()))
    rows = {"audit run --checks clean": ours, "ImageFolder + DataLoader": peer}
    print(f"{a.n:,} JPEGs of {a.size} px at {a.crop} px, {os.cpu_count()} cores, torch {__import__('torch').__version__}")
    print(f"{'':28s} {'images/s':>9s} {'seconds':>8s} {'peak GiB':>9s}")
    for name, r in rows.items():
        r["images_per_s"] = a.n / r["seconds"]
        print(f"{name:28s} {r['images_per_s']:9.0f} {r['seconds']:8.1f} {r['peak_gib']:9.2f}")
    ratio = ours["images_per_s"] / peer["images_per_s"]
    print(f"throughput ratio (ours / peer): {ratio:.2f} (goal >= {1 / 1.2:.2f}); "
          f"peak: {ours['peak_gib']:.2f} GiB (goal < 4)")
    if ours["exit"] not in (0, 1):
        print(f"note: audit run exited {ours['exit']}")
    if a.json:
        Path(a.json).write_text(json.dumps({"n": a.n, "size": a.size, "crop": a.crop, "rows": rows,
                                            "throughput_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
