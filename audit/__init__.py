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

# The public names are imported on first use (PEP 562), so that ``audit.cli`` starts without
# importing torch: a Ctrl-C while the CLI starts up is then its one-line "interrupted" (exit 2)
# rather than a traceback from inside an import.
_LAZY = {"AuditConfig": ".config", "AuditData": ".data", "load_data": ".data", "AuditError": ".errors",
         "ExitCode": ".errors", "UsageError": ".errors", "AuditModel": ".model", "ModelSpec": ".model",
         "load_model": ".model", "Check": ".check", "Unit": ".check", "Context": ".context", "record": ".records",
         "register_check": ".registry", "registered_checks": ".registry", "AuditResult": ".results",
         "CheckResult": ".results", "run_audit": ".runner", "inspect_model": ".inspection",
         "Inspection": ".inspection"}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
