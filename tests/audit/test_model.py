"""audit/model/: format detection, safe loading, spec, output adaptation."""
import json
import pickle

import pytest
import torch

from audit.errors import ModelLoadError, UsageError
from audit.model import detect_format, load_model, parse_input_size
from tests.tinymodels import PATTERNS, DictNet, NaNNet, SoftmaxNet


@pytest.mark.parametrize("name,fmt,kw", [
    ("ts.pt", "torchscript", {"input_size": "3x16x16"}),
    ("dyn.pt2", "export", {}),
    ("static.pt2", "export", {}),
    ("sd.pth", "state_dict", {"arch": "tinynet", "input_size": "3x16x16"}),
    ("ckpt.pt", "state_dict", {"arch": "tinynet", "input_size": "3x16x16"}),
    ("w.safetensors", "safetensors", {"arch": "tinynet", "input_size": "3x16x16"}),
    ("pickle.pt", "pickle", {"trust": True, "input_size": "3x16x16"}),
])
def test_every_format_gives_the_same_logits(model_files, tiny_net, pattern_data, name, fmt, kw):
    x, _ = pattern_data
    m = load_model(model_files / name, device="cpu", **kw)
    assert m.info["format"] == fmt
    assert m.num_classes == 4 and m.spec.input_shape == (3, 16, 16)
    with torch.no_grad():
        want = tiny_net(x)
    got = m.logits(x, batch_size=7)  # 7: not a multiple of the static export's batch of 3
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_format_is_detected_from_content_not_extension(model_files, tmp_path):
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes((model_files / "ts.pt").read_bytes())
    assert detect_format(renamed) == "torchscript"
    st = tmp_path / "weights.pt"
    st.write_bytes((model_files / "w.safetensors").read_bytes())
    assert detect_format(st) == "safetensors"


def test_untrusted_pickle_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelLoadError, match="--trust"):
        load_model(p, device="cpu")
    assert not marker.exists()


def test_pickled_module_needs_trust(model_files):
    with pytest.raises(ModelLoadError, match="needs Python code.*--trust"):
        load_model(model_files / "pickle.pt", device="cpu")


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"hello, I am a text file\n", "not a model file"),
    (b"PK\x03\x04garbage-not-really-a-zip" * 3, "truncated or corrupt"),
])
def test_foreign_files(tmp_path, content, match):
    p = tmp_path / "m.pt"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        load_model(p, device="cpu")


@pytest.mark.parametrize("name", ["ts.pt", "sd.pth", "w.safetensors", "dyn.pt2"])
def test_truncated_files(model_files, tmp_path, name):
    data = (model_files / name).read_bytes()
    p = tmp_path / name
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(p, device="cpu", arch="tinynet", input_size="3x16x16")


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_state_dict_needs_arch_and_must_fit(model_files):
    with pytest.raises(ModelLoadError, match="--arch"):
        load_model(model_files / "sd.pth", device="cpu")
    with pytest.raises(ModelLoadError, match="do not fit --arch resnet18"):
        load_model(model_files / "sd.pth", arch="resnet18", device="cpu")
    with pytest.raises(ModelLoadError, match="unknown --arch"):
        load_model(model_files / "sd.pth", arch="no_such_net", device="cpu")


def test_sidecar_supplies_the_spec(model_files, tmp_path):
    p = tmp_path / "sd.pth"
    p.write_bytes((model_files / "sd.pth").read_bytes())
    (tmp_path / "sd.pth.json").write_text(json.dumps({"arch": "tinynet", "input_size": [3, 16, 16],
                                                      "class_names": list(PATTERNS), "mean": [0.0], "std": [1.0]}))
    m = load_model(p, device="cpu")
    assert m.class_names == list(PATTERNS)
    assert m.spec.sources["class_names"] == "sidecar"
    (tmp_path / "sd.pth.json").write_text(json.dumps({"arch": "tinynet", "colour": "red"}))
    with pytest.raises(UsageError, match="unknown key 'colour'"):
        load_model(p, device="cpu")


def test_normalization_is_folded_into_forward(tiny_net, pattern_data, tmp_path):
    x, _ = pattern_data
    p = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(tiny_net), p)
    m = load_model(p, input_size="3x16x16", mean="0.5,0.4,0.3", std="0.2,0.2,0.25", device="cpu")
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.2, 0.25]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), tiny_net((x - mean) / std))


def test_output_adaptation_probabilities_and_dicts(tiny_net, pattern_data, tmp_path):
    x, _ = pattern_data
    p = tmp_path / "soft.pt"
    torch.save(SoftmaxNet(tiny_net), p)
    m = load_model(p, trust=True, input_size="3x16x16", device="cpu")
    assert m.output_kind == "probabilities"
    with torch.no_grad():
        torch.testing.assert_close(m(x).softmax(1), tiny_net(x).softmax(1), atol=1e-5, rtol=1e-4)
    p2 = tmp_path / "dict.pt"
    torch.save(DictNet(tiny_net), p2)
    m2 = load_model(p2, trust=True, input_size="3x16x16", device="cpu")
    assert m2.output_kind == "logits" and any("logits" in a for a in m2.adaptations)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), tiny_net(x))


