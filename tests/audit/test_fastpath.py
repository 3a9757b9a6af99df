"""The gradient loops' fast path (audit/fastpath.py): bf16 autocast, channels-last and
torch.compile give the numbers of fp32 on a tiny model (robust accuracy, attack success,
attribution maps within 0.01; every counted candidate confirmed in fp32), loops that
synchronize with the device only every few steps give the same results, the batch size
fitted to (mocked) free memory, the config keys and flags, and the run's metadata."""
from __future__ import annotations

import shutil

import pytest
import torch

import attacks.adversarial.apgd as apgd_mod
import attacks.adversarial.attacks as attacks_mod
import attacks.fooling.search as search_mod
from attacks.adversarial.apgd import APGDCE
from attacks.adversarial.attacks import PGD
from attacks.adversarial.check import AdversarialCheck
from attacks.adversarial.objective import Objective
from attacks.fooling.search import gradient_ascent
from audit import batching
from audit.batching import activation_bytes_per_image, bytes_per_sample, fit_batch, free_bytes
from audit.cli import _config_from_args
from audit.cli_args import build_parser
from audit.config import AuditConfig
from audit.context import Context
from audit.data import AuditData
from audit.errors import ConfigError, UsageError
from audit.fastpath import FastPath, FastSettings, fast_metadata, parse_compile
from tests.attacks.test_adversarial import curve, wrap
from tests.tinymodels import PATTERNS, make_patterns, train_tiny

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")]
EPS = [4 / 255, 8 / 255, 16 / 255]


@pytest.fixture(scope="module")
def tiny(one_thread):
    return train_tiny()


@pytest.fixture(scope="module")
def many():
    return make_patterns(25, seed=11)  # 100 samples: 0.01 is one sample


def _check(net, x, y, **audit):
    """The adversarial check (PGD and FGSM, L∞) on a fresh wrapper of ``net`` with ``[audit]``
    settings ``audit``."""
    cfg = AuditConfig(checks=["adversarial"], batch_size=128, **audit, check_options={"adversarial": dict(
        norms=["linf"], epsilons={"linf": EPS}, attacks=["pgd", "fgsm"], budget="fast", max_samples=0,
        probe_samples=0)})
    model = wrap(net)
    d = AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))])
    ctx = Context(model=model, data=d, config=cfg, seed=0, logits=model.logits(x)).scoped(
        "adversarial", declared=AdversarialCheck.publishes)
    return AdversarialCheck(cfg.options_for("adversarial")).run(ctx), model


def _success(res, attack):
    return {m.qualifiers["epsilon"]: m.value for m in res.metrics
            if m.name == "attack_success_rate" and m.qualifiers.get("attack") == attack
            and m.qualifiers.get("norm") == "linf" and "class" not in m.qualifiers}


def _close(a: dict, b: dict, tol: float = 0.01 + 1e-9) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


def _assert_matches(res, ref):
    for attack in ("worst", "pgd", "fgsm"):
        assert _close(curve(res, attack, "linf"), curve(ref, attack, "linf")), attack
    for attack in ("pgd", "fgsm"):
        assert _close(_success(res, attack), _success(ref, attack)), attack


@pytest.fixture(scope="module")
def fp32(tiny, many):
    return _check(tiny, *many)[0]


def test_bf16_channels_last_robust_accuracy_within_001_of_fp32(tiny, many, fp32):
    res, model = _check(tiny, *many, precision="bf16")
    _assert_matches(res, fp32)
    fast = res.data["fast_path"]
    assert fast["precision"] == "bf16" and res.data["precision"] == "bf16"
    assert fast["channels_last"] == "channels_last" and fast["compile_status"] == "off"
    assert fast["batch_sizes"]["adversarial"] == 128  # the request (batch_size) fits the free memory
    assert fp32.data["fast_path"]["precision"] == "fp32"
    assert res.metrics and next(m for m in res.metrics if m.name == "samples").value == 100


@pytest.mark.slow
def test_compiled_bf16_robust_accuracy_within_001_of_fp32(tiny, many, fp32):
    """compile = true (Inductor on the CPU): the same numbers, or the reason it fell back,
    recorded, and then the test skips saying why."""
    res, model = _check(tiny, *many, precision="bf16", compile=True)
    fast = res.data["fast_path"]
    if fast["compile_status"] != "compiled":
        assert fast["compile_status"] == "eager" and fast["compile_reason"], fast
        pytest.skip(f"torch.compile did not run here: {fast['compile_reason']}")
    assert "input shape" in fast["compile_reason"]
    _assert_matches(res, fp32)


