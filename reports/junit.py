"""JUnit XML: one testcase per check and one per gate, for CI test views.

Layout (what GitLab, Jenkins, Azure and the GitHub test-report actions read)::

    <testsuites name="audit" tests= failures= errors= time=>
      <testsuite name="audit" tests= failures= errors= skipped="0" time= timestamp=>
        <properties>   model path, sha256, status, seed, device ...
        <testcase classname="audit.checks" name="adversarial" time="4.2">
          <failure message="...">fail findings, one a line</failure>     (status fail)
          <error message="..." type="CheckError">the error</error>       (status error)
          <system-out>summary, warn and info findings</system-out>
        <testcase classname="audit.gates" name="clean.accuracy >= 0.9" time="0">
          <failure message="metric clean.accuracy = 0.85, required >= 0.9">  (unmet fail gate)
          <system-out>...</system-out>                                        (unmet warn gate)
        <testcase classname="audit.run" name="interrupted">  only when the run was interrupted

Built with :mod:`xml.etree.ElementTree`, so escaping is the library's; characters XML 1.0
cannot carry at all (control characters) are replaced first.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from .format import fmt_interval, fmt_seconds, fmt_value, one_line, status_word

if TYPE_CHECKING:  # pragma: no cover
    from audit.results import AuditResult, CheckResult, GateResult

__all__ = ["render_junit"]

_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MESSAGE_MAX = 500


def _clean(text: Any) -> str:
    return _INVALID_XML.sub("\ufffd", "" if text is None else str(text))


def _short(text: str) -> str:
    return one_line(text, _MESSAGE_MAX)


def _value(v: Any) -> str:
    """A gate's value in a message: 6 significant digits, ``missing`` for None/NaN."""
    return fmt_value(v, digits=6, missing="missing")


def _finding_line(f) -> str:
    cls = f" [class {f.class_}]" if f.class_ is not None else ""
    return f"{status_word(f.severity)} {f.code}{cls}: {f.message}"


def _check_case(parent: ET.Element, c: "CheckResult") -> tuple[int, int]:
    case = ET.SubElement(parent, "testcase", classname="audit.checks", name=_clean(c.name),
                         time=fmt_seconds(c.duration_s))
    failures = errors = 0
    fails = [f for f in c.findings if f.severity == "fail"]
    others = [f for f in c.findings if f.severity != "fail"]
    if c.status == "error":
        errors = 1
        msg = c.error or "the check raised an error"
        el = ET.SubElement(case, "error", message=_clean(_short(msg)), type="CheckError")
        el.text = _clean(msg)
    elif c.status == "fail":
        failures = 1
        if fails:
            head = f"{len(fails)} failing finding{'s' if len(fails) != 1 else ''}: " + \
                "; ".join(f.code for f in fails)
        else:
            head = f"check {c.name} failed"
        el = ET.SubElement(case, "failure", message=_clean(_short(head)), type="AuditFailure")
        el.text = _clean("\n".join(_finding_line(f) for f in fails) or head)
    out_lines = []
    if c.summary:
        out_lines.append(c.summary)
    out_lines += [_finding_line(f) for f in others]
    if out_lines:
        ET.SubElement(case, "system-out").text = _clean("\n".join(out_lines))
    return failures, errors


def _gate_case(parent: ET.Element, g: "GateResult") -> tuple[int, int]:
    name = f"{g.gate} {g.condition}".strip()
    case = ET.SubElement(parent, "testcase", classname="audit.gates", name=_clean(name), time="0.000")
    rate = fmt_interval(g.interval, missing="missing")
    msg = f"metric {g.gate} = {_value(g.value)}{f' (rate {rate})' if rate else ''}, required {g.condition}"
    if g.status == "fail":
        el = ET.SubElement(case, "failure", message=_clean(_short(msg)), type="GateFailure")
        el.text = _clean(g.message or msg)
        return 1, 0
    if g.status == "error":
        el = ET.SubElement(case, "error", message=_clean(_short(g.message or msg)), type="GateError")
        el.text = _clean(g.message or msg)
        return 0, 1
    if g.status != "pass":  # an unmet warn (or info) gate passes, with a note
        ET.SubElement(case, "system-out").text = _clean(
            f"{status_word(g.status)}: {msg}" + (f"\n{g.message}" if g.message else ""))
    elif g.message:
        ET.SubElement(case, "system-out").text = _clean(g.message)
    return 0, 0


def render_junit(result: "AuditResult") -> str:
    """``result`` as a JUnit XML document (a string with an XML declaration)."""
    run = result.run or {}
    model = result.model or {}
    suites = ET.Element("testsuites", name="audit")
    suite = ET.SubElement(suites, "testsuite", name="audit")
    props = ET.SubElement(suite, "properties")
    for key, value in (("status", result.status), ("schema", result.schema),
                       ("model.path", model.get("path")), ("model.sha256", model.get("sha256")),
                       ("model.format", model.get("format")), ("run.seed", run.get("seed")),
                       ("run.device", run.get("device")), ("run.torch", run.get("torch"))):
        if value is not None:
            ET.SubElement(props, "property", name=key, value=_clean(value))

    tests = failures = errors = 0
    for c in result.checks:
        f, e = _check_case(suite, c)
        tests, failures, errors = tests + 1, failures + f, errors + e
    for g in result.gates:
        f, e = _gate_case(suite, g)
        tests, failures, errors = tests + 1, failures + f, errors + e
    if result.interrupted:
        case = ET.SubElement(suite, "testcase", classname="audit.run", name="interrupted", time="0.000")
        ET.SubElement(case, "error", message="the audit run was interrupted; results are incomplete",
                      type="Interrupted")
        tests, errors = tests + 1, errors + 1

    total = run.get("duration_s")
    if not isinstance(total, (int, float)) or isinstance(total, bool):
        total = sum(c.duration_s or 0.0 for c in result.checks)
    for el in (suites, suite):
        el.set("tests", str(tests))
        el.set("failures", str(failures))
        el.set("errors", str(errors))
        el.set("time", fmt_seconds(total))
    suite.set("skipped", "0")
    if run.get("started"):
        suite.set("timestamp", _clean(run["started"]))
    if len(props) == 0:
        suite.remove(props)
    ET.indent(suites, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
