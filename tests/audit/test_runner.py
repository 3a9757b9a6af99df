"""audit/runner.py through the API: validation before any check runs, subsets, seeds."""
import pytest

from audit import AuditData, load_model, run_audit
from audit.errors import UsageError
from audit.runner import derive_seed


@pytest.fixture()
def model(model_files):
    return load_model(model_files / "dyn.pt2", device="cpu")


def _data(x, y):
    return AuditData(x, y, [str(i) for i in range(4)], [str(i) for i in range(len(y))])


def test_labels_outside_the_model_are_a_usage_error(model, pattern_data):
    x, y = pattern_data
    bad = y.clone()
    bad[0] = 7
    with pytest.raises(UsageError, match="labels run 0..7"):
        run_audit(model, _data(x, bad), {"audit": {"checks": ["clean"]}})


def test_config_samples_subset_the_data_in_the_api(model, pattern_data):
    x, y = pattern_data
    res = run_audit(model, _data(x, y), {"audit": {"checks": ["clean"], "samples": 8, "seed": 2}})
    assert res.data["n"] == 8 and res.run["samples"] == 8
    assert res.check("clean").metrics[-1].value is not None


def test_data_free_selection_needs_no_data_and_checks_needing_data_say_so(model):
    with pytest.raises(UsageError, match="need data"):
        run_audit(model, None, {"audit": {"checks": ["clean"]}})


def test_check_seeds_are_stable_and_distinct():
    assert derive_seed(0, "clean") == derive_seed(0, "clean")
    assert derive_seed(0, "clean") != derive_seed(0, "fooling") != derive_seed(1, "fooling")