def test_compile_failure_falls_back_to_eager_and_says_why(tiny, monkeypatch):
    model = wrap(tiny)

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("no C compiler")

    monkeypatch.setattr(torch, "compile", lambda net, **k: Broken())
    path = FastPath(model, FastSettings(compile=True))
    x = make_patterns(1, seed=3)[0]
    torch.testing.assert_close(path(x), model(x))  # the eager numbers, at the first call
    meta = fast_metadata(model, path.s)
    assert meta["compile_status"] == "eager"
    assert meta["compile_reason"] == "torch.compile failed at the first call: RuntimeError: no C compiler"
    assert path.state.compiled is None
    auto = FastPath(wrap(tiny), FastSettings(compile="auto"))
    assert auto.state.status == "off" and "CUDA only" in auto.state.reason


@pytest.mark.slow
def test_compiled_gradients_equal_eager_ones(tiny):
    """A compiled forward+backward (fp32) gives the eager gradient to rounding; one graph
    per input shape, reused."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: Inductor cannot compile on this CPU")
    model = wrap(tiny)
    path = FastPath(model, FastSettings(compile=True))
    x, y = make_patterns(2, seed=5)
    obj, ref = Objective(model, path=path), Objective(model)
    m1, g1 = obj(x, y, grad=True)
    if path.state.status != "compiled":
        pytest.skip(f"torch.compile did not run here: {path.state.reason}")
    m0, g0 = ref(x, y, grad=True)
    torch.testing.assert_close(m1, m0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-5)
    obj(x, y, grad=True)
    assert path.state.shapes == {tuple(x.shape)}


def test_bf16_attribution_maps_within_001_of_fp32(tiny):
    """Integrated Gradients and saliency through the bf16 + channels-last path: maps whose
    cosine distance to the fp32 ones is at most 0.01 on average (0.02 for any one image)."""
    from probes.attribution.methods import METHODS
    from probes.attribution.methods.base import AttrSettings

    model = wrap(tiny)
    x, _ = make_patterns(3, seed=9)
    target = model.logits(x).argmax(1)
    path = FastPath(model, FastSettings(precision="bf16"))
    for name in ("integrated_gradients", "saliency"):
        method = METHODS.get(name)
        ref, _ = method.attribute(model, x, target, AttrSettings(ig_steps=16))
        with path.layout(x[:2]) as lay:
            got, _ = method.attribute(path, x, target, AttrSettings(ig_steps=16))
        assert lay == "channels_last"
        cos = torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1), dim=1)
        assert (1 - cos).mean() <= 0.01 and (1 - cos).max() <= 0.02, (name, cos)


def _every(monkeypatch, k: int) -> None:
    for mod in (attacks_mod, apgd_mod, search_mod):
        monkeypatch.setattr(mod, "sync_every", lambda device, k=k: k)


@pytest.mark.parametrize("attack", [PGD(steps=20, restarts=2), APGDCE(steps=20)], ids=["pgd", "apgd"])
def test_loops_that_sync_every_8_steps_find_the_same_adversarials(tiny, attack, monkeypatch):
    """What a GPU runs (fooled samples masked, the batch compacted every 8 steps) gives the
    adversarials of the CPU's loop (compacted every step)."""
    model = wrap(tiny)
    x, y = make_patterns(6, seed=13)
    outs = []
    for k in (1, 8):
        _every(monkeypatch, k)
        outs.append(attack.run(Objective(model), x, y, 8 / 255, "linf", gen=torch.Generator().manual_seed(0)))
    (f1, a1), (f8, a8) = outs
    assert f1.any() and not f1.all()
    assert torch.equal(f1, f8) and torch.equal(a1, a8)


def test_fooling_ascent_syncing_every_8_steps_and_bf16_confirmed_in_fp32(tiny, monkeypatch):
    model = wrap(tiny)
    kw = dict(steps=24, lr=0.05, l2_decay=0.0, blur_every=0, blur_sigma=0.5, bounds=(0.0, 1.0), batch_size=4,
              device=model.device, levels=(0.9, 0.99))
    runs = []
    for k in (1, 8):
        _every(monkeypatch, k)
        runs.append(gradient_ascent(model, [0, 1, 2, 3], (3, 16, 16), gen=torch.Generator().manual_seed(0), **kw))
    a, b = runs
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-6)  # batch composition: rounding only
    torch.testing.assert_close(torch.tensor(a.best), torch.tensor(b.best), rtol=0, atol=1e-6)
    assert a.first == b.first
    assert a.used <= b.used <= a.used + 7
    r = gradient_ascent(model, [0, 1, 2, 3], (3, 16, 16), gen=torch.Generator().manual_seed(0),
                        path=FastPath(model, FastSettings(precision="bf16")), **kw)
    fp32 = model(r.images).softmax(1)[torch.arange(4), torch.tensor([0, 1, 2, 3])]
    torch.testing.assert_close(torch.tensor(r.best), fp32)  # the verdict's confidences are fp32's
    for lv, row in r.first.items():
        assert all(f is None or c >= lv for f, c in zip(row, r.best))


