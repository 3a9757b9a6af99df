"""audit.outputs and the CLI's signal handling: outputs change all together or not at all,
SIGTERM is Ctrl-C, a start-up interruption is one line, one writer per folder."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import reports
from audit.errors import ExitCode
from audit.outputs import STAGING_PREFIX, OutputError, lock_out
from audit.results import Artifact, AuditResult, CheckResult

FILES = ("results.json", "report.html", "metrics.csv", "junit.xml", "summary.md")


def _result(tag: str) -> AuditResult:
    c = CheckResult("clean", artifacts=[Artifact("image", f"artifacts/clean/{tag}.png", "", b"\x89PNG" + tag.encode())])
    c.metric("accuracy", 0.5 if tag == "old" else 0.9)
    return AuditResult(model={"path": f"{tag}.pt"}, run={"seed": 0}, checks=[c])


def _snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fault", ["interrupt", "disk_full"])
def test_a_failed_write_leaves_the_previous_run_whole(tmp_path, monkeypatch, fault):
    """Ctrl-C or a full disk while the new outputs are written (here: at report.html, after
    results.json and the artifacts were rendered): the older run's files are all still there,
    unchanged, and nothing temporary is left. A full disk is OutputError (exit 3) naming it."""
    out = tmp_path / "out"
    _result("old").save(out)
    before = _snapshot(out)
    assert set(FILES) <= set(before) and "artifacts/clean/old.png" in before
    real = reports._write_text

    def failing(path, text):
        if path.name == "report.html":
            if fault == "interrupt":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(reports, "_write_text", failing)
    if fault == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            _result("new").save(out)
    else:
        with pytest.raises(OutputError, match="no space left on device") as e:
            _result("new").save(out)
        assert e.value.exit_code == ExitCode.INTERNAL_ERROR
    assert _snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".audit-")]


def test_a_new_run_replaces_every_output_of_the_old_one(tmp_path):
    out = tmp_path / "out"
    _result("old").save(out)
    _result("new").save(out)
    files = _snapshot(out)
    assert "artifacts/clean/new.png" in files and "artifacts/clean/old.png" not in files  # no stale artifact
    assert json.loads(files["results.json"])["model"]["path"] == "new.pt"
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_a_second_audit_into_the_same_folder_is_refused(tmp_path):
    """One writer per folder: while another process holds the folder, `audit run` is exit 4
    with one line naming that process; once it is gone, the folder is free again."""
    from audit.cli import main

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from audit.outputs import lock_out; "
                               f"lock_out({str(out)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception) as e:
            lock_out(out)
        assert f"pid {holder.pid}" in str(e.value) and "another --out" in str(e.value)
        assert main(["run", "nothing.pt", "--out", str(out), "-q"]) == ExitCode.USAGE_ERROR
    finally:
        holder.kill()
        holder.wait()
    lock_out(out)  # free again (and now held by this process, which may take it again)
    lock_out(out)
    from audit.outputs import release_locks

    release_locks()  # as the CLI does when a command ends: another process may take it now
    taker = subprocess.run([sys.executable, "-c", f"from audit.outputs import lock_out; lock_out({str(out)!r})"],
                           capture_output=True, text=True)
    assert taker.returncode == 0, taker.stderr


def _default_ctrl_c() -> None:
    """In the child before exec: Ctrl-C's default disposition, as in a terminal. A test run started
    in the background of a non-interactive shell (`cmd &`, `nohup`) inherits SIGINT ignored, and a
    program started so keeps it ignored (as it should), which no Ctrl-C test can then observe."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "audit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_default_ctrl_c, **kw)


def _importing_torch(pid):
    """True once the process has mapped torch's shared library: the interpreter is up and running
    the CLI's imports (a signal before that lands in Python's own start-up, which no program handles)."""
    try:
        return "libtorch" in open(f"/proc/{pid}/maps").read()
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc to see when the CLI starts importing")
def test_an_interrupted_start_up_is_one_line_and_exit_2(tmp_path):
    """Ctrl-C while the CLI is still importing torch and loading: exit 2, one line, no traceback.
    The signal is sent once the child has begun importing torch, after a delay that shrinks on each
    try; start-up may still end first on a fast machine (exit 4: the model file is missing)."""
    interrupted = 0
    for delay in (0.2, 0.05, 0.0):
        proc = _cli(["run", "nothing.pt", "--out", str(tmp_path / "o")])
        deadline = time.time() + 60
        while not _importing_torch(proc.pid) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and proc.returncode in (ExitCode.INTERRUPTED, ExitCode.USAGE_ERROR), err
        if proc.returncode == ExitCode.INTERRUPTED:
            assert err.strip().splitlines() == ["audit: interrupted"]
            interrupted += 1
    assert interrupted, "start-up always ended before the signal"


@pytest.mark.slow
def test_sigterm_writes_what_finished_like_ctrl_c(model_files, pattern_folder, labels_file, tmp_path):
    """SIGTERM (CI cancelling the job, `timeout`) after the first check: exit 2, and the report
    and results of what finished are written, as after Ctrl-C."""
    from audit.checkpoint import DIRNAME

    out = tmp_path / "out"
    cfg = tmp_path / "audit.toml"
    cfg.write_text("[checks.fooling]\nmethods = [\"evolution_direct\"]\nqueries_per_class = 3000\nearly_stop = false\n")
    proc = _cli(["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
                 "--config", str(cfg), "--checks", "clean,fooling", "-q", "--out", str(out), "--threads", "1"])
    deadline = time.time() + 120
    while not (out / DIRNAME / "clean.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    d = json.loads((out / "results.json").read_text())
    assert d["interrupted"] is True and [c["name"] for c in d["checks"]][0] == "clean"
    assert (out / "report.html").is_file() and "Traceback" not in err
