"""The results contract: what every check returns and what every report reads.

``results.json`` (schema ``audit-result/1``, documented in docs/results.md) is the
serialized :class:`AuditResult`. Reports import this module and nothing from
``attacks/`` or ``probes/``; a saved ``results.json`` re-renders to the same report.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

SCHEMA = "audit-result/1"

#: Severity/status order, worst last. ``error`` means the tool could not answer.
STATUS_ORDER = ("pass", "info", "warn", "fail", "error")
SEVERITIES = ("info", "warn", "fail")


def worst(statuses: Iterable[str], default: str = "pass") -> str:
    """The worst of several statuses (``info`` counts as ``pass`` for a verdict)."""
    out = default
    for s in statuses:
        if STATUS_ORDER.index(s) > STATUS_ORDER.index(out):
            out = s
    return "pass" if out == "info" else out


def _clean_number(v: Any) -> Any:
    """JSON has no NaN/inf: they are written as null (recursively in lists and dicts)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean_number(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean_number(x) for x in v]
    return v


@functools.lru_cache(maxsize=4096)
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The two-sided Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001) of the
    proportion ``successes``/``n``, by ``scipy.stats.binomtest(...).proportion_ci(method="wilson")``:
    (low, high) in [0, 1]; (None, None) when ``n`` is 0. ValueError unless 0 <= successes <= n."""
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"a rate needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return min(max(float(ci.low), 0.0), 1.0), min(max(float(ci.high), 0.0), 1.0)


@dataclass
class Metric:
    """One tidy metric row: ``name``, ``value`` and its qualifiers (attack, norm, epsilon,
    method, class, concept, ...). A **rate** (a share of ``n`` samples, made by
    :meth:`CheckResult.rate`) also carries ``n`` and its 95% Wilson interval ``ci_low``,
    ``ci_high`` (None when ``n`` is 0); these are not qualifiers: they do not identify the row."""

    name: str
    value: float | None
    qualifiers: dict[str, Any] = field(default_factory=dict)
    #: the denominator of a rate (None: the metric is not a rate)
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    #: the keys of a row that are not qualifiers (a qualifier may not use them)
    RESERVED: ClassVar[tuple[str, ...]] = ("name", "value", "n", "ci_low", "ci_high")

    def __post_init__(self) -> None:
        if clash := sorted(set(self.qualifiers) & set(self.RESERVED)):
            raise ValueError(f"metric {self.name!r}: {clash[0]!r} is a field of a metric row, not a qualifier")

    @property
    def is_rate(self) -> bool:
        """A share of ``n`` counted samples with its Wilson interval."""
        return self.n is not None

    @property
    def has_interval(self) -> bool:
        """A 95% interval is known: a rate's, or an estimate's (e.g. a bootstrap interval of an
        ECE, with ``ci_low``/``ci_high`` but no ``n``)."""
        return self.ci_low is not None or self.ci_high is not None

    def part(self, name: str) -> float | None:
        """``value``, ``ci_low``, ``ci_high`` or ``n`` (as a float) of this row."""
        v = getattr(self, name)
        return None if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        rate = {} if self.n is None else {"n": self.n}
        if self.n is not None or self.has_interval:
            rate.update(ci_low=_clean_number(self.ci_low), ci_high=_clean_number(self.ci_high))
        return {"name": self.name, "value": _clean_number(self.value), **rate, **self.qualifiers}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metric":
        d = dict(d)
        name, value = d.pop("name"), d.pop("value")
        n, lo, hi = (d.pop(k, None) for k in ("n", "ci_low", "ci_high"))
        return cls(name=name, value=value, qualifiers=d, n=n, ci_low=lo, ci_high=hi)


@dataclass
class Finding:
    """Something a reviewer should know. ``code`` is dotted and stable (docs/findings.md)."""

    severity: str
    code: str
    message: str
    class_: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"finding severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "code": self.code, "message": self.message,
                "class": self.class_, **self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Finding":
        d = dict(d)
        return cls(severity=d.pop("severity"), code=d.pop("code"), message=d.pop("message"),
                   class_=d.pop("class", None), extra=d)


@dataclass
class Artifact:
    """A file a check produced (an image, a plot). ``path`` is relative to the output
    folder; ``data`` holds the bytes until :meth:`AuditResult.save` writes them."""

    kind: str
    path: str
    caption: str = ""
    data: bytes | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "caption": self.caption}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Artifact":
        return cls(kind=d["kind"], path=d["path"], caption=d.get("caption", ""))

    def read(self, base: str | os.PathLike | None) -> bytes | None:
        """The artifact's bytes: in memory, or from ``base/path`` on disk; raises
        :class:`~audit.artifacts.UnsafeArtifactPath` for a path that leaves ``base``."""
        if self.data is not None or base is None:
            return self.data
        from .artifacts import safe_artifact_path
        p = safe_artifact_path(base, self.path)
        return p.read_bytes() if p.is_file() else None


@dataclass
class SampleTable:
    """Per-sample outcomes of a check, so two runs compare sample by sample (``audit diff``,
    ``--baseline``): ``ids`` the sample ids, ``columns`` name -> one value per id. Boolean
    columns are outcomes where True is the good one (``correct``; ``robust[norm=linf,epsilon=0.031]``);
    other columns (labels, predictions, confidences) are context."""

    ids: list[str]
    columns: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        for k, v in self.columns.items():
            if len(v) != len(self.ids):
                raise ValueError(f"sample column {k!r} has {len(v)} values for {len(self.ids)} ids")

    def outcomes(self) -> dict[str, dict[str, bool]]:
        """Boolean column name -> {sample id: value}."""
        return {k: dict(zip(self.ids, v)) for k, v in self.columns.items()
                if v and all(isinstance(b, bool) for b in v)}

    def to_dict(self) -> dict[str, Any]:
        return {"id": list(self.ids), **{k: list(v) for k, v in self.columns.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SampleTable":
        d = dict(d)
        return cls(ids=d.pop("id"), columns=d)


@dataclass
class CheckResult:
    """What one check returns. ``status`` is derived from findings unless the check
    errored; ``summary`` is the check's one-line key numbers for the report table."""

    name: str
    status: str = "pass"
    duration_s: float = 0.0
    error: str | None = None
    metrics: list[Metric] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    #: per-sample outcomes (compared id by id between runs), or None
    samples: SampleTable | None = None

    # -- helpers for checks -------------------------------------------------
    def metric(self, name: str, value: float | None, **qualifiers: Any) -> Metric:
        m = Metric(name, None if value is None else float(value), qualifiers)
        self.metrics.append(m)
        return m

    def rate(self, name: str, successes: int, n: int, **qualifiers: Any) -> Metric:
        """A rate row: value ``successes / n`` (None when ``n`` is 0) with ``n`` and its 95%
        Wilson score interval (:func:`wilson_interval`). ``successes`` and ``n`` are counts
        (ints, or integer 0-d tensors); a float (a share passed by mistake) raises TypeError."""
        k, total = operator.index(successes), operator.index(n)
        lo, hi = wilson_interval(k, total)
        m = Metric(name, k / total if total else None, qualifiers, n=total, ci_low=lo, ci_high=hi)
        self.metrics.append(m)
        return m

    def finding(self, severity: str, code: str, message: str, *, class_: str | None = None,
                **extra: Any) -> Finding:
        f = Finding(severity, code, message, class_, extra)
        self.findings.append(f)
        return f

    def image(self, name: str, png: bytes, caption: str = "") -> Artifact:
        a = Artifact("image", f"artifacts/{self.name}/{name}", caption, png)
        self.artifacts.append(a)
        return a

    def finalize_status(self) -> None:
        if self.error is not None:
            self.status = "error"
        else:
            self.status = worst(f.severity for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "status": self.status, "duration_s": round(self.duration_s, 3),
             "error": self.error, "summary": self.summary,
             "metrics": [m.to_dict() for m in self.metrics],
             "findings": [f.to_dict() for f in self.findings],
             "artifacts": [a.to_dict() for a in self.artifacts]}
        if self.samples is not None:
            d["samples"] = self.samples.to_dict()
        if self.data:
            d["data"] = self.data
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CheckResult":
        return cls(name=d["name"], status=d["status"], duration_s=d.get("duration_s", 0.0),
                   error=d.get("error"), summary=d.get("summary", ""),
                   metrics=[Metric.from_dict(m) for m in d.get("metrics", [])],
                   findings=[Finding.from_dict(f) for f in d.get("findings", [])],
                   artifacts=[Artifact.from_dict(a) for a in d.get("artifacts", [])],
                   data=d.get("data", {}),
                   samples=SampleTable.from_dict(d["samples"]) if isinstance(d.get("samples"), dict) else None)


