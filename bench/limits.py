"""Peak memory and outcome of `audit run` on hostile sizes, each in its own process.

Cases (all on the tests' tiny model, TinyNet 3x16x16, random weights; files built on the spot):

- ``long_name``: a labels file whose first class name is 10,000 characters (figures must
  shorten it; the results keep it whole);
- ``big_image``: one 12,000 x 12,000 PNG (144 MP) among the data, with ``--resize``: over the
  default limit of 89.5 MP, refused from its header (exit 4 naming the file);
- ``big_image_allowed``: the same with ``AUDIT_MAX_IMAGE_PIXELS=200000000``: decoded, reduced
  in 8-bit, then resized;
- ``bomb``: a 30,000 x 30,000 PNG (a few hundred KB on disk) among the data (refused from its
  header: exit 4 naming the file);
- ``baseline``: the same data without any of these.

Prints per case the exit code, the peak resident memory of the process (``ru_maxrss`` of the
child, its ``VmHWM``, MiB), the wall time, the size of ``report.html`` and the first line of stderr, then
``peak_max_mib=<largest>``. The goal (issue: faults and limits) is under 2 GiB for each.

    python bench/limits.py [--cases long_name,big_image,bomb,baseline] [--checks clean]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _model(d: Path) -> Path:
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.tinymodels import TinyNet

    p = d / "tiny.pt"
    torch.jit.trace(TinyNet().eval(), torch.rand(2, 3, 16, 16)).save(str(p))
    return p


def _data(d: Path, extra: str | None) -> Path:
    from PIL import Image

    root = d / f"data-{extra or 'plain'}"
    for k, cls in enumerate(("hstripes", "vstripes", "checker", "blob")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (40 * k, 60 * i, 100)).save(root / cls / f"{i}.png")
    if extra == "long_name":  # no folder can be named 10,000 characters: the class names come from --labels
        import numpy as np

        x = np.stack([np.asarray(Image.open(f), dtype=np.float32).transpose(2, 0, 1) / 255
                      for f in sorted(root.rglob("*.png"))])
        p = d / "long_name.npz"
        np.savez(p, x=x, y=np.repeat(np.arange(4), 4))
        return p
    if extra == "big_image":
        Image.new("RGB", (12000, 12000), (90, 30, 200)).save(root / "blob" / "big.png")
    elif extra == "bomb":
        Image.new("1", (30000, 30000)).save(root / "blob" / "bomb.png")
    return root


def run_case(case: str, d: Path, model: Path, checks: str) -> dict:
    data = _data(d, "big_image" if case.startswith("big_image") else case if case in ("bomb", "long_name") else None)
    labels = d / f"labels-{case}.txt"
    names = ["hstripes", "vstripes", "checker", "blob"]
    if case == "long_name":
        names[0] = "h" * 10_000
    labels.write_text("\n".join(names) + "\n")
    out = d / f"out-{case}"
    argv = [str(model), "--data", str(data), "--labels", str(labels), "--checks", checks, "-q", "--out", str(out),
            "--threads", "1"] + (["--resize"] if case.startswith("big_image") else [])
    status = d / f"{case}.status"
    # the child writes its own /proc status at exit: VmHWM is this process's peak resident memory
    # (ru_maxrss would carry the parent's peak over fork and exec)
    code = (f"import atexit, sys\natexit.register(lambda: open({str(status)!r}, 'w').write(open('/proc/self/status')"
            f".read()))\nfrom audit.cli import main\nsys.exit(main({['run', *argv]!r}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if case == "big_image_allowed":
        env["AUDIT_MAX_IMAGE_PIXELS"] = str(200_000_000)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    stderr = proc.stderr
    hwm = [ln for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")] if status.exists() else []
    peak = int(hwm[0].split()[1]) if hwm else float("nan")  # KiB
    report = out / "report.html"
    err = [ln for ln in stderr.splitlines() if ln.strip() and "cpp_extension" not in ln]
    return {"case": case, "rc": proc.returncode, "peak_mib": peak / 1024, "wall_s": wall,
            "report_kib": report.stat().st_size / 1024 if report.exists() else None,
            "stderr": err[0][:110] if err else ""}


def main(argv=None) -> float:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="baseline,long_name,big_image,big_image_allowed,bomb")
    ap.add_argument("--checks", default="clean")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="limits-") as tmp:
        d = Path(tmp)
        model = _model(d)
        for case in a.cases.split(","):
            rows.append(run_case(case, d, model, a.checks))
    print(f"{'case':<18} {'rc':>3} {'peak MiB':>9} {'wall s':>7} {'report KiB':>10}  stderr")
    for r in rows:
        peak = f"{r['peak_mib']:.0f}"
        rep = f"{r['report_kib']:.0f}" if r["report_kib"] is not None else "-"
        print(f"{r['case']:<18} {r['rc']:>3} {peak:>9} {r['wall_s']:>7.1f} {rep:>10}  {r['stderr']}")
    worst = max(r["peak_mib"] for r in rows)
    print(f"peak_max_mib={worst:.0f} (goal: under 2048)")
    return worst


if __name__ == "__main__":
    main()
