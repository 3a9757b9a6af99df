"""``AuditConfig``: one object the CLI and the API both build, from a TOML file, a dict or
keyword options.

```toml
[audit]
seed = 0
samples = 500          # class-stratified subset
device = "auto"
checks = ["clean", "adversarial"]
fail_on = "none"       # also fail the run on findings of this severity: none | warn | fail
precision = "fp32"     # the gradient loops' precision: fp32 | bf16 (docs/performance.md)
compile = false        # torch.compile the gradient loops' network: false | true | "auto"

[checks.clean]
ece_bins = 15

[gates]
"clean.accuracy" = ">= 0.9"
"clean.accuracy[class=*]" = { condition = ">= 0.7", severity = "warn" }
"adversarial.robust_accuracy[attack=worst,norm=linf,epsilon=0.0078]" = ">= 0.3"
"adversarial.robust_accuracy.ci_low[attack=worst,norm=linf,epsilon=0.0078]" = ">= 0.2"  # 95% interval's lower bound
```
"""
from __future__ import annotations

import dataclasses
import math
import operator
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .files import MiB, regular_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

AUDIT_KEYS = {"seed", "samples", "device", "checks", "fail_on", "batch_size", "threads", "precision", "compile"}
FAIL_ON = ("none", "warn", "fail")
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_GATE_RE = re.compile(r"^\s*([A-Za-z_][\w]*)\.([A-Za-z_][\w]*)(?:\.([A-Za-z_][\w]*))?\s*(?:\[(.*)\])?\s*$")
#: what a gate can test of a metric row: its value, or a rate's 95% interval bounds or sample count
GATE_PARTS = ("value", "ci_low", "ci_high", "n")
#: [audit] integers: inclusive range (a seed fits torch's 64-bit generator state)
_BOUNDS = {"seed": (0, 2**63 - 1), "samples": (1, 10**9), "batch_size": (1, 10**6), "threads": (1, 4096)}
_COND_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+|nan|inf)\s*$")


@dataclass
class Gate:
    """``check.metric[qualifier=value,...]`` compared by ``op`` with ``threshold``. A
    qualifier value ``*`` matches every row (then every matched row must pass).
    ``check.metric.PART[...]`` tests another number of the rows than their value: ``ci_low``
    or ``ci_high`` (a rate's 95% interval bounds) or ``n`` (its sample count)."""

    expr: str
    check: str
    metric: str
    qualifiers: dict[str, str]
    op: str
    threshold: float
    severity: str = "fail"
    #: the number of each matched row the condition tests (one of GATE_PARTS)
    part: str = "value"

    @property
    def condition(self) -> str:
        return f"{self.op} {self.threshold:g}"

    def holds(self, value: float | None) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return bool(_OPS[self.op](value, self.threshold))


def parse_gate(expr: str, spec: Any) -> Gate:
    """The gate ``expr = spec`` of a ``[gates]`` table. Raises ConfigError (exit 4, when the
    config is read) for a malformed expression, qualifier list, severity or condition (a
    threshold that is not a finite-or-infinite number, NaN included)."""
    if not isinstance(expr, str):
        raise ConfigError(f"[gates] {expr!r}: a gate's name must be a string like \"clean.accuracy\"")
    m = _GATE_RE.match(expr)
    if not m:
        raise ConfigError(f"[gates] {expr!r} is not check.metric or check.metric[key=value,...], optionally "
                          f"with .PART after the metric ({', '.join(GATE_PARTS[1:])})")
    check, metric, row_part, quals = m.group(1), m.group(2), m.group(3) or "value", m.group(4)
    if row_part not in GATE_PARTS:
        raise ConfigError(f"[gates] {expr!r}: unknown field {row_part!r} of a metric row "
                          f"(known: {', '.join(GATE_PARTS)})")
    qualifiers: dict[str, str] = {}
    if quals is not None:
        for part in quals.split(","):
            k, eq, v = (s.strip() for s in part.partition("="))
            if not eq or not k or not v:
                raise ConfigError(f"[gates] {expr!r}: qualifier {part.strip()!r} is not key=value")
            if k in qualifiers:
                raise ConfigError(f"[gates] {expr!r}: qualifier {k!r} is given twice")
            qualifiers[k] = v
    severity = "fail"
    if isinstance(spec, dict):
        unknown = set(spec) - {"condition", "severity"}
        if unknown:
            raise ConfigError(f"[gates] {expr!r}: unknown key {sorted(unknown)[0]!r} (known: condition, severity)")
        cond = spec.get("condition")
        severity = spec.get("severity", "fail")
    else:
        cond = spec
    if isinstance(cond, str) and ":" in cond:  # "warn: >= 0.9"
        severity, cond = (s.strip() for s in cond.split(":", 1))
    if not isinstance(severity, str) or severity not in ("warn", "fail"):
        raise ConfigError(f"[gates] {expr!r}: severity {severity!r} must be warn or fail")
    cm = _COND_RE.match(cond) if isinstance(cond, str) else None
    if not cm:
        raise ConfigError(f"[gates] {expr!r} = {cond!r}: the condition must be like \">= 0.9\" (ops: >= > <= < == !=)")
    try:
        threshold = float(cm.group(2))
    except ValueError:
        threshold = math.nan
    if math.isnan(threshold):
        raise ConfigError(f"[gates] {expr!r} = {cond!r}: the threshold must be a number like 0.9")
    return Gate(expr, check, metric, qualifiers, cm.group(1), threshold, severity, row_part)