# ---------------------------------------------------------------------------- batch size
def test_batch_size_fits_the_mocked_free_gpu_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * 2**30, 80 * 2**30))
    assert free_bytes("cuda") == 2 * 2**30
    assert fit_batch(10 * 2**20, "cuda", 512) == 102  # half of 2 GiB at 10 MiB a sample
    assert fit_batch(10 * 2**20, "cuda", 64) == 64  # never above the request
    assert fit_batch(2**40, "cuda", 64) == 1
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, 80 * 2**30))
    assert fit_batch(10 * 2**20, "cuda", 64) == 1  # nothing free: one at a time (then OOM halving)


def test_batch_size_on_cpu_reads_available_ram_and_measures_a_probe(tiny, monkeypatch):
    import os

    monkeypatch.setitem(__import__("sys").modules, "psutil", None)  # the os.sysconf route
    pages = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert free_bytes("cpu") == 4096 * 1000
    model = wrap(tiny)
    x = make_patterns(2, seed=1)[0]
    per = activation_bytes_per_image(model, x[:1])
    assert bytes_per_sample(lambda t: None, x, model) == per > 0
    path = FastPath(model)
    want = max(1, min(64, int(4096 * 1000 * batching.MEMORY_SHARE // per)))
    assert path.batch_size(x, 64, role="probe") == want < 64
    assert fast_metadata(model, path.s)["batch_sizes"] == {"probe": want}
    monkeypatch.setattr(batching, "free_bytes", lambda device: None)  # unknown: the request stands
    assert path.batch_size(x, 64, role="probe") == 64


# ---------------------------------------------------------------------------- config and flags
def test_config_keys_and_their_errors():
    cfg = AuditConfig.from_dict({"audit": {"precision": "bf16", "compile": "auto"}})
    assert (cfg.precision, cfg.compile) == ("bf16", "auto")
    assert FastSettings.of(cfg) == FastSettings(precision="bf16", compile="auto")
    assert AuditConfig.from_dict({"audit": {"compile": True}}).compile is True
    assert AuditConfig().precision == "fp32" and AuditConfig().compile is False
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        AuditConfig.from_dict({"audit": {"precision": "fp16"}})
    with pytest.raises(ConfigError, match="compile must be true, false or"):
        AuditConfig.from_dict({"audit": {"compile": "yes"}})
    with pytest.raises(ValueError):
        parse_compile("sometimes")


@pytest.mark.parametrize("argv, precision, compile_", [
    ([], "fp32", False), (["--precision", "bf16"], "bf16", False), (["--compile"], "fp32", True),
    (["--compile", "auto"], "fp32", "auto"), (["--compile", "off", "--precision", "fp32"], "fp32", False)])
def test_flags(argv, precision, compile_):
    args = build_parser().parse_args(["run", "m.pt", *argv])
    cfg = _config_from_args(args)
    assert (cfg.precision, cfg.compile) == (precision, compile_)


def test_flags_override_the_config_file(tmp_path):
    p = tmp_path / "audit.toml"
    p.write_text('[audit]\nprecision = "bf16"\ncompile = true\n')
    cfg = _config_from_args(build_parser().parse_args(["run", "m.pt", "--config", str(p), "--compile", "false"]))
    assert (cfg.precision, cfg.compile) == ("bf16", False)
    with pytest.raises(UsageError, match="--precision"):
        build_parser().parse_args(["run", "m.pt", "--precision", "fp16"])
    with pytest.raises(UsageError, match="not true, false or auto"):
        build_parser().parse_args(["run", "m.pt", "--compile", "maybe"])


def test_run_metadata_records_the_fast_path(tiny):
    from audit.runner import run_audit

    x, y = make_patterns(2, seed=2)
    d = AuditData(x, y, list(PATTERNS), [str(i) for i in range(len(y))])
    cfg = AuditConfig(checks=["adversarial"], precision="bf16", check_options={"adversarial": dict(
        norms=["linf"], epsilons={"linf": [8 / 255]}, attacks=["fgsm"], budget="fast", probe_samples=0)})
    result = run_audit(wrap(tiny), d, cfg)
    fast = result.run["fast_path"]
    assert fast["precision"] == "bf16" and fast["compile"] is False and fast["compile_status"] == "off"
    assert fast["channels_last"] == "channels_last" and "adversarial" in fast["batch_sizes"]
    assert result.to_dict()["run"]["fast_path"] == fast