@dataclass
class GateResult:
    """One CI gate evaluated: ``metric`` (e.g. ``clean.accuracy[class=cat]``) compared with
    ``condition`` (e.g. ``>= 0.9``). ``status`` is pass, or ``severity`` when unmet."""

    gate: str
    condition: str
    severity: str
    status: str
    value: float | None
    message: str
    #: when the row shown is a rate: its ``value``, ``ci_low``, ``ci_high`` and ``n``
    interval: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"gate": self.gate, "condition": self.condition, "severity": self.severity,
             "status": self.status, "value": _clean_number(self.value), "message": self.message}
        return d if self.interval is None else {**d, "interval": _clean_number(self.interval)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GateResult":
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


@dataclass
class AuditResult:
    """All check results plus run metadata and evaluated gates."""

    model: dict[str, Any]
    run: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    status: str = "pass"
    interrupted: bool = False
    #: comparison with a baseline result (``audit run --baseline``), see audit.compare
    baseline: dict[str, Any] | None = None
    schema: str = SCHEMA
    #: folder the result was loaded from or saved to (artifact files live under it)
    base_dir: str | None = field(default=None, repr=False, compare=False)

    def finalize_status(self) -> None:
        self.status = worst([c.status for c in self.checks] + [g.status for g in self.gates])

    # -- views ----------------------------------------------------------------
    @property
    def passed(self) -> bool:
        """True when no gate failed and no check errored (warnings pass)."""
        return not self.failed_gates() and not self.errored_checks() and not self.interrupted

    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == "fail"]

    def errored_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "error"]

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def frame(self):
        """The tidy pandas DataFrame of all metric rows, with a ``check`` column (and ``n``,
        ``ci_low``, ``ci_high`` after ``value`` when any row is a rate)."""
        import pandas as pd

        rows = [{"check": c.name, **m.to_dict()} for c in self.checks for m in c.metrics]
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=["check", "name", "value"])
        if "n" in df:  # rates: n (an integer, empty for other rows) and the interval after value
            df["n"] = df["n"].astype("Int64")
            first = ["check", "name", "value", "n", "ci_low", "ci_high"]
            df = df[first + [c for c in df.columns if c not in first]]
        return df

    def findings(self) -> list[tuple[str, Finding]]:
        """All findings as (check name, finding), worst severity first."""
        allf = [(c.name, f) for c in self.checks for f in c.findings]
        return sorted(allf, key=lambda cf: -STATUS_ORDER.index(cf[1].severity))

    def summary(self) -> str:
        """A few lines a person reads in a failing assertion or a CI log."""
        lines = [f"audit {self.status.upper()}: model {self.model.get('path')}"]
        for c in self.checks:
            extra = f" ({c.error})" if c.error else (f": {c.summary}" if c.summary else "")
            lines.append(f"  check {c.name}: {c.status}{extra}")
        for g in self.gates:
            lines.append(f"  gate {g.gate} {g.condition}: {g.status} ({g.message})")
        return "\n".join(lines)

    # -- (de)serialization -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"schema": self.schema, "status": self.status, "model": self.model, "run": self.run,
             "checks": [c.to_dict() for c in self.checks],
             "gates": [g.to_dict() for g in self.gates]}
        if self.data:
            d["data"] = self.data
        if self.interrupted:
            d["interrupted"] = True
        if self.baseline is not None:
            d["baseline"] = self.baseline
        return d

    def to_json(self) -> str:
        return json.dumps(_clean_number(self.to_dict()), indent=2, allow_nan=False, default=_json_default)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AuditResult":
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"unsupported results schema {d.get('schema')!r} (expected {SCHEMA!r})")
        return cls(model=d["model"], run=d["run"], status=d["status"],
                   checks=[CheckResult.from_dict(c) for c in d["checks"]],
                   gates=[GateResult.from_dict(g) for g in d.get("gates", [])],
                   data=d.get("data", {}), interrupted=d.get("interrupted", False), baseline=d.get("baseline"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AuditResult":
        p = Path(path)
        if p.is_dir():
            p = p / "results.json"
        res = cls.from_dict(json.loads(p.read_text()))
        res.base_dir = str(p.parent)
        return res

    def save(self, out: str | os.PathLike = "audit-out") -> Path:
        """Write artifacts, results.json, metrics.csv, report.html, junit.xml, summary.md into
        ``out``, all together (:func:`audit.outputs.save_outputs`: a crash or interruption while
        writing leaves the previous outputs whole). Raises :class:`audit.outputs.OutputError`."""
        from .outputs import save_outputs

        return save_outputs(self, out)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return _clean_number(o.item())
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
