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


def _resumed(out):
    return json.loads((out / "results.json").read_text())["run"]["resumed"]


def test_resume_never_reuses_numbers_of_other_pixels_or_load_options(model_files, pattern_folder, labels_file,
                                                                     tmp_path):
    """The fingerprint covers the pixels as loaded and every load option: images changed in
    place, or another --mean/--std, rerun the check (the old accuracy is never reported)."""
    import shutil

    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(pattern_folder, data)
    out = tmp_path / "o"
    common = ["run", str(model_files / "dyn.pt2"), "--data", str(data), "--labels", str(labels_file),
              "--checks", "clean", "-q", "--out", str(out)]
    main(common)
    assert main(common + ["--resume"]) in (ExitCode.OK, ExitCode.GATE_FAILED) and _resumed(out) == ["clean"]
    before = _metrics(out, "clean")[0]
    for f in sorted(data.rglob("*.png")):  # the same files, other pixels
        im = Image.open(f)
        Image.new(im.mode, im.size, (0,) * len(im.getbands())).save(f)
    main(common + ["--resume"])
    assert _resumed(out) == [] and _metrics(out, "clean")[0] != before
    main(common + ["--resume"])
    assert _resumed(out) == ["clean"]
    main(common + ["--resume", "--mean", "0.5", "--std", "0.25"])
    assert _resumed(out) == []


@pytest.mark.parametrize("content", ["null", "[]", "{}", '{"fingerprint": 3}', "not json {"])
def test_a_checkpoint_of_the_wrong_shape_is_recomputed(model_files, pattern_folder, labels_file, tmp_path, content):
    out = tmp_path / "o"
    common = ["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--checks", "clean", "--samples", "12", "-q", "--out", str(out)]
    main(common)
    (out / DIRNAME / "clean.json").write_text(content)
    assert main(common + ["--resume"]) in (ExitCode.OK, ExitCode.GATE_FAILED)
    assert _resumed(out) == [] and (out / "report.html").is_file()


def test_an_edited_checkpoint_is_recomputed(model_files, pattern_folder, labels_file, tmp_path):
    """A checkpoint whose values were edited (its content hash no longer matches) is not
    reused: the reported accuracy is the model's, not the edited one."""
    out = tmp_path / "o"
    common = ["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--checks", "clean", "--samples", "12", "-q", "--out", str(out)]
    main(common)
    p = out / DIRNAME / "clean.json"
    saved = json.loads(p.read_text())
    row = next(m for m in saved["result"]["metrics"] if m["name"] == "accuracy" and not m.get("qualifiers"))
    truth, row["value"] = row["value"], 0.123
    p.write_text(json.dumps(saved))
    main(common + ["--resume"])
    assert _resumed(out) == []
    assert next(m for m in _metrics(out, "clean")[0] if m["name"] == "accuracy" and not m.get("qualifiers"))["value"] == truth


@pytest.mark.parametrize("blocker", ["file", "dir"])
def test_an_unwritable_checkpoint_folder_is_not_fatal(model_files, pattern_folder, labels_file, tmp_path, blocker):
    """A file where the checkpoint folder goes, or a folder where a checkpoint file goes: the
    battery still runs and writes every output; resume simply reruns."""
    out = tmp_path / "o"
    out.mkdir()
    if blocker == "file":
        (out / DIRNAME).write_text("in the way")
    else:
        (out / DIRNAME / "clean.json").mkdir(parents=True)
    common = ["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--checks", "clean", "--samples", "12", "-q", "--out", str(out)]
    assert main(common) in (ExitCode.OK, ExitCode.GATE_FAILED)
    d = json.loads((out / "results.json").read_text())
    assert (out / "report.html").is_file() and "cannot write checkpoints" in d["run"]["checkpoint_error"]
    assert main(common + ["--resume"]) in (ExitCode.OK, ExitCode.GATE_FAILED) and _resumed(out) == []
