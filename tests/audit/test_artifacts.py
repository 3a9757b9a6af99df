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
