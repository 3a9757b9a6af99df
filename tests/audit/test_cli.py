"""The CLI in-process: outputs, exit codes, and one clear line for every bad input."""
import json
import pickle

import pytest
import torch

from audit.cli import main
from audit.errors import ExitCode
from audit.registry import Check, register_check
from tests.tinymodels import NaNNet, TinyNet

OUTPUTS = ("results.json", "metrics.csv", "report.html", "junit.xml", "summary.md")


class BoomCheck(Check):
    description = "test only: always crashes"

    def run(self, ctx):
        raise RuntimeError("kaboom from a test check")


class InterruptCheck(Check):
    description = "test only: Ctrl-C"

    def run(self, ctx):
        raise KeyboardInterrupt


@pytest.fixture()
def test_checks():
    """Register the crashing checks only for the tests that select them."""
    from audit import registry

    register_check("_test_boom")(BoomCheck)
    register_check("_test_interrupt")(InterruptCheck)
    yield
    registry._CHECKS.pop("_test_boom")
    registry._CHECKS.pop("_test_interrupt")


def _plain_accuracy(net, folder, names):
    """What plain PyTorch computes on the same PNGs."""
    import numpy as np
    from PIL import Image

    correct = total = 0
    for c, name in enumerate(names):
        for f in sorted((folder / name).glob("*.png")):
            x = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
            with torch.no_grad():
                correct += int(net(x[None]).argmax(1).item() == c)
            total += 1
    return correct / total


@pytest.mark.parametrize("name,extra", [
    ("ts.pt", []), ("dyn.pt2", []), ("static.pt2", []), ("pickle.pt", ["--trust"]),
    ("sd.pth", ["--arch", "tinynet"]), ("w.safetensors", ["--arch", "tinynet"]),
])
def test_run_reports_the_accuracy_plain_pytorch_computes(model_files, pattern_folder, labels_file, tiny_net,
                                                        tmp_path, name, extra):
    from tests.tinymodels import PATTERNS

    out = tmp_path / "out"
    rc = main(["run", str(model_files / name), "--data", str(pattern_folder), "--labels", str(labels_file),
               "--out", str(out), "--quiet", "--device", "cpu", "--checks", "clean", *extra])
    assert rc == ExitCode.OK
    for f in OUTPUTS:
        assert (out / f).is_file(), f
    res = json.loads((out / "results.json").read_text())
    acc = next(m["value"] for m in res["checks"][0]["metrics"] if m["name"] == "accuracy" and "class" not in m)
    assert acc == pytest.approx(_plain_accuracy(tiny_net, pattern_folder, PATTERNS), abs=1e-9)
    assert res["schema"] == "audit-result/1" and res["model"]["sha256"]


def test_gate_failure_exits_1_and_writes_everything(model_files, pattern_folder, labels_file, tmp_path):
    cfg = tmp_path / "audit.toml"
    cfg.write_text('[gates]\n"clean.accuracy" = ">= 1.01"\n')
    out = tmp_path / "out"
    rc = main(["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
               "--config", str(cfg), "--out", str(out), "--checks", "clean", "-q"])
    assert rc == ExitCode.GATE_FAILED
    assert all((out / f).is_file() for f in OUTPUTS)
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "fail" and res["gates"][0]["status"] == "fail"
    junit = (out / "junit.xml").read_text()
    assert "required &gt;= 1.01" in junit


def test_a_crashing_check_is_recorded_and_the_rest_still_run(test_checks, model_files, pattern_folder, labels_file, tmp_path):
    out = tmp_path / "out"
    rc = main(["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
               "--checks", "_test_boom,clean", "--out", str(out), "-q"])
    assert rc == ExitCode.INTERNAL_ERROR
    res = json.loads((out / "results.json").read_text())
    by = {c["name"]: c for c in res["checks"]}
    assert by["_test_boom"]["status"] == "error" and "kaboom" in by["_test_boom"]["error"]
    assert by["clean"]["status"] in ("pass", "warn") and by["clean"]["metrics"]
    assert "kaboom" in (out / "report.html").read_text()


def test_ctrl_c_keeps_what_finished(test_checks, model_files, pattern_folder, labels_file, tmp_path):
    out = tmp_path / "out"
    rc = main(["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
               "--checks", "clean,_test_interrupt", "--out", str(out), "-q"])
    assert rc == ExitCode.INTERRUPTED
    res = json.loads((out / "results.json").read_text())
    assert res["interrupted"] is True and res["checks"][0]["name"] == "clean" and res["checks"][0]["metrics"]


def test_fail_on_warn(model_files, pattern_folder, tmp_path):
    # without --labels the folders map in sorted order: accuracy collapses, a fail finding
    out = tmp_path / "out"
    args = ["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--out", str(out), "--checks", "clean", "-q"]
    assert main(args) == ExitCode.OK
    assert main(args + ["--fail-on", "warn"]) == ExitCode.GATE_FAILED


