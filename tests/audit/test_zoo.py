"""audit/zoo.py: the architecture registry refuses duplicate names and resolves lazy entries
only when that architecture is built."""
import subprocess
import sys

import pytest
import torch.nn as nn

from audit import zoo


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so that a test's entries do not outlive it."""
    monkeypatch.setattr(zoo, "_ARCHS", dict(zoo._ARCHS))
    return zoo


def test_duplicate_name_is_refused(registry):
    with pytest.raises(ValueError, match="'gymnet' is already registered"):
        registry.register_arch("gymnet", lambda num_classes: nn.Linear(2, num_classes))

    @registry.register_arch("dup_net")
    def first(*, num_classes):
        return nn.Linear(3, num_classes)

    with pytest.raises(ValueError, match="'dup_net' is already registered"):
        registry.register_arch("dup_net")(lambda num_classes: nn.Linear(5, num_classes))
    assert registry.create_arch("dup_net", num_classes=2).in_features == 3  # the first one stays


def test_bad_lazy_path_is_refused(registry):
    with pytest.raises(ValueError, match="module:attr"):
        registry.register_arch("no_colon", "some.module.attr")


def test_lazy_entry_is_imported_only_when_built(registry, tmp_path, monkeypatch):
    (tmp_path / "lazy_arch_mod.py").write_text(
        "import torch.nn as nn\n\ndef make(*, num_classes):\n    return nn.Linear(7, num_classes)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_arch_mod", raising=False)
    registry.register_arch("lazynet", "lazy_arch_mod:make")
    assert "lazynet" in registry.list_archs()
    assert "lazy_arch_mod" not in sys.modules
    net = registry.create_arch("lazynet", num_classes=3)
    assert isinstance(net, nn.Linear) and (net.in_features, net.out_features) == (7, 3)
    assert "lazy_arch_mod" in sys.modules


def test_registry_does_not_import_the_demo():
    code = ("import sys, audit.zoo as z; assert not [m for m in sys.modules if m.startswith('audit.demo')]; "
            "assert 'gymnet' in z.list_archs(); net = z.create_arch('gymnet', num_classes=6); "
            "assert type(net).__name__ == 'GymNet' and 'audit.demo.model' in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
