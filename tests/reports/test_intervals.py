"""Rates with their 95% intervals in the reports: one formatter (reports/format.py), the HTML
metric, gate and baseline tables, summary.md and junit.xml; results without intervals (older
results.json files) still render as before."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

import reports
from audit.compare import compare
from audit.config import parse_gate
from audit.policy import evaluate_gate
from audit.results import AuditResult, CheckResult, Metric, wilson_interval
from reports.format import fmt_interval, fmt_rate

EVIL = "<script>alert(1)</script>"
LO, HI = wilson_interval(4, 48)


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def test_fmt_rate():
    assert fmt_rate(4 / 48, LO, HI) == "8.3% [3.3\u201319.6]"
    assert fmt_rate(4 / 48, LO, HI, n=48) == "8.3% [3.3\u201319.6], n=48"
    assert fmt_rate(1.0, *wilson_interval(48, 48)) == "100.0% [92.6\u2013100.0]"
    assert fmt_rate(0.25) == "25.0%"  # no interval: the percentage alone
    assert fmt_rate(None, None, None, n=0, missing="n/a") == "n/a, n=0"
    assert fmt_rate(float("nan")) == "\u2014"
    assert fmt_interval({"value": 4 / 48, "ci_low": LO, "ci_high": HI, "n": 48}) == "8.3% [3.3\u201319.6], n=48"
    assert fmt_interval(None) == ""


def _result(with_intervals: bool = True) -> AuditResult:
    adv = CheckResult("adversarial", duration_s=1.0, summary="L\u221e \u03b5=8/255: robust 8.3% [3.3\u201319.6] of 48")
    if with_intervals:
        adv.rate("robust_accuracy", 4, 48, attack="worst", norm="linf", epsilon=0.0314)
        adv.rate("robust_accuracy", 1, 8, attack="worst", norm="linf", epsilon=0.0314, **{"class": EVIL})
        adv.rate("robust_accuracy", 0, 0, attack="worst", norm="linf", epsilon=0.0314, **{"class": "emu"})
    else:
        adv.metric("robust_accuracy", 4 / 48, attack="worst", norm="linf", epsilon=0.0314)
    adv.metric("median_min_perturbation", 0.0195, norm="linf")
    gates = [evaluate_gate(parse_gate("adversarial.robust_accuracy.ci_low[attack=worst,norm=linf,epsilon=0.0314]"
                                      if with_intervals else
                                      "adversarial.robust_accuracy[attack=worst,norm=linf,epsilon=0.0314]",
                                      ">= 0.3"), [adv])]
    res = AuditResult(model={"path": "m.pt"}, run={"seed": 0, "duration_s": 1.0}, checks=[adv], gates=gates)
    res.finalize_status()
    return res


def _metric_rows(html: str) -> list[str]:
    table = html.split("<h3>Metrics</h3>", 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr>.*?</tr>", table, flags=re.S)


def test_html_shows_rates_with_interval_and_n():
    html = reports.render_html(_result())
    head, *rows = _metric_rows(html)
    assert '<th class="num">n</th>' in head
    assert "8.3% [3.3\u201319.6]</td><td class=\"num\">48</td>" in rows[0]
    assert "12.5% [2.2\u201347.1]</td><td class=\"num\">8</td>" in rows[1]
    assert "&lt;script&gt;" in rows[1] and EVIL not in html  # escaped as usual
    assert "missing" in rows[2] and ">0</td>" in rows[2]  # a rate over no samples: no value, n = 0
    assert re.search(r">0\.0195</td><td class=\"num\"></td>", rows[3])  # not a rate: its value, no n
    assert "95% Wilson score interval" in html
    gates = html.split('<section id="gates">', 1)[1].split("</section>", 1)[0]
    assert f">{LO:.4g}<br>" in gates and "8.3% [3.3\u201319.6], n=48" in gates


def test_html_of_a_result_without_intervals_renders_as_before(tmp_path):
    res = _result(with_intervals=False)
    res.save(tmp_path)
    loaded = AuditResult.load(tmp_path)
    assert all(m.n is None for m in loaded.checks[0].metrics) and loaded.gates[0].interval is None
    html = reports.render_html(loaded)
    head, *rows = _metric_rows(html)
    assert ">n</th>" not in head and "Wilson" not in html
    assert ">0.08333</td></tr>" in rows[0]
    assert html == reports.render_html(res)
    assert "n,ci_low" not in (tmp_path / "metrics.csv").read_text()


def test_saved_result_with_intervals_rerenders_the_same(tmp_path):
    res = _result()
    res.save(tmp_path)
    loaded = AuditResult.load(tmp_path)
    assert loaded.to_dict() == res.to_dict()
    assert reports.render_html(loaded) == reports.render_html(res)
    assert reports.render_markdown(loaded) == reports.render_markdown(res)


def test_markdown_gate_value_shows_the_rate():
    md = reports.render_markdown(_result())
    row = [ln for ln in md.split("### Gates", 1)[1].splitlines() if ln.startswith("| `")][0]
    assert f"| {LO:.4g}<br>8.3% \\[3.3\u201319.6\\], n=48 |" in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 6  # 5 columns, table intact
    assert "[3.3\u201319.6] of 48" in md.replace("\\", "")  # the check's own summary line
    old = reports.render_markdown(_result(with_intervals=False))
    assert "<br>" not in old.split("### Gates", 1)[1].split("### Findings")[0]


def test_junit_gate_message_shows_the_rate():
    root = ET.fromstring(reports.render_junit(_result()))
    failure = root.find(".//testcase[@classname='audit.gates']/failure")
    assert failure is not None
    assert f"= {LO:.6g} (rate 8.3% [3.3\u201319.6], n=48), required >= 0.3" in failure.get("message")
    old = ET.fromstring(reports.render_junit(_result(with_intervals=False)))
    assert "rate" not in old.find(".//testcase[@classname='audit.gates']/failure").get("message")


def test_baseline_rows_show_intervals():
    base, new = _result(), _result()
    new.checks[0].metrics[0] = Metric("robust_accuracy", 2 / 48, {"attack": "worst", "norm": "linf",
                                                                   "epsilon": 0.0314}, 48, *wilson_interval(2, 48))
    new.baseline = compare(base, new)
    html = reports.render_html(new)
    section = html.split('<section id="baseline">', 1)[1].split("</section>", 1)[0]
    assert "8.3% [3.3\u201319.6], n=48" in section and "4.2% [1.2\u201314.0], n=48" in section
    assert "regressed" in section