def test_same_seed_same_numbers(model_files, pattern_folder, labels_file, tmp_path):
    runs = []
    for i in range(2):
        out = tmp_path / f"o{i}"
        main(["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
              "--samples", "12", "--seed", "5", "--out", str(out), "--checks", "clean", "-q"])
        res = json.loads((out / "results.json").read_text())
        runs.append((res["run"]["seed"], res["checks"][0]["metrics"], res["checks"][0]["samples"]["id"]))
    assert runs[0] == runs[1] and runs[0][0] == 5


def test_report_rerenders_a_saved_result(model_files, pattern_folder, labels_file, tmp_path):
    out = tmp_path / "out"
    main(["run", str(model_files / "dyn.pt2"), "--data", str(pattern_folder), "--labels", str(labels_file),
          "--out", str(out), "--checks", "clean", "-q"])
    first = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert main(["report", str(out / "results.json"), "-q"]) == ExitCode.OK
    assert (out / "report.html").read_text() == first
    assert main(["report", str(out / "results.json"), "--out", str(tmp_path / "copy"), "-q"]) == ExitCode.OK
    assert (tmp_path / "copy" / "report.html").read_text() == first


def test_list_and_version(capsys):
    assert main(["list"]) == 0
    assert "clean" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "audit 0.1.0" in capsys.readouterr().out


# ------------------------------------------------------------------------- bad input
def _evil_pickle(path, marker):
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path.write_bytes(pickle.dumps(Evil()))


