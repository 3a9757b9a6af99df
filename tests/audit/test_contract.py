"""The check contract, for every registered check: options are typed and validated when the
config is read; emitted metric and finding codes are declared and documented; published
values have their declared types; a check's work units do not depend on the order they run
in (what makes a 2-process run equal a 1-process one, tested end to end under torchrun in
test_distributed.py); the battery's order follows reads/publishes, never import order."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from audit import AuditData, load_model, run_audit
from audit.cli import main
from audit.context import Context
from audit.errors import ConfigError
from audit.options import option_types
from audit.registry import battery_order, registered_checks
from audit.seeding import derive_seed
from audit.vocabulary import markdown
from tests.fast_config import FAST_CONFIG, fast_config_dict
from tests.tinymodels import PATTERNS

ROOT = Path(__file__).resolve().parents[2]
CHECKS = registered_checks()


def _bad_values(tp, f: dataclasses.Field):
    """Values that a field of annotation ``tp`` must refuse."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        inner = [a for a in args if a is not type(None)]
        yield from _bad_values(inner[0], f)
        return
    lo = f.metadata.get("min")
    if origin is typing.Literal:
        yield "no-such-choice"
    elif tp is bool:
        yield "yes"
    elif tp is int:
        yield "three"
        yield 1.5
        if lo is not None:
            yield int(math.floor(lo)) - 1
    elif tp is float:
        yield "x"
        if lo is not None:
            yield lo - 1
    elif tp is str:
        yield 3
    elif origin in (list, tuple):
        yield "not-a-list"
        if args and typing.get_origin(args[0]) is typing.Literal:
            yield ["no-such-choice"]
    elif origin is dict:
        yield ["not", "a", "table"]


@pytest.mark.parametrize("name", list(CHECKS))
def test_options_round_trip(name):
    cls = CHECKS[name]
    default = cls.Options()
    assert cls.parse_options(dataclasses.asdict(default)) == default
    assert cls.parse_options(json.loads(json.dumps(dataclasses.asdict(default)))) == default


@pytest.mark.parametrize("name", list(CHECKS))
def test_every_option_refuses_bad_values_at_config_read(name):
    cls = CHECKS[name]
    hints = option_types(cls.Options)
    tried = 0
    for f in dataclasses.fields(cls.Options):
        assert f.name in hints, f"{name}.{f.name} has no type annotation"
        assert hints[f.name] is not typing.Any, f"{name}.{f.name} is typed Any"
        for bad in _bad_values(hints[f.name], f):
            tried += 1
            with pytest.raises(ConfigError, match=rf"\[checks\.{name}\].*{f.name}"):
                from audit.config import AuditConfig

                AuditConfig.from_dict({"checks": {name: {f.name: bad}}})
    assert tried >= len(dataclasses.fields(cls.Options))


def test_an_invalid_option_exits_4_before_any_check_runs(tmp_path, model_files, pattern_folder, labels_file):
    cfg = tmp_path / "audit.toml"
    cfg.write_text('[checks.bias]\nspace = "bogus"\n')
    out = tmp_path / "out"
    rc = main(["run", str(model_files / "sd.pth"), "--arch", "tinynet", "--num-classes", "4", "--labels",
               str(labels_file), "--data", str(pattern_folder), "--config", str(cfg), "--out", str(out), "-q"])
    assert rc == 4
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("name", list(CHECKS))
def test_declared_codes_are_documented_on_the_checks_page(name):
    cls = CHECKS[name]
    page = (ROOT / "docs" / f"{name}.md").read_text(encoding="utf-8")
    missing = [c for c in [*cls.metrics, *cls.findings] if f"`{c}`" not in page]
    assert not missing, f"docs/{name}.md does not document {missing}"
    assert cls.description


def test_vocabulary_page_is_current():
    page = (ROOT / "docs" / "findings.md").read_text(encoding="utf-8")
    assert page == markdown(), "regenerate with: python -m audit.vocabulary > docs/findings.md"


# ------------------------------------------------------------------ a battery on the tiny model
def _tiny(model_files, pattern_data):
    model = load_model(model_files / "dyn.pt2", device="cpu")
    x, y = pattern_data
    return model, AuditData(x, y, list(PATTERNS), [f"s{i}" for i in range(len(y))])


def _reversed_units(world, n_units, fn, *, seed, keys=None, tag="units", load=None, save=None, on_done=None,
                    where=""):
    """map_units, computing the units last to first (as another process would interleave them)."""
    keys = keys if keys is not None else [f"{tag}:{k}" for k in range(n_units)]
    got = {}
    for k in reversed(range(n_units)):
        got[k] = fn(k, torch.Generator().manual_seed(derive_seed(seed, keys[k])))
    return [got[k] for k in range(n_units)]


def _numbers(res):
    m = {(c.name, mm.name, json.dumps(mm.qualifiers, sort_keys=True, default=str)): mm.value
         for c in res.checks for mm in c.metrics if not any(t in mm.name for t in ("seconds", "per_s"))}
    f = {c.name: [(x.severity, x.code, x.message) for x in c.findings] for c in res.checks}
    return m, f


