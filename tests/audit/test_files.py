"""Only regular files are read as models, labels, sidecars, configs, data or results: a FIFO
or a link to /dev/zero is refused at once (exit code 4, one line), never hashed or read
forever. Each test runs under an alarm, so a regression fails instead of hanging."""
import contextlib
import os
import signal

import numpy as np
import pytest

from audit.cli import main
from audit.config import AuditConfig
from audit.data import load_data
from audit.errors import ConfigError, DataError, ExitCode, ModelLoadError, UsageError
from audit.files import regular_file
from audit.model import load_model, read_labels, read_sidecar, sha256_file

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                                reason="needs FIFOs and /dev/zero")


@contextlib.contextmanager
def _deadline(seconds: int = 20):
    """Turn a hang into a failure: SIGALRM interrupts a blocked open() or read()."""
    def boom(*_):
        raise TimeoutError(f"still blocked after {seconds} s: a non-regular file was opened")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(params=["fifo", "dev_zero", "dev_urandom"])
def special(request, tmp_path):
    """A path that is not a regular file: a FIFO nobody writes to, or a link to an endless device."""
    def make(name: str):
        p = tmp_path / name
        if request.param == "fifo":
            os.mkfifo(p)
        else:
            p.symlink_to("/dev/zero" if request.param == "dev_zero" else "/dev/urandom")
        return p

    return make


def test_regular_file_refuses_at_once(special, tmp_path):
    p = special("thing.bin")
    with _deadline(), pytest.raises(UsageError, match="not a regular file") as exc:
        regular_file(p, "thing")
    assert str(p) in str(exc.value) and len(str(exc.value).splitlines()) == 1
    with _deadline(), pytest.raises(UsageError):
        sha256_file(p)
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(UsageError, match="big.txt has 2,048 bytes, more than the 1,024"):
        regular_file(big, "labels file", max_bytes=1024)
    assert regular_file(big, "labels file") == big


def test_the_deadline_turns_a_hang_into_a_failure(tmp_path):
    os.mkfifo(tmp_path / "f")
    with pytest.raises(TimeoutError), _deadline(1):
        open(tmp_path / "f", "rb")


def test_model_labels_sidecar_config_and_data_are_refused(special):
    with _deadline():
        with pytest.raises(ModelLoadError, match="model file .*not a regular file"):
            load_model(special("model.pt"), arch="gymnet", num_classes=2, device="cpu")
        with pytest.raises(UsageError, match="labels file .*not a regular file"):
            read_labels(special("labels.txt"))
        with pytest.raises(UsageError, match="model sidecar .*not a regular file"):
            read_sidecar(special("model.json"))
        with pytest.raises(ConfigError, match="config file .*not a regular file"):
            AuditConfig.load(special("audit.toml"))
        with pytest.raises(DataError, match="data file .*not a regular file"):
            load_data(special("val.npz"))


def test_a_special_file_inside_a_data_folder_is_named(special, tmp_path):
    from PIL import Image

    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir()
    for c in "ab":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "data" / c / "0.png")
    stuck = special("data/b/1.png")
    with _deadline(), pytest.raises(DataError, match="not a regular file") as exc:
        load_data(tmp_path / "data")
    assert str(stuck) in str(exc.value)


@pytest.mark.parametrize("what", ["model", "config", "results"])
def test_cli_one_line_exit_4(special, tmp_path, capsys, what):
    p = special("x")
    argv = {"model": ["run", str(p), "--arch", "gymnet", "--num-classes", "2", "--device", "cpu"],
            "config": ["run", str(tmp_path / "m.pt"), "--config", str(p)],
            "results": ["report", str(p)]}[what]
    with _deadline():
        rc = main(argv + ["--out", str(tmp_path / "out"), "-q"] if what != "results" else argv + ["-q"])
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.USAGE_ERROR, err
    assert len(err.splitlines()) == 1 and "not a regular file" in err and str(p) in err, err


def test_a_file_name_that_is_not_utf8_loads_fingerprints_and_is_shown_escaped(tmp_path):
    """b'\\xff.png' in a class folder: the run works; the sample id shows the byte escaped."""
    from PIL import Image

    from audit.checkpoint import content_key, fingerprint
    from audit.results import AuditResult, CheckResult, SampleTable

    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / c / "0.png")
    odd = os.fsencode(root / "a") + b"/\xff.png"
    try:
        with open(odd, "wb") as fh:
            Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(fh, format="PNG")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    data = load_data(root)
    assert len(data) == 3 and "a/\\xff.png" in data.ids
    from audit.model import AuditModel, ModelSpec
    from tests.tinymodels import TinyNet

    model = AuditModel(TinyNet(), ModelSpec(input_shape=(3, 4, 4), class_names=["a", "b", "c", "d"])).finalize()
    data.ids.append("x\udcff.png")  # an API caller's id holding a lone surrogate
    fp = fingerprint(content=content_key(model, data), seed=0, check="clean", options={}, version="0")
    data.ids.pop()
    assert len(fp) == 64
    res = AuditResult(model={"path": "m.pt"}, run={"seed": 0},
                      checks=[CheckResult("clean", samples=SampleTable(data.ids, {"label": data.y.tolist()}))])
    res.save(tmp_path / "out")  # every writer takes the id
    assert "a/\\\\xff.png" in (tmp_path / "out" / "results.json").read_text(encoding="utf-8")
