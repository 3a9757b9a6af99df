"""audit.artifacts: the one artifact writer, and that no artifact path leaves the output folder."""
import pytest

from audit.artifacts import UnsafeArtifactPath, write_artifacts
from audit.cli import main
from audit.errors import ExitCode, UsageError
from audit.results import Artifact, AuditResult, CheckResult

UNSAFE = ["../x.png", "/tmp/x.png", "artifacts/../../x.png", "..", "..\\x.png", "C:\\x.png", "\\\\host\\x.png", "",
          "."]


def _result(*paths: str) -> AuditResult:
    c = CheckResult("clean", artifacts=[Artifact("image", p, "") for p in paths])
    return AuditResult(model={"path": "m.pt"}, run={"seed": 0}, checks=[c])


def test_writes_memory_bytes_and_copies_from_base(tmp_path):
    base, out = tmp_path / "base", tmp_path / "out"
    (base / "artifacts" / "c").mkdir(parents=True)
    (base / "artifacts" / "c" / "old.png").write_bytes(b"old")
    arts = [Artifact("image", "artifacts/c/new.png", "", b"new"), Artifact("image", "artifacts/c/old.png", ""),
            Artifact("image", "artifacts/c/gone.png", "")]
    written = write_artifacts(arts, out, base=base)
    assert written == [out / "artifacts/c/new.png", out / "artifacts/c/old.png"]  # gone.png: no bytes, skipped
    assert (out / "artifacts/c/new.png").read_bytes() == b"new"
    assert (out / "artifacts/c/old.png").read_bytes() == b"old"
    assert write_artifacts(arts, tmp_path / "o2") == [tmp_path / "o2" / "artifacts/c/new.png"]  # no base: memory only


@pytest.mark.parametrize("path", UNSAFE)
def test_unsafe_path_is_refused_before_anything_is_written(tmp_path, path):
    out = tmp_path / "a" / "out"
    arts = [Artifact("image", "artifacts/c/ok.png", "", b"ok"), Artifact("image", path, "", b"evil")]
    with pytest.raises(UnsafeArtifactPath) as exc:
        write_artifacts(arts, out)
    msg = str(exc.value)
    assert repr(path) in msg and len(msg.splitlines()) == 1
    assert isinstance(exc.value, UsageError) and isinstance(exc.value, ValueError)
    assert not out.exists()  # not even the safe artifact listed first
    assert not (tmp_path / "a" / "x.png").exists()


def test_save_refuses_an_absolute_artifact_path(tmp_path):
    target = tmp_path / "elsewhere" / "x.png"
    res = _result("artifacts/clean/ok.png")
    res.checks[0].artifacts.append(Artifact("image", str(target), "", b"evil"))
    with pytest.raises(UnsafeArtifactPath):
        res.save(tmp_path / "out")
    assert not target.exists()


@pytest.mark.parametrize("path", ["../x.png", "/tmp/x.png"])
def test_report_never_writes_outside_out(tmp_path, capsys, path):
    """A results.json received from elsewhere names an artifact outside the folder."""
    src, out = tmp_path / "src", tmp_path / "deep" / "out"
    src.mkdir()
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # what src/../x.png reads
    (src / "results.json").write_text(_result("artifacts/clean/ok.png", path).to_json())
    (src / "artifacts" / "clean").mkdir(parents=True)
    (src / "artifacts" / "clean" / "ok.png").write_bytes(b"ok")
    rc = main(["report", str(src / "results.json"), "--out", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.USAGE_ERROR, err
    assert len(err.splitlines()) == 1 and err.startswith("audit: error: ") and repr(path) in err, err
    assert not (tmp_path / "deep" / "x.png").exists()  # out/../x.png
    assert sorted(p.name for p in out.rglob("*")) == []  # nothing written at all


def _received(tmp_path, *paths: str):
    src = tmp_path / "received"
    (src / "artifacts" / "clean").mkdir(parents=True, exist_ok=True)
    (src / "artifacts" / "clean" / "ok.png").write_bytes(b"ok")
    (src / "results.json").write_text(_result("artifacts/clean/ok.png", *paths).to_json())
    return src


def test_report_refuses_climbing_and_absolute_paths_in_one_line(tmp_path, capsys):
    """The issue's case: ``../../evil.txt`` and an absolute path in a received results.json."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out = tmp_path / "a" / "b" / "DIR"
    for path in ("../../evil.txt", str(victim)):
        src = _received(tmp_path, path)
        before = sorted(p for p in tmp_path.rglob("*"))
        for argv in (["report", str(src / "results.json"), "--out", str(out), "-q"],
                     ["report", str(src), "-q"]):  # re-rendered in place: nothing read from outside either
            rc = main(argv)
            err = capsys.readouterr().err.strip()
            assert rc == ExitCode.USAGE_ERROR, err
            assert len(err.splitlines()) == 1 and repr(path) in err and "Traceback" not in err, err
            assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
        assert victim.read_text() == "mine" and not (tmp_path / "a" / "evil.txt").exists()


def test_symlink_leading_out_of_the_folder_is_refused(tmp_path, capsys):
    """A folder of OUT (or of the received results) that is a symbolic link to elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "artifacts").mkdir(parents=True)
    (out / "artifacts" / "clean").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeArtifactPath, match="symbolic link"):
        write_artifacts([Artifact("image", "artifacts/clean/x.png", "", b"evil")], out)
    assert list(elsewhere.iterdir()) == []
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    src = _received(tmp_path, "artifacts/clean/leak.png")
    (src / "artifacts" / "clean" / "leak.png").symlink_to(secret)  # reading it would copy a file from outside
    rc = main(["report", str(src / "results.json"), "--out", str(tmp_path / "o2"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.USAGE_ERROR and len(err.splitlines()) == 1 and "leak.png" in err, err
    assert not (tmp_path / "o2" / "artifacts" / "clean" / "leak.png").exists()
    with pytest.raises(UnsafeArtifactPath):
        Artifact("image", "artifacts/clean/leak.png").read(src)