@pytest.fixture(scope="module")
def batteries(model_files, pattern_data):
    published: list[tuple[str, str, object]] = []
    real = Context.publish

    def spy(self, name, value):
        published.append((self.check_name, name, value))
        return real(self, name, value)

    mp = pytest.MonkeyPatch()
    mp.setattr(Context, "publish", spy)
    model, data = _tiny(model_files, pattern_data)
    forward = run_audit(model, data, fast_config_dict())
    mp.setattr("audit.context.map_units", _reversed_units)
    backward = run_audit(model, data, fast_config_dict())
    mp.undo()
    return forward, backward, published


@pytest.mark.slow
def test_every_check_ran_and_emitted_only_declared_codes(batteries):
    forward, _, _ = batteries
    assert [c.name for c in forward.checks] == list(CHECKS)
    for c in forward.checks:
        cls = CHECKS[c.name]
        assert c.error is None, f"{c.name}: {c.error}"
        assert {m.name for m in c.metrics} <= set(cls.metrics), c.name
        assert {f.code for f in c.findings} <= set(cls.findings), c.name
        # a check measures something, or says in an info finding why it could not (bias without concepts)
        assert c.metrics or any(f.severity == "info" for f in c.findings), f"{c.name} emitted nothing"
        timings = c.data.get("timings", {})
        assert isinstance(timings, dict) and all(isinstance(v, (int, float)) for v in timings.values())
        assert not {"timing", "timing_s", "timings_s"} & set(c.data), c.name


@pytest.mark.slow
def test_published_values_have_their_declared_types(batteries):
    _, _, published = batteries
    seen = {(check, name) for check, name, _ in published}
    for check, name, value in published:
        assert isinstance(value, CHECKS[check].publishes[name])
    for name, cls in CHECKS.items():
        for pub in cls.publishes:
            assert (name, pub) in seen, f"{name} declared {pub} but never published it on the tiny model"


@pytest.mark.slow
def test_units_computed_in_another_order_give_the_same_result(batteries):
    forward, backward, _ = batteries
    fm, ff = _numbers(forward)
    bm, bf = _numbers(backward)
    assert len(fm) > 100
    assert fm == bm
    assert ff == bf


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, c in CHECKS.items() if c.reads])
def test_readers_cope_without_their_publishers(name, model_files, pattern_data):
    model, data = _tiny(model_files, pattern_data)
    cfg = fast_config_dict()
    cfg.setdefault("audit", {})["checks"] = [name]
    res = run_audit(model, data, cfg)
    assert res.check(name).error is None


def test_battery_order_follows_declarations_not_imports():
    code = ("import probes.attribution, probes.bias\n"
            "from audit.registry import battery_order, registered_checks\n"
            "print(list(registered_checks()))\n"
            "print(battery_order(['bias', 'attribution', 'class_viz', 'adversarial']))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    every, some = out.strip().splitlines()
    assert every == str(["clean", "adversarial", "fooling", "class_viz", "attribution", "bias"])
    order = eval(some)  # noqa: S307 - our own printed list
    assert order.index("adversarial") < order.index("attribution")
    assert order.index("class_viz") < order.index("bias")
    assert battery_order(["attribution", "adversarial"]) == ["adversarial", "attribution"]


def test_publishing_an_undeclared_or_mistyped_value_is_refused(model_files, pattern_data):
    from audit.config import AuditConfig
    from audit.context import PublishError
    from audit.published import AdversarialExamples

    model, data = _tiny(model_files, pattern_data)
    ctx = Context(model=model, data=data, config=AuditConfig())
    sctx = ctx.scoped("adversarial", declared={"adversarial.examples": AdversarialExamples})
    with pytest.raises(PublishError, match="without declaring"):
        sctx.publish("fooling.images", {})
    with pytest.raises(PublishError, match="declared AdversarialExamples"):
        sctx.publish("adversarial.examples", {"x": torch.zeros(1)})
    assert "adversarial.examples" not in ctx.published


def test_fast_config_is_valid_for_every_check():
    from audit.config import AuditConfig

    cfg = AuditConfig.from_dict(fast_config_dict())
    assert set(cfg.check_options) <= set(CHECKS)
    assert FAST_CONFIG.strip()


@pytest.mark.parametrize("name", list(CHECKS))
def test_the_base_owns_the_lifecycle(name):
    from audit.check import Check

    cls = CHECKS[name]
    assert cls.run is Check.run, f"{name} overrides run(); implement units/compute/summarize instead"
    assert cls.compute is not Check.compute and cls.summarize is not Check.summarize


def test_a_taken_check_name_is_refused():
    from audit.check import Check
    from audit.registry import register_check

    class Impostor(Check):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_check("clean")(Impostor)
    assert CHECKS["clean"].__name__ == "CleanCheck"
