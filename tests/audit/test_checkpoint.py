"""--resume: a run interrupted midway picks up where it stopped, with the same numbers."""
import json

import pytest

from audit import registry
from audit.checkpoint import DIRNAME
from audit.cli import main
from audit.errors import ExitCode
from audit.registry import Check, register_check


class FlakyCheck(Check):
    """Test only: Ctrl-C on its first run, a metric afterwards."""

    description = "test only"
    calls = 0

    def run(self, ctx):
        from audit.results import CheckResult

        type(self).calls += 1
        if type(self).calls == 1:
            raise KeyboardInterrupt
        res = CheckResult(self.name)
        res.metric("saw_fooling_images", float("fooling.images" in ctx.published))
        return res


@pytest.fixture()
def flaky():
    FlakyCheck.calls = 0
    register_check("_test_flaky")(FlakyCheck)
    yield FlakyCheck
    registry._CHECKS.pop("_test_flaky")


def _metrics(out, name):
    d = json.loads((out / "results.json").read_text())
    return next(c for c in d["checks"] if c["name"] == name)["metrics"], d


def test_interrupted_run_resumes_and_matches_a_straight_run(flaky, model_files, pattern_folder, labels_file,
                                                            tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text("[checks.fooling]\nmethods = [\"gradient\"]\nsteps = 20\ngarbage_samples = 4\n")
    common = ["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--config", str(cfg), "--checks", "clean,fooling,_test_flaky", "-q"]
    out = tmp_path / "out"
    assert main(common + ["--out", str(out)]) == ExitCode.INTERRUPTED
    assert (out / DIRNAME / "clean.json").is_file() and (out / DIRNAME / "fooling.json").is_file()

    assert main(common + ["--out", str(out), "--resume"]) == ExitCode.OK
    _, d = _metrics(out, "clean")
    assert d["run"]["resumed"] == ["clean", "fooling"] and flaky.calls == 2
    # what fooling published before the interruption reached the check after it
    assert _metrics(out, "_test_flaky")[0][0]["value"] == 1.0
    for a in next(c for c in d["checks"] if c["name"] == "fooling")["artifacts"]:
        assert (out / a["path"]).is_file()

    straight = tmp_path / "straight"
    flaky.calls = 1  # no interruption this time
    assert main(common + ["--out", str(straight)]) == ExitCode.OK
    for name in ("clean", "fooling"):
        assert _metrics(out, name)[0] == _metrics(straight, name)[0]


def test_a_changed_seed_does_not_reuse(model_files, pattern_folder, labels_file, tmp_path):
    common = ["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--checks", "clean", "--samples", "12", "-q", "--out", str(tmp_path / "o")]
    assert main(common) == ExitCode.OK
    assert main(common + ["--resume"]) == ExitCode.OK
    assert json.loads((tmp_path / "o" / "results.json").read_text())["run"]["resumed"] == ["clean"]
    assert main(common + ["--resume", "--seed", "3"]) == ExitCode.OK
    assert json.loads((tmp_path / "o" / "results.json").read_text())["run"]["resumed"] == []


@pytest.mark.slow
def test_a_killed_process_resumes(model_files, pattern_folder, labels_file, tmp_path):
    """SIGKILL (no chance to write anything) after the first check finished: --resume reuses it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cfg = tmp_path / "audit.toml"
    cfg.write_text("[checks.fooling]\nmethods = [\"evolution_direct\"]\nqueries_per_class = 3000\nearly_stop = false\n")
    args = [sys.executable, "-m", "audit", "run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder),
            "--labels", str(labels_file), "--config", str(cfg), "--checks", "clean,fooling", "-q",
            "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / DIRNAME / "clean.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "results.json").exists() and not (out / DIRNAME / "fooling.json").exists()
    # resume, with a cheaper fooling so the test stays short (its options changed: it reruns)
    cfg.write_text("[checks.fooling]\nmethods = [\"gradient\"]\nsteps = 10\ngarbage_samples = 2\n")
    assert main(args[3:] + ["--resume"]) == ExitCode.OK
    d = json.loads((out / "results.json").read_text())
    assert d["run"]["resumed"] == ["clean"] and [c["name"] for c in d["checks"]] == ["clean", "fooling"]
