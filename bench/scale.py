"""Benchmark of scale-out: the default battery on the demo, in 1 and 2 processes.

Runs ``audit demo`` (every registered check, default options) as the CLI does, with work
units of ``--batch-size`` samples (16 by default, so the 96 demo images make several units
per check), in these set-ups on this machine:

- ``1 process x T threads`` (T = ``--threads``, default the number of cores),
- ``1 process x 1 thread``,
- ``torchrun --nproc-per-node 2``, 1 thread each (gloo),
- ``1 process on the GPU``, when torch sees one.

For each: wall time of the whole command (start-up and the demo data included), samples per
second (demo images / wall time), per-check seconds from results.json, and whether the
metrics equal those of the 1-process, 1-thread run (timings excluded; the same per-process
thread count is what makes CPU results bit-identical, since the thread count changes the
order of float reductions). Prints ``speedup_2proc_vs_1thread=<t/t2>`` and
``speedup_2proc_vs_best=<t/t2>`` last (the best single-process CPU time).

    python bench/scale.py [--samples-per-class 16] [--batch-size 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out: Path) -> list:
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not any(k in r["name"] for k in ("seconds", "per_s"))]
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def run(label: str, cmd: list[str], out: Path, env: dict) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):  # 1: a demo gate failed, which is the demo's point
        sys.exit(f"{label}: exit {p.returncode}\n{p.stderr[-3000:]}")
    res = json.loads((out / "results.json").read_text())
    return {"label": label, "wall_s": wall, "checks": {c["name"]: c["duration_s"] for c in res["checks"]},
            "metrics": _metrics(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples-per-class", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scalebench-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUDIT_DIST_TIMEOUT": "1800"}
    demo = ["demo", "-q", "--samples-per-class", str(args.samples_per_class), "--batch-size", str(args.batch_size)]
    py = [sys.executable, "-m", "audit"]
    runs = []
    for label, threads in ((f"1 process x {args.threads} threads", args.threads), ("1 process x 1 thread", 1)):
        out = tmp / f"p1t{threads}"
        runs.append(run(label, py + demo + ["--device", "cpu", "--threads", str(threads), "--out", str(out)], out,
                        {**env, "OMP_NUM_THREADS": str(threads)}))
    out = tmp / "p2"
    runs.append(run("torchrun 2 processes x 1 thread",
                    [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                     "127.0.0.1", "--master-port", str(_port()), "-m", "audit"] + demo
                    + ["--device", "cpu", "--threads", "1", "--out", str(out)], out, {**env, "OMP_NUM_THREADS": "1"}))
    import torch

    if torch.cuda.is_available():
        out = tmp / "gpu"
        runs.append(run("1 process, GPU", py + demo + ["--device", "cuda", "--out", str(out)], out, env))
    n = args.samples_per_class * 6
    ref = runs[1]["metrics"]  # 1 process x 1 thread: the torchrun ranks run 1 thread each
    names = list(runs[0]["checks"])
    print(f"demo battery, {n} images, work units of {args.batch_size}; {os.cpu_count()} CPU cores; torch {torch.__version__}")
    print(f"{'set-up':34s} {'wall s':>7s} {'samples/s':>9s}  same metrics  " + " ".join(f"{c[:11]:>11s}" for c in names))
    for r in runs:
        same = "yes" if r["metrics"] == ref else ("n/a (GPU)" if "GPU" in r["label"] else
                                                 "no (threads)" if r is runs[0] else "NO")
        print(f"{r['label']:34s} {r['wall_s']:7.1f} {n / r['wall_s']:9.2f}  {same:12s}  "
              + " ".join(f"{r['checks'].get(c, float('nan')):11.1f}" for c in names))
    print(f"speedup_2proc_vs_1thread={runs[1]['wall_s'] / runs[2]['wall_s']:.2f}")
    print(f"speedup_2proc_vs_best={min(r['wall_s'] for r in runs[:2]) / runs[2]['wall_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
