"""Benchmark of the battery against the model's output count: a tiny CNN with K outputs.

The model is a tiny CNN (two 3x3 convolutions, 3x16x16 input: tests/tinymodels.py
``TinyNet``, trained in seconds on its 4 pattern classes) whose last layer is widened to K
outputs, K in ``--classes`` (default 10, 1000, 21843: CIFAR-10, ImageNet-1k and
ImageNet-21k sizes): the trained rows sit at 4 classes spread over the output range, the
others are small random rows. The data are ``--samples`` (20) generated pattern images
labelled with those 4 classes (the model gets most right, so the attacks have work). Every check of
the battery (``--checks``, default all registered) runs through the public API
(``audit.run_audit``), default options except ``--fast`` lighter ones (the bias check gets
the marker concept of tests/probes/test_bias.py), each K in a fresh
subprocess so that its peak resident memory (``resource.getrusage``, ``ru_maxrss``) is its
own.

Prints, per K: the model's own cost (``pass ms``: one forward and backward pass on the
20 images, which grows with K through the last layer whatever a check does), the wall time
of the whole run, the peak RSS, each check's time (``duration_s``) and ``save`` (writing
report.html, results.json and the rest); then the ratios to the first K, and, last, ``time_ratio=<largest K / first
K>`` and ``peak_rss_mib=<largest K>`` (the goal: within 2x of the 10-output run, under
2 GiB).

    python bench/classes.py [--classes 10,1000,21843] [--samples 20] [--checks all] [--fast]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: lighter options for a quick look (--fast): fewer steps and queries, same code paths
FAST = {"adversarial": {"budget": "fast"}, "fooling": {"steps": 20, "queries_per_class": 40},
        "class_viz": {"steps": 16}, "attribution": {"smoothgrad_samples": 8}, "bias": {"runs": 4}}


def one(k: int, samples: int, checks: list[str] | None, fast: bool, seed: int) -> dict:
    """Run the battery on a K-output tiny CNN; returns the per-check seconds, the wall time
    and the peak RSS (MiB) of this process."""
    import torch
    import torch.nn as nn

    from audit import AuditConfig, AuditData, AuditModel, ModelSpec, run_audit
    from tests.tinymodels import make_patterns, train_tiny

    tiny = train_tiny(seed)  # 4 pattern classes, trained in seconds (tests/tinymodels.py)
    labels = torch.tensor([round(i * (k - 1) / 3) for i in range(4)]) if k >= 4 else torch.arange(4) % k
    fc = nn.Linear(64, k)
    with torch.no_grad():  # the trained rows at the 4 label classes, small random rows elsewhere
        fc.weight.mul_(0.1)
        fc.bias.zero_()
        fc.weight[labels] = tiny.fc.weight
        fc.bias[labels] = tiny.fc.bias
    net = nn.Sequential(tiny.features, nn.Flatten(), fc).eval()
    for p in net.parameters():  # as load_model leaves them
        p.requires_grad_(False)
    names = [f"class_{i:05d}" for i in range(k)]
    model = AuditModel(net, ModelSpec(input_shape=(3, 16, 16), class_names=names)).finalize()
    x, y4 = make_patterns((samples + 3) // 4, seed=seed)
    x, y4 = x[:samples], y4[:samples]
    data = AuditData(x, labels[y4], names, [str(i) for i in range(len(y4))])
    opts = {c: dict(v) for c, v in (FAST if fast else {}).items()}
    if checks is None or "bias" in checks:  # a concept folder, so that the bias check runs
        from tests.probes.test_bias import write_concepts

        opts.setdefault("bias", {})["concepts"] = str(write_concepts(Path(tempfile.mkdtemp(prefix="classbench-"))
                                                                      / "concepts"))
    cfg = AuditConfig(checks=checks, seed=seed, check_options={c: v for c, v in opts.items()
                                                               if checks is None or c in checks})
    t0 = time.perf_counter()
    res = run_audit(model, data, cfg)
    wall = time.perf_counter() - t0
    t1 = time.perf_counter()
    res.save(tempfile.mkdtemp(prefix="classbench-out-"))  # report.html, results.json, ...
    save = time.perf_counter() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"k": k, "wall_s": wall, "peak_rss_mib": rss, "pass_ms": _pass_ms(model, x),
            "checks": {**{c.name: c.duration_s for c in res.checks}, "save": save},
            "errors": {c.name: c.error for c in res.checks if c.error}}


def _pass_ms(model, x) -> float:
    """Milliseconds of one forward and backward pass of the model on ``x`` (median of 20):
    the model's own cost, which grows with K through its last layer whatever a check does."""
    import statistics

    import torch

    times = []
    for _ in range(21):
        xg = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        torch.autograd.grad(model(xg).logsumexp(1).sum(), xg)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", default="10,1000,21843", help="comma-separated output counts")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--checks", default="all", help="comma-separated check names, or all")
    ap.add_argument("--fast", action="store_true", help="lighter options (fewer steps and queries)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per K before it is stopped")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child: run this K, print JSON
    args = ap.parse_args()
    checks = None if args.checks == "all" else [c.strip() for c in args.checks.split(",")]
    if args.one is not None:
        print(json.dumps(one(args.one, args.samples, checks, args.fast, args.seed)))
        return 0
    import torch

    rows = []
    for k in [int(v) for v in args.classes.split(",")]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(k), "--samples", str(args.samples),
               "--checks", args.checks, "--seed", str(args.seed)] + (["--fast"] if args.fast else [])
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"k": k, "wall_s": float("nan"), "peak_rss_mib": float("nan"), "pass_ms": float("nan"), "checks": {},
                         "errors": {"all": f"stopped after {args.timeout:.0f} s"}})
            continue
        if p.returncode:
            sys.exit(f"K={k}: exit {p.returncode}\n{p.stderr[-3000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    names = list(dict.fromkeys(c for r in rows for c in r["checks"]))
    print(f"battery on a tiny CNN (3x16x16), {args.samples} images; options: {'--fast' if args.fast else 'defaults'}; "
          f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}; "
          f"torch {torch.__version__}")
    print(f"{'K':>6s} {'pass ms':>8s} {'wall s':>8s} {'peak MiB':>9s}  " + " ".join(f"{c[:11]:>11s}" for c in names))
    for r in rows:
        print(f"{r['k']:6d} {r.get('pass_ms', float('nan')):8.2f} {r['wall_s']:8.1f} {r['peak_rss_mib']:9.0f}  "
              + " ".join(f"{r['checks'].get(c, float('nan')):11.2f}" for c in names))
        for c, e in r["errors"].items():
            print(f"       error in {c}: {e}")
    base = rows[0]
    print(f"ratio to K={base['k']}:")
    for r in rows[1:]:
        print(f"{r['k']:6d} {r['pass_ms'] / base['pass_ms']:8.2f} {r['wall_s'] / base['wall_s']:8.2f} "
              f"{r['peak_rss_mib'] / base['peak_rss_mib']:9.2f}  "
              + " ".join(f"{r['checks'].get(c, float('nan')) / max(base['checks'].get(c, float('nan')), 1e-9):11.2f}"
                         for c in names))
    print(f"time_ratio={rows[-1]['wall_s'] / base['wall_s']:.2f}")
    print(f"peak_rss_mib={rows[-1]['peak_rss_mib']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