@pytest.fixture()
def bad_inputs(tmp_path, model_files, pattern_folder):
    from PIL import Image

    d = tmp_path
    (d / "text.pt").write_text("just text\n")
    ts = (model_files / "ts.pt").read_bytes()
    (d / "trunc.pt").write_bytes(ts[: len(ts) // 3])
    _evil_pickle(d / "evil.pt", d / "pwned")
    torch.save(NaNNet(), d / "nan.pt")
    torch.save(TinyNet(7).state_dict(), d / "seven.pth")
    (d / "empty").mkdir()
    (d / "junk" / "blob").mkdir(parents=True)
    (d / "junk" / "blob" / "x.csv").write_text("a,b\n")
    (d / "big" / "blob").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(d / "big" / "blob" / "0.png")
    (d / "gray" / "blob").mkdir(parents=True)
    Image.new("L", (16, 16)).save(d / "gray" / "blob" / "0.png")
    (d / "two.txt").write_text("a\nb\n")
    (d / "bad.toml").write_text("[audit]\nseeed = 1\n")
    torch.save({"x": torch.rand(6, 3, 16, 16), "y": torch.tensor([0, 1, 2, 3, 9, 0])}, d / "y9.pt")
    return d


BAD = [
    ("missing model", ["run", "{d}/nope.pt", "--data", "{data}"], "does not exist"),
    ("not a model", ["run", "{d}/text.pt", "--data", "{data}"], "not a model file"),
    ("truncated", ["run", "{d}/trunc.pt", "--data", "{data}"], "truncated or corrupt"),
    ("pickle without trust", ["run", "{m}/pickle.pt", "--data", "{data}"], "--trust"),
    ("code-running pickle", ["run", "{d}/evil.pt", "--data", "{data}"], "--trust"),
    ("state_dict without arch", ["run", "{m}/sd.pth", "--data", "{data}"], "--arch"),
    ("arch does not fit", ["run", "{m}/sd.pth", "--arch", "resnet18", "--data", "{data}"], "do not fit --arch resnet18"),
    ("arch, wrong classes", ["run", "{d}/seven.pth", "--arch", "tinynet", "--num-classes", "4", "--data", "{data}"], "do not fit"),
    ("empty data folder", ["run", "{m}/dyn.pt2", "--data", "{d}/empty"], "no class subfolders"),
    ("non-image files", ["run", "{m}/dyn.pt2", "--data", "{d}/junk"], "x.csv is not an image"),
    ("wrong size", ["run", "{m}/dyn.pt2", "--data", "{d}/big", "--labels", "{labels}"], "--resize"),
    ("wrong channels", ["run", "{m}/dyn.pt2", "--data", "{d}/gray", "--labels", "{labels}"], "--convert-channels"),
    ("short labels", ["run", "{m}/dyn.pt2", "--labels", "{d}/two.txt", "--data", "{data}"], "2 class names"),
    ("NaN model", ["run", "{d}/nan.pt", "--trust", "--input-size", "3x16x16", "--data", "{data}"], "NaN"),
    ("unknown config key", ["run", "{m}/dyn.pt2", "--data", "{data}", "--config", "{d}/bad.toml"], "unknown key 'seeed'"),
    ("unknown check", ["run", "{m}/dyn.pt2", "--data", "{data}", "--checks", "nosuch"], "unknown check 'nosuch'"),
    ("unknown flag", ["run", "{m}/dyn.pt2", "--frobnicate"], "unrecognized arguments"),
    ("labels out of range", ["run", "{m}/dyn.pt2", "--data", "{d}/y9.pt"], "outside the model's 4 classes"),
    ("no checks", ["run", "{m}/dyn.pt2", "--data", "{data}", "--checks", ","], "no checks selected"),
    ("negative count", ["run", "{m}/sd.pth", "--arch", "tinynet", "--num-classes", "-3"], "must be at least 1"),
    ("out is a file", ["run", "{m}/dyn.pt2", "--data", "{data}", "--out", "{d}/two.txt"], "cannot write to the output"),
    ("report of nothing", ["report", "{d}/empty"], "does not exist"),
    ("negative tolerance", ["diff", "{d}/empty", "{d}/empty", "--tolerance", "-1"], "must be a finite number"),
]


@pytest.mark.parametrize("what,argv,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_4(bad_inputs, model_files, pattern_folder, labels_file, tmp_path, capsys,
                                      what, argv, match):
    argv = [a.format(d=bad_inputs, m=model_files, data=pattern_folder, labels=labels_file) for a in argv]
    if argv[0] == "run":
        if "--checks" not in argv and argv[-1] != "--frobnicate":
            argv += ["--checks", "clean"]
        if "--out" not in argv:
            argv += ["--out", str(tmp_path / "out")]
    rc = main(argv + ["-q"])
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.USAGE_ERROR, err
    assert len(err.splitlines()) == 1 and err.startswith("audit: error: "), err
    assert "Traceback" not in err and match in err
    assert not (bad_inputs / "pwned").exists()


class MysteryMLP(torch.nn.Module):
    """A kind of model nothing else in the repo uses: an MLP with LayerNorm that returns a
    (logits, embedding) tuple and normalizes its input itself."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 64), torch.nn.LayerNorm(64),
                                        torch.nn.GELU())
        self.head = torch.nn.Linear(64, 4)

    def forward(self, x):
        e = self.body(x * 2 - 1)
        return self.head(e), e


@pytest.fixture(scope="module")
def mystery_files(tmp_path_factory):
    from tests.tinymodels import compile_as, make_patterns, save_compiled

    torch.manual_seed(1)
    x, y = make_patterns(30, seed=11)
    net = MysteryMLP()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(120):
        loss = torch.nn.functional.cross_entropy(net(x)[0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    d = tmp_path_factory.mktemp("mystery")
    save_compiled(compile_as(net, "torchscript", x[:2]), d / "m.ts")
    save_compiled(compile_as(net, "export", x[:5]), d / "m.pt2")
    torch.save(net, d / "m.pkl")
    return net, d


@pytest.mark.parametrize("fname,extra", [("m.ts", []), ("m.pt2", []), ("m.pkl", ["--trust"])])
def test_unseen_model_kind_in_three_formats(mystery_files, pattern_folder, labels_file, tmp_path, fname, extra):
    from tests.tinymodels import PATTERNS

    net, d = mystery_files
    out = tmp_path / "out"
    rc = main(["run", str(d / fname), "--data", str(pattern_folder), "--labels", str(labels_file),
               "--out", str(out), "--checks", "clean", "-q", *extra])
    assert rc == ExitCode.OK
    res = json.loads((out / "results.json").read_text())
    acc = next(m["value"] for m in res["checks"][0]["metrics"] if m["name"] == "accuracy" and "class" not in m)
    want = _plain_accuracy(lambda x: net(x)[0], pattern_folder, PATTERNS)
    assert acc == pytest.approx(want, abs=1e-9) and 0.3 < want
    assert any("tuple" in a for a in res["model"]["adaptations"])


@pytest.mark.slow
def test_concepts_flag_reaches_the_bias_check(model_files, pattern_folder, labels_file, tmp_path, capsys):
    from tests.conftest import write_imagefolder
    from tests.tinymodels import make_patterns

    x, y = make_patterns(6, seed=21)
    write_imagefolder(tmp_path / "concepts", x, torch.zeros_like(y), ["stripes"])
    for k in range(2):
        xr, _ = make_patterns(3, seed=40 + k)
        write_imagefolder(tmp_path / "concepts", xr, torch.zeros(len(xr), dtype=torch.long), [f"random_{k}"])
    out = tmp_path / "out"
    rc = main(["run", str(model_files / "sd.pth"), "--arch", "tinynet", "--data", str(pattern_folder),
               "--labels", str(labels_file), "--checks", "bias", "--concepts", str(tmp_path / "concepts"),
               "--out", str(out), "-q"])
    res = json.loads((out / "results.json").read_text())
    bias = res["checks"][0]
    assert rc in (ExitCode.OK, ExitCode.GATE_FAILED) and bias["status"] != "error", bias["error"]
    assert any(m.get("concept") == "stripes" for m in bias["metrics"])
    assert main(["run", str(model_files / "sd.pth"), "--concepts", str(tmp_path / "nope"), "-q"]) == ExitCode.USAGE_ERROR
