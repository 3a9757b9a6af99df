"""audit: robustness and interpretability audits for PyTorch image classifiers.

```python
from audit import load_model, load_data, run_audit
result = run_audit(load_model("model.pt"), load_data("val/"), config="audit.toml")
result.frame              # pandas DataFrame, one row per metric
result.save("audit-out")  # report.html, results.json, metrics.csv, junit.xml, summary.md
assert result.passed, result.summary()
```
"""
from .version import __version__  # noqa: E402

from .config import AuditConfig  # noqa: E402
from .data import AuditData, load_data  # noqa: E402
from .errors import AuditError, ExitCode, UsageError  # noqa: E402
from .model import AuditModel, ModelSpec, load_model  # noqa: E402
from .check import Check, Unit  # noqa: E402
from .context import Context  # noqa: E402
from .records import record  # noqa: E402
from .registry import register_check, registered_checks  # noqa: E402
from .results import AuditResult, CheckResult  # noqa: E402
from .runner import run_audit  # noqa: E402

__all__ = ["AuditConfig", "AuditData", "AuditError", "AuditModel", "AuditResult", "Check", "CheckResult", "Context",
           "ExitCode", "ModelSpec", "Unit", "UsageError", "load_data", "load_model", "record", "register_check",
           "registered_checks", "run_audit", "__version__"]