def test_nan_model_is_a_usage_error(tmp_path):
    p = tmp_path / "nan.pt"
    torch.save(NaNNet(), p)
    with pytest.raises(UsageError, match="NaN"):
        load_model(p, trust=True, input_size="3x16x16", device="cpu")


def test_labels_file_with_too_few_names(model_files, tmp_path):
    lab = tmp_path / "labels.txt"
    lab.write_text("a\nb\n")
    with pytest.raises(UsageError, match="2 class names.*4 outputs"):
        load_model(model_files / "dyn.pt2", labels=lab, device="cpu")


def test_parse_input_size():
    assert parse_input_size("3x224x224") == (3, 224, 224)
    assert parse_input_size("64") == (3, 64, 64)
    with pytest.raises(UsageError):
        parse_input_size("3xax2")


def test_device_auto_and_bad_device(model_files):
    m = load_model(model_files / "dyn.pt2", device="auto")
    assert m.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="--device"):
        load_model(model_files / "dyn.pt2", device="tpu")


def test_torchvision_weights_from_the_local_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    name = "MobileNet_V3_Small_Weights.IMAGENET1K_V1"
    with pytest.raises(ModelLoadError, match="not in the local torch hub cache"):
        load_model(weights=name, device="cpu")
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=1000).eval()
    torch.save(net.state_dict(), ckpt / "mobilenet_v3_small-047dcff4.pth")
    m = load_model(weights=name, device="cpu")
    assert m.info["format"] == "torchvision" and m.info["arch"] == "mobilenet_v3_small"
    assert m.spec.input_shape == (3, 224, 224) and m.num_classes == 1000
    assert m.class_names[0] == "tench" and m.spec.sources["class_names"] == "weights"
    assert m.spec.mean == pytest.approx((0.485, 0.456, 0.406))
    x = torch.rand(2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(m(x), net((x - mean) / std), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_python_dash_m_audit_works():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "audit", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().startswith("audit ")


class _Touch:
    """Unpickling this creates a file: proof that code in a model file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_export_archive_with_pickled_code_is_refused_without_trust(model_files, tmp_path):
    import io
    import zipfile

    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save((_Touch(marker),), buf)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(model_files / "dyn.pt2") as src, zipfile.ZipFile(evil, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("sample_inputs/model.pt"):
                data = buf.getvalue()
            out.writestr(info.filename, data)
    with pytest.raises(ModelLoadError, match="--trust"):
        load_model(evil, device="cpu")
    assert not marker.exists()
    assert load_model(model_files / "dyn.pt2", device="cpu").num_classes == 4  # a clean archive still loads


class _MapsAFile(torch.nn.Module):
    """Computes like a classifier, and on the side maps a file writable (``shared=True``)."""

    def __init__(self, path: str):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        self.path = path

    def forward(self, x):
        t = torch.from_file(self.path, True, 4)
        return self.fc(x.mean((2, 3))) + t.sum() * 0


def test_torchscript_that_touches_files_is_refused_without_trust(tmp_path):
    """A graph format runs no pickled code, but its graph can call aten::from_file: refused
    before it runs (the file is never mapped), with the operator named; --trust loads it."""
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"\0" * 16)
    p = tmp_path / "maps.pt"
    torch.jit.script(_MapsAFile(str(victim))).save(str(p))
    with pytest.raises(ModelLoadError, match=r"calls aten::from_file .*--trust"):
        load_model(p, input_size="3x8x8", num_classes=4)
    m = load_model(p, input_size="3x8x8", num_classes=4, trust=True)
    assert m.logits(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_export_graph_with_side_effect_ops_is_caught(tiny_net):
    """The same rule on a torch.export program: an operator that maps files, or one of an
    unknown library (here debugprims::load_tensor, which reads a file), is named; a plain
    network has none."""
    from audit.model.graphscan import side_effect_ops

    ep = torch.export.export(tiny_net, (torch.rand(2, 3, 16, 16),))
    assert side_effect_ops(ep) == []
    node = next(n for n in ep.graph.nodes if n.op == "call_function")
    node.target = torch.ops.aten.from_file.default
    assert side_effect_ops(ep)[0].startswith("aten::from_file")
    node.target = torch.ops.debugprims.load_tensor.default
    assert side_effect_ops(ep)[0].startswith("debugprims::load_tensor (an operator outside")
    assert side_effect_ops(torch.jit.script(tiny_net)) == []


# ---------------------------------------------------------------- output shapes, batch sizes
class _Shaped(torch.nn.Module):
    """Returns a tensor of the shape ``shape(n)`` for a batch of n."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return torch.zeros(self.shape(x.shape[0])) + 0 * x.sum()


@pytest.mark.parametrize("shape,got", [
    (lambda n: (1, 10), "1x10"),
    (lambda n: (10, n), "10x4"),
    (lambda n: (n, 5, 2), "4x5x2"),
])
def test_output_not_one_row_per_image_is_one_line(shape, got):
    from audit.model import AuditModel, ModelSpec

    with pytest.raises(UsageError, match=rf"output for a batch of 4 images is {got}, expected \(N, K\) = \(4, ") as e:
        AuditModel(_Shaped(shape), ModelSpec(input_shape=(1, 2, 2))).finalize()
    assert "\n" not in str(e.value) and e.value.exit_code == 4
    # (N, K, 1, 1) is still K classes
    m = AuditModel(_Shaped(lambda n: (n, 3, 1, 1)), ModelSpec(input_shape=(1, 2, 2))).finalize()
    assert m.num_classes == 3


class _FixedBatch(torch.nn.Module):
    def forward(self, x):
        return x.reshape(4, 768)[:, :4]


class _AtMost4(torch.nn.Module):
    """Runs on batches of up to 4 images only (a fixed-size buffer)."""

    def forward(self, x):
        if x.shape[0] > 4:
            raise RuntimeError(f"batch of {x.shape[0]} exceeds the buffer of 4")
        return x.mean((2, 3)).repeat(1, 2)[:, :4]


def test_a_batch_size_baked_into_a_trace_is_fed_in_chunks_of_it():
    """A trace that runs on a batch of 4 only (or of 1 only) is found at load and fed in
    chunks of that size (noted), so no --batch-size is needed."""
    from audit.model import AuditModel, ModelSpec

    ts = torch.jit.trace(_FixedBatch(), torch.rand(4, 3, 16, 16))  # the 4 is baked into the graph
    model = AuditModel(ts, ModelSpec(input_shape=(3, 16, 16))).finalize()
    assert model.fixed_batch == 4 and any("runs on batches of 4, not others" in n for n in model.adaptations)
    x = torch.rand(6, 3, 16, 16)
    torch.testing.assert_close(model.logits(x), x.reshape(6, -1)[:, :4])
    one = torch.jit.trace(torch.nn.Sequential(torch.nn.Flatten(0), torch.nn.Unflatten(0, (1, 768))),
                          torch.rand(1, 3, 16, 16))  # (1, 768) whatever the batch: runs on one image only
    model = AuditModel(one, ModelSpec(input_shape=(3, 16, 16))).finalize()
    assert model.fixed_batch == 1 and model.logits(x).shape == (6, 768)


def test_model_failing_on_another_batch_size_names_it_even_quiet(tmp_path, pattern_folder, labels_file, capsys):
    """A model that runs on 1 and 4 images but not on the run's batch: one line naming
    --batch-size 1, which then works."""
    from audit.cli import main
    from audit.errors import ExitCode
    from audit.model import AuditModel, ModelSpec

    model = AuditModel(_AtMost4(), ModelSpec(input_shape=(3, 16, 16))).finalize()
    with pytest.raises(UsageError, match=r"fails on a batch of 6 images .*--batch-size 1"):
        model.logits(torch.rand(6, 3, 16, 16))
    assert model.logits(torch.rand(6, 3, 16, 16), batch_size=1).shape == (6, 4)
    torch.save(_AtMost4(), tmp_path / "atmost4.pt")
    argv = ["run", str(tmp_path / "atmost4.pt"), "--trust", "--data", str(pattern_folder), "--labels",
            str(labels_file), "--checks", "clean", "--out", str(tmp_path / "out"), "-q"]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == ExitCode.USAGE_ERROR
    assert len(err.splitlines()) == 1 and "--batch-size 1" in err and "batch of" in err, err
    assert main(argv + ["--batch-size", "1"]) == ExitCode.OK, capsys.readouterr().err


def test_a_failing_export_load_is_one_line_without_torchs_logging(model_files, monkeypatch, capsys):
    """torch logs a failed .pt2 deserialization at length; the user sees one line."""
    import logging

    from audit.cli import main
    from audit.errors import ExitCode

    def noisy(*a, **k):
        for i in range(30):
            logging.getLogger("torch._export.serde").error("deserialization detail %d", i)
        raise RuntimeError("unsupported operator in the archive")

    import sys

    monkeypatch.setattr(torch.export, "load", noisy)
    handler = logging.StreamHandler(sys.stderr)  # as torch._logging sets up when configured
    logging.getLogger("torch").addHandler(handler)
    try:
        code = main(["run", str(model_files / "dyn.pt2"), "--checks", "fooling", "-q", "--out",
                     str(model_files.parent / "o-noisy")])
    finally:
        logging.getLogger("torch").removeHandler(handler)
    assert code == ExitCode.USAGE_ERROR
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "fails to load (unsupported operator" in err[0]
    assert logging.getLogger("torch").isEnabledFor(logging.ERROR)  # logging restored afterwards
