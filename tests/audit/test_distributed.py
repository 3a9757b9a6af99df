"""torch.distributed: `torchrun -m audit run` on 2 CPU processes (gloo) gives the result of a
single process; a failing rank fails the whole run with its message, never a hang; an
interrupted check resumes from its finished work units."""
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from audit import distributed as D
from audit.cli import main
from audit.errors import ExitCode
from tests.tinymodels import RankBomb

pytestmark = pytest.mark.slow  # real subprocesses / the whole demo


ROOT = Path(__file__).resolve().parents[2]

from tests.fast_config import FAST_CONFIG as CONFIG  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUDIT_DIST_TIMEOUT": "120", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "audit", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _metrics(out: Path) -> list[dict]:
    """Every metric row except timings (wall-clock numbers differ between any two runs)."""
    with open(out / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if not any(k in r["name"] for k in ("seconds", "per_s"))]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


@pytest.fixture(scope="module")
def dist_config(tmp_path_factory):
    p = tmp_path_factory.mktemp("distcfg") / "audit.toml"
    p.write_text(CONFIG)
    return p


def test_two_gloo_processes_give_the_single_process_result(model_files, pattern_folder, labels_file, dist_config,
                                                           tmp_path):
    common = [str(model_files / "ts.pt"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--config", str(dist_config), "--device", "cpu", "--threads", "1", "-q",
              "--checks", "clean,adversarial,fooling,class_viz,attribution,bias"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["run", *common, "--out", str(one)]) == ExitCode.OK
    p = _torchrun(["run", *common, "--out", str(two)])
    assert p.returncode == 0, p.stderr[-3000:]
    r1, r2 = (json.loads((o / "results.json").read_text()) for o in (one, two))
    assert r1["run"]["world_size"] == 1 and r2["run"]["world_size"] == 2
    assert [c["status"] for c in r2["checks"]] == [c["status"] for c in r1["checks"]]
    assert all(c["status"] != "error" for c in r2["checks"]), [c.get("error") for c in r2["checks"]]
    # the sharded checks really had several units to split
    assert len(_metrics(one)) > 100 and _metrics(one) == _metrics(two)
    for a, b in zip(r1["checks"], r2["checks"]):
        assert [f["code"] for f in a["findings"]] == [f["code"] for f in b["findings"]], a["name"]
        assert a.get("data", {}).get("pictures") == b.get("data", {}).get("pictures")
    # only rank 0 wrote: one report, no stray files from rank 1
    assert sorted(x.name for x in two.iterdir()) == sorted(x.name for x in one.iterdir())


@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_a_failing_rank_fails_the_run_with_its_message(tiny_net, pattern_folder, labels_file, tmp_path, mode):
    """rank 1's model fails partway (a Python error, or the process dies): the run ends
    promptly with a non-zero exit and rank 1's message, and no report pretends otherwise."""
    f = tmp_path / "bomb.pt"
    torch.save(RankBomb(tiny_net, rank=1, mode=mode, after=7), f)  # 6 calls of the load-time probes, then 1
    t0 = time.perf_counter()
    p = _torchrun(["run", str(f), "--trust", "--data", str(pattern_folder), "--labels", str(labels_file),
                   "--device", "cpu", "--batch-size", "4", "--checks", "clean", "-q", "--out", str(tmp_path / "o")],
                  timeout=180)
    assert p.returncode != 0
    assert time.perf_counter() - t0 < 150
    if mode == "raise":
        assert "rank 1" in p.stderr and "boom on rank 1" in p.stderr, p.stderr[-2000:]
        assert "audit[rank 0]: internal error: ShardError: rank 1" in p.stderr
    else:  # torchrun names rank 1 and its exit code (rank 0 is told its peer died, or is stopped first)
        assert "rank      : 1" in p.stderr and "exitcode  : 7" in p.stderr, p.stderr[-2000:]


def test_a_failing_verdict_still_writes_the_report(model_files, pattern_folder, labels_file, tmp_path):
    """A failed gate ends every rank with exit 1; rank 0 has written everything first (the
    ranks meet once more after the writing, so torchrun does not stop rank 0 mid-write)."""
    cfg = tmp_path / "gates.toml"
    cfg.write_text('[gates]\n"clean.accuracy" = ">= 1.5"\n')
    out = tmp_path / "o"
    p = _torchrun(["run", str(model_files / "ts.pt"), "--data", str(pattern_folder), "--labels", str(labels_file),
                   "--config", str(cfg), "--device", "cpu", "--batch-size", "8", "--checks", "clean", "-q",
                   "--out", str(out)])
    assert p.returncode != 0 and "exitcode  : 1" in p.stderr, p.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "fail" and (out / "report.html").is_file() and (out / "junit.xml").is_file()


def test_ranks_out_of_step_stop_together_and_keep_the_report(tiny_net, pattern_folder, labels_file, dist_config,
                                                            tmp_path):
    """rank 1 fails in the adversarial check *outside* a work unit (its first forward pass of
    the ε=0 sanity test), so it skips the units rank 0 waits on: both notice at the next
    exchange, stop the battery, and rank 0 still writes the report with the error."""
    f = tmp_path / "bomb.pt"
    torch.save(RankBomb(tiny_net, rank=1, mode="raise", after=8), f)  # 6 load-time probe calls + its 2 of the clean logits
    out = tmp_path / "o"
    p = _torchrun(["run", str(f), "--trust", "--data", str(pattern_folder), "--labels", str(labels_file),
                   "--config", str(dist_config), "--device", "cpu", "--checks", "clean,adversarial,fooling", "-q",
                   "--out", str(out)], timeout=180)
    assert p.returncode != 0, p.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    adv = next(c for c in res["checks"] if c["name"] == "adversarial")
    assert adv["status"] == "error" and "fell out of step" in adv["error"], adv["error"]
    assert "boom on rank 1" in adv["error"]
    assert [c["name"] for c in res["checks"]] == ["clean", "adversarial"]  # the battery stopped there


def test_units_split_over_ranks_and_merge_in_order():
    """The unit-to-rank split and the merge, without processes: each fake rank runs its
    units; the merged list is the single-process list."""
    calls = []

    def fn(k, gen):
        calls.append(k)
        return {"k": k, "r": float(torch.rand(1, generator=gen))}

    single = D.map_units(D.World(), 7, fn, seed=3, tag="t")
    assert calls == list(range(7)) and [r["k"] for r in single] == list(range(7))
    calls.clear()

    class FakeWorld(D.World):
        def gather(self, obj):  # what all_gather would return: every rank's own units, same label
            label, _ = obj
            parts = []
            for r in range(self.size):
                mine = {k: fn(k, torch.Generator().manual_seed(D.unit_seed(3, "t", k))) for k in range(r, 7, self.size)}
                parts.append((label, (mine, "")))
            return parts

    merged = D.map_units(FakeWorld(rank=0, size=3), 7, lambda k, g: None, seed=3, tag="t")
    assert merged == single  # the random draws belong to the unit, not to the rank
    assert D.unit_seed(3, "t", 1) != D.unit_seed(3, "t", 2) != D.unit_seed(4, "t", 2)

    class Behind(D.World):  # rank 1 stands at another exchange
        def gather(self, obj):
            return [obj, ("check-end:adversarial", "RuntimeError: boom")]

    with pytest.raises(D.DesyncError, match="rank 1 at 'check-end:adversarial'.*boom"):
        D.map_units(Behind(rank=0, size=2), 3, lambda k, g: k, seed=0, tag="t", where="adversarial")


def test_interrupted_check_resumes_from_its_finished_units(model_files, pattern_folder, labels_file, dist_config,
                                                           tmp_path, monkeypatch):
    """Ctrl-C in the middle of the adversarial check: the units finished before are on disk;
    --resume computes only the others and ends with the numbers of a straight run."""
    from attacks.adversarial.check import AdversarialCheck

    common = ["run", str(model_files / "ts.pt"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--config", str(dist_config), "--device", "cpu", "--checks", "clean,adversarial", "-q"]
    straight = tmp_path / "straight"
    assert main(common + ["--out", str(straight)]) == ExitCode.OK

    real = AdversarialCheck.compute
    seen = []

    def compute(self, unit, ctx, gen):
        seen.append(int(unit.payload[0]))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(self, unit, ctx, gen)

    monkeypatch.setattr(AdversarialCheck, "compute", compute)
    out = tmp_path / "out"
    assert main(common + ["--out", str(out)]) == ExitCode.INTERRUPTED
    units = sorted((out / ".audit-checkpoint" / "adversarial").glob("samples-*.pt"))
    assert [u.name for u in units] == ["samples-0.pt", "samples-1.pt"]

    seen.clear()
    assert main(common + ["--out", str(out), "--resume"]) == ExitCode.OK
    assert seen == [16]  # 24 samples in units of 8: only the third unit ran again
    assert _metrics(out) == _metrics(straight)
    assert not (out / ".audit-checkpoint" / "adversarial").exists()  # dropped once the check is checkpointed

    # units do not depend on the number of processes: a run interrupted in one process
    # resumes under torchrun with two, and still gives the straight run's numbers
    seen.clear()
    out2 = tmp_path / "out2"
    assert main(common + ["--out", str(out2)]) == ExitCode.INTERRUPTED
    assert len(list((out2 / ".audit-checkpoint" / "adversarial").glob("samples-*.pt"))) == 2
    p = _torchrun(common + ["--out", str(out2), "--resume", "--threads", "1"])
    assert p.returncode == 0, p.stderr[:3000]
    assert _metrics(out2) == _metrics(straight)


def test_batch_size_is_part_of_the_fingerprint():
    """The batch size cuts the units (and so fixes their generators): units saved with one
    batch size are never reused under another."""
    from audit.checkpoint import fingerprint

    kw = dict(content="x", seed=0, check="adversarial", options={}, version="1")
    assert fingerprint(**kw, batch_size=8) != fingerprint(**kw, batch_size=6)
    assert fingerprint(**kw, batch_size=8) == fingerprint(**kw, batch_size=8)


def test_device_choice_under_torchrun(monkeypatch):
    """Launched by torchrun, a process takes its own GPU; naming one GPU for all is an error."""
    from audit.errors import UsageError
    from audit.model import resolve_device

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(UsageError, match="each process takes its own GPU"):
        resolve_device("cuda:0")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    else:
        assert resolve_device("auto") == torch.device("cuda", 1 % torch.cuda.device_count())