@dataclass
class AuditConfig:
    """Everything that decides what an audit does. Keyword-only; validated on build."""

    seed: int = 0
    samples: int | None = None
    device: str = "auto"
    checks: list[str] | None = None  #: None runs every registered check
    fail_on: str = "none"
    batch_size: int = 128
    threads: int | None = None  #: CPU threads for torch (None: torch's default)
    #: the gradient loops' fast path (:mod:`audit.fastpath`, docs/performance.md)
    precision: str = "fp32"  #: "fp32" | "bf16" (autocast; every candidate confirmed in fp32)
    compile: bool | str = False  #: False | True | "auto" (torch.compile, CUDA only under "auto")
    check_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    source: str | None = None

    def __post_init__(self) -> None:
        for key, (lo, hi) in _BOUNDS.items():
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi):
                raise ConfigError(f"{key} must be an integer from {lo} to {hi:,}, got {v!r}")
        if self.checks is not None:
            if not isinstance(self.checks, list) or not all(isinstance(c, str) for c in self.checks):
                raise ConfigError(f"checks must be a list of check names, got {self.checks!r}")
            if not self.checks:
                raise ConfigError("no checks selected; name at least one (`audit list` shows them)")
        if not isinstance(self.device, str):
            raise ConfigError(f"device must be a string such as \"auto\", got {self.device!r}")
        if self.fail_on not in FAIL_ON:
            raise ConfigError(f"fail_on must be one of {', '.join(FAIL_ON)}, got {self.fail_on!r}")
        from .fastpath import PRECISIONS, parse_compile

        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.compile, str) and self.compile != "auto":
            raise ConfigError(f"compile must be true, false or \"auto\" (TOML booleans unquoted), got {self.compile!r}")
        try:
            self.compile = parse_compile(self.compile)
        except ValueError:
            raise ConfigError(f"compile must be true, false or \"auto\", got {self.compile!r}") from None
        self.validate()

    def validate(self) -> None:
        from .registry import get_check

        for name in self.checks or []:
            get_check(name)
        for name, table in self.check_options.items():
            get_check(name).parse_options(table)
        for g in self.gates:
            cls = get_check(g.check)
            if cls.metrics and g.metric not in cls.metrics:
                raise ConfigError(f"[gates] {g.expr!r}: check {g.check!r} has no metric {g.metric!r} "
                                  f"(it has: {', '.join(cls.metrics)})")
            if self.checks is not None and g.check not in self.checks:
                raise ConfigError(f"[gates] {g.expr!r} gates check {g.check!r}, which is not selected to run")

    def selected_checks(self) -> list[str]:
        from .registry import registered_checks

        return list(self.checks) if self.checks is not None else list(registered_checks())

    def options_for(self, name: str) -> Any:
        from .registry import get_check

        return get_check(name).parse_options(self.check_options.get(name))

    def replace(self, **changes: Any) -> "AuditConfig":
        """A copy with some fields changed (``None`` values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> "AuditConfig":
        unknown = set(d) - {"audit", "checks", "gates"}
        if unknown:
            raise ConfigError(f"config{_where(source)}: unknown table or key {sorted(unknown)[0]!r} "
                              "(known: [audit], [checks.NAME], [gates])")
        if not isinstance(d.get("audit", {}), dict):
            raise ConfigError(f"config{_where(source)}: [audit] must be a table")
        audit = dict(d.get("audit", {}))
        bad = set(audit) - AUDIT_KEYS
        if bad:
            raise ConfigError(f"config{_where(source)}: unknown key {sorted(bad)[0]!r} in [audit] "
                              f"(known: {', '.join(sorted(AUDIT_KEYS))})")
        checks_tbl = d.get("checks", {})
        if not isinstance(checks_tbl, dict) or any(not isinstance(v, dict) for v in checks_tbl.values()):
            raise ConfigError(f"config{_where(source)}: [checks] must hold tables like [checks.clean]")
        gates_tbl = d.get("gates", {})
        if not isinstance(gates_tbl, dict):
            raise ConfigError(f"config{_where(source)}: [gates] must be a table of \"check.metric\" = \">= value\"")
        checks = audit.get("checks")
        if isinstance(checks, str):
            checks = [c.strip() for c in checks.split(",") if c.strip()]
        return cls(seed=audit.get("seed", 0), samples=audit.get("samples"), device=audit.get("device", "auto"),
                   checks=checks, fail_on=audit.get("fail_on", "none"), batch_size=audit.get("batch_size", 128),
                   threads=audit.get("threads"), precision=audit.get("precision", "fp32"),
                   compile=audit.get("compile", False),
                   check_options={k: dict(v) for k, v in checks_tbl.items()},
                   gates=[parse_gate(k, v) for k, v in gates_tbl.items()], source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AuditConfig":
        """The config in TOML file ``path``. Raises :class:`ConfigError` (exit 4) when it is
        missing, not a regular file (a FIFO, a device), over 16 MiB, invalid or too deeply nested
        TOML, or holds any invalid value, before anything runs."""
        p = regular_file(path, "config file", error=ConfigError, max_bytes=16 * MiB)
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
            return cls.from_dict(d, source=str(p))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
        except RecursionError:
            raise ConfigError(f"config file {p} nests arrays or tables too deeply to read; "
                              "flatten it (an audit config needs two levels)") from None

    @classmethod
    def coerce(cls, config: "AuditConfig | str | os.PathLike | dict | None") -> "AuditConfig":
        if config is None:
            return cls()
        if isinstance(config, AuditConfig):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        return cls.load(config)


def _where(source: str | None) -> str:
    return f" {source}" if source else ""


#: what `audit init` writes: a commented starting point whose active lines parse as they are
TEMPLATE = '''# audit.toml: what `audit run MODEL --data DIR --config audit.toml` runs and gates on.
# Flags on the command line override these values. Unknown keys are errors.

[audit]
seed = 0                 # every random choice derives from it; same seed, same numbers
# samples = 500          # a seeded, class-stratified subset of the data
device = "auto"          # auto (GPU when there is one) | cpu | cuda | cuda:N
# checks = ["clean", "adversarial", "fooling", "class_viz", "attribution", "bias"]   # default: all
fail_on = "none"         # none | warn | fail: also fail the run on findings this severe
# threads = 1            # CPU threads for torch; 1 is often fastest for small models on a busy machine
# precision = "bf16"     # gradient loops under bf16 autocast (every candidate confirmed in fp32); default fp32
# compile = "auto"       # torch.compile the gradient loops: false (default) | true | "auto" (on CUDA only)

# Per-check options; `docs/<check>.md` lists each check's keys and defaults.
[checks.clean]
ece_bins = 15

# Gates: "check.metric[qualifier=value,...]" = "<op> <threshold>", op one of >= > <= < == !=.
# A qualifier value * matches every row (each must pass). A gate on a metric that does
# not exist is an error. { condition = "...", severity = "warn" } only warns when unmet.
# Rates (accuracy, robust_accuracy, attack_success_rate) carry a 95% interval and their sample
# count: "check.metric.ci_low[...]", ".ci_high" or ".n" gates on those instead of the value
# (on a metric that is not a rate such a gate is an error).
[gates]
"clean.accuracy" = ">= 0.9"
"clean.accuracy[class=*]" = { condition = ">= 0.7", severity = "warn" }
"clean.expected_calibration_error[bins=15]" = { condition = "<= 0.1", severity = "warn" }
# "adversarial.robust_accuracy[attack=worst,norm=linf,epsilon=0.0078]" = ">= 0.3"
# "adversarial.robust_accuracy.ci_low[attack=worst,norm=linf,epsilon=0.0078]" = ">= 0.2"   # its 95% interval's lower bound
# "fooling.fooling_rate[method=gradient]" = { condition = "<= 0.5", severity = "warn" }
'''
