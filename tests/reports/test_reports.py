"""Tests for reports/: write_all and the HTML, JUnit and Markdown renderers."""
from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image

import reports
from audit.results import Artifact, AuditResult, CheckResult, GateResult

EVIL = "<script>alert(1)</script>"
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
QUOTED_MSG = "robust accuracy below 0.3 \"&'"
FILES = {"results.json", "metrics.csv", "report.html", "junit.xml", "summary.md"}


def _png(color=(200, 30, 30), size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_result() -> AuditResult:
    """Two checks (one with metrics, findings and an image; one errored), two gates
    (one met, one failed)."""
    adv = CheckResult("adversarial", duration_s=1.5, summary="robust accuracy 0.25 at linf 8/255")
    adv.metric("robust_accuracy", 0.25, attack="pgd", norm="linf", epsilon=0.0314)
    adv.metric("accuracy", 0.812345, **{"class": EVIL})
    adv.finding("warn", "adversarial.class_gap", "this class is fragile", class_=EVIL)
    adv.finding("fail", "adversarial.low_robust_accuracy", QUOTED_MSG)
    adv.image("0001.png", _png(), caption=f"example {EVIL}")
    adv.finalize_status()
    broken = CheckResult("attribution", duration_s=0.25, error="RuntimeError: boom <b>bold</b>")
    broken.finalize_status()
    gates = [
        GateResult("clean.accuracy", ">= 0.5", "fail", "pass", 0.81, "met"),
        GateResult("adversarial.robust_accuracy[attack=pgd]", ">= 0.3", "fail", "fail", 0.25,
                   "robust accuracy too low"),
    ]
    res = AuditResult(
        model={"path": "/models/m <x>.pt", "sha256": "ab" * 32, "format": "torchscript",
               "num_classes": 2, "input_shape": [3, 8, 6], "class_names": ["cat", EVIL],
               "adaptations": []},
        run={"seed": 0, "device": "cpu", "torch": "2.6.0", "started": "2025-01-01T00:00:00Z",
             "duration_s": 2.0},
        checks=[adv, broken], gates=gates)
    res.finalize_status()
    return res


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str | None]] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        if a.get("id"):
            self.ids.append(a["id"])


def _parse(html: str) -> _Imgs:
    p = _Imgs()
    p.feed(html)
    return p


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


# --------------------------------------------------------------------------- write_all
def test_write_all_writes_five_files(tmp_path):
    res = make_result()
    paths = reports.write_all(res, tmp_path / "out")
    assert {p.name for p in paths.values()} == FILES
    assert set(paths) == {"json", "csv", "html", "junit", "markdown"}
    for p in paths.values():
        assert p.parent == tmp_path / "out"
        assert p.is_file() and p.stat().st_size > 0
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_save_round_trips_results_json_and_csv(tmp_path):
    res = make_result()
    res.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir() if p.is_file()} == FILES
    loaded = AuditResult.load(tmp_path / "results.json")
    assert loaded.to_dict() == res.to_dict()
    frame = pd.read_csv(tmp_path / "metrics.csv")
    assert len(frame) == 2
    assert {"check", "name", "value", "attack", "norm", "epsilon", "class"} <= set(frame.columns)
    assert frame.loc[frame["name"] == "robust_accuracy", "value"].item() == pytest.approx(0.25)


def test_saved_result_rerenders_to_the_same_report(tmp_path):
    res = make_result()
    res.save(tmp_path)
    loaded = AuditResult.load(tmp_path)
    html = reports.render_html(loaded)  # images now come from disk, not memory
    assert html == (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "missing artifact" not in html


def test_github_step_summary_is_appended(tmp_path, monkeypatch):
    summary = tmp_path / "step_summary.md"
    summary.write_text("previous step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    res = make_result()
    reports.write_all(res, tmp_path / "a")
    md = (tmp_path / "a" / "summary.md").read_text(encoding="utf-8")
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("previous step\n")
    assert text.count(md.strip()) == 1
    reports.write_all(res, tmp_path / "b")
    assert summary.read_text(encoding="utf-8").count(md.strip()) == 2


def test_no_step_summary_written_without_env(tmp_path):
    reports.write_all(make_result(), tmp_path)
    assert not (tmp_path / "GITHUB_STEP_SUMMARY").exists()


@pytest.mark.parametrize("renderer, broken_file", [
    ("render_html", "report.html"),
    ("render_junit", "junit.xml"),
    ("render_markdown", "summary.md"),
])
def test_a_failing_writer_leaves_the_others_written(tmp_path, monkeypatch, renderer, broken_file):
    def boom(*args, **kwargs):
        raise RuntimeError(f"{renderer} broke")

    monkeypatch.setattr(reports, renderer, boom)
    with pytest.raises(RuntimeError, match=f"{renderer} broke"):
        reports.write_all(make_result(), tmp_path)
    written = {p.name for p in tmp_path.iterdir()}
    assert written == FILES - {broken_file}


def test_a_failing_csv_still_writes_html_and_reraises(tmp_path, monkeypatch):
    def bad_frame(self):
        raise ValueError("no pandas today")

    monkeypatch.setattr(AuditResult, "frame", property(bad_frame))
    with pytest.raises(ValueError, match="no pandas today"):
        reports.write_all(make_result(), tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == FILES - {"metrics.csv"}


# --------------------------------------------------------------------------- HTML
def test_html_is_self_contained(tmp_path):
    html = reports.render_html(make_result())
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", html, re.I)
    assert "@import" not in html
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()


def test_html_images_are_png_data_uris_with_alt_text():
    res = make_result()
    html = reports.render_html(res)
    imgs = _parse(html).imgs
    assert len(imgs) == 1
    img = imgs[0]
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    decoded = base64.b64decode(img["src"][len(prefix):], validate=True)
    assert decoded == res.checks[0].artifacts[0].data  # embedded whole, byte for byte
    with Image.open(io.BytesIO(decoded)) as im:
        assert im.format == "PNG"
        assert im.size == (8, 6)
        assert im.convert("RGB").getpixel((0, 0)) == (200, 30, 30)
    assert img["alt"] == f"example {EVIL}"  # the caption, unescaped by the parser


def test_html_missing_artifact_is_a_visible_note_not_a_broken_image(tmp_path):
    res = make_result()
    res.checks[0].artifacts.append(Artifact("image", "artifacts/adversarial/gone.png", "vanished"))
    html = reports.render_html(res, base_dir=tmp_path)
    assert "missing artifact" in html
    assert "artifacts/adversarial/gone.png" in html
    assert len(_parse(html).imgs) == 1  # only the image that exists


def test_html_escapes_user_text():
    res = make_result()
    html = reports.render_html(res)
    assert EVIL not in html
    assert EVIL_ESCAPED in html  # class names, captions, qualifiers
    assert QUOTED_MSG not in html
    assert "robust accuracy below 0.3 &#34;&amp;&#39;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "/models/m <x>.pt" not in html and "/models/m &lt;x&gt;.pt" in html


def test_html_layout_and_content():
    res = make_result()
    html = reports.render_html(res).replace("<wbr>", "")  # line-break hints in long codes
    ids = _parse(html).ids
    for anchor in ("checks", "gates", "findings", "check-adversarial", "check-attribution", "run"):
        assert anchor in ids
    order = [html.index(f'id="{a}"') for a in
             ("checks", "gates", "findings", "check-adversarial", "check-attribution", "run")]
    assert order == sorted(order)
    # verdict badge in the header
    header = html[:html.index('id="checks"')]
    assert ">ERROR<" in header
    assert "/models/m &lt;x&gt;.pt" in header
    # findings ranked fail before warn, linked to their check's section
    findings = html[html.index('id="findings"'):html.index('id="check-adversarial"')]
    assert findings.index("adversarial.low_robust_accuracy") < findings.index("adversarial.class_gap")
    assert 'href="#check-adversarial"' in findings
    # the errored check's message is in the checks table
    checks = html[html.index('id="checks"'):html.index('id="gates"')]
    assert "RuntimeError: boom" in checks and "robust accuracy 0.25 at linf 8/255" in checks
    # gates table: both gates, value and status
    gates = html[html.index('id="gates"'):html.index('id="findings"')]
    assert "adversarial.robust_accuracy[attack=pgd]" in gates and ">FAIL<" in gates and ">PASS<" in gates
    # metrics at 4 significant digits, qualifiers as columns
    section = html[html.index('id="check-adversarial"'):html.index('id="check-attribution"')]
    assert "0.8123" in section and "0.812345" not in section
    assert ">epsilon<" in section and ">0.0314<" in section
    # run metadata: time shares of the 2.0 s run
    run = html[html.index('id="run"'):]
    assert "75.0%" in run and "12.5%" in run
    assert "ab" * 32 in run and "2.6.0" in run


def test_long_metric_tables_collapse():
    res = make_result()
    assert "<details" not in html_section(reports.render_html(res), "adversarial")
    for i in range(45):
        res.checks[0].metric("min_perturbation", i / 100, sample=i)
    section = html_section(reports.render_html(res), "adversarial")
    assert "<details" in section and "47 metric rows" in section


def html_section(html: str, check: str) -> str:
    start = html.index(f'id="check-{check}"')
    end = html.find("<section", start)
    return html[start:end]


def test_print_styles_present():
    html = reports.render_html(make_result())
    assert "@media print" in html


# --------------------------------------------------------------------------- JUnit
def test_junit_counts_and_messages():
    res = make_result()
    root = ET.fromstring(reports.render_junit(res))
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite.get("name") == "audit"
    cases = suite.findall("testcase")
    assert len(cases) == 4
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "1")
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "2", "1")
    assert all(c.get("time") is not None for c in cases)
    by_name = {(c.get("classname"), c.get("name")): c for c in cases}

    adv = by_name[("audit.checks", "adversarial")]
    failure = adv.find("failure")
    assert failure is not None and "adversarial.low_robust_accuracy" in failure.get("message")
    assert QUOTED_MSG in failure.text  # exact text survives XML escaping
    assert "adversarial.class_gap" in adv.find("system-out").text
    assert EVIL in adv.find("system-out").text
    assert float(adv.get("time")) == pytest.approx(1.5)

    err = by_name[("audit.checks", "attribution")].find("error")
    assert err is not None and err.get("message") == "RuntimeError: boom <b>bold</b>"

    met = by_name[("audit.gates", "clean.accuracy >= 0.5")]
    assert met.find("failure") is None and met.find("error") is None
    unmet = by_name[("audit.gates", "adversarial.robust_accuracy[attack=pgd] >= 0.3")]
    assert unmet.find("failure").get("message") == \
        "metric adversarial.robust_accuracy[attack=pgd] = 0.25, required >= 0.3"


def test_junit_warn_gate_passes_with_output_and_passing_check_passes():
    res = make_result()
    res.checks = [CheckResult("clean", status="pass", duration_s=0.1, summary="accuracy 0.9")]
    res.gates = [GateResult("fooling.best_confidence", "<= 0.9", "warn", "warn", 0.99, "too confident")]
    suite = ET.fromstring(reports.render_junit(res)).find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    gate = suite.find("testcase[@classname='audit.gates']")
    assert gate.find("failure") is None
    assert "too confident" in gate.find("system-out").text


def test_junit_survives_control_characters():
    res = make_result()
    res.checks[1].error = "bad byte \x00 and \x1b[31m colour"
    root = ET.fromstring(reports.render_junit(res))  # would raise on invalid XML
    assert "colour" in root.find(".//error").get("message")


# --------------------------------------------------------------------------- Markdown
def _table_rows(md: str, heading: str) -> list[str]:
    block = md.split(heading, 1)[1].split("\n### ", 1)[0]
    return [line for line in block.splitlines() if line.startswith("|")][2:]


def test_markdown_summary():
    res = make_result()
    md = reports.render_markdown(res)
    assert "Verdict: ERROR" in md
    assert "/models/m <x>.pt" in md  # in a code span, shown literally
    assert EVIL not in md.replace("`", "")  # never raw HTML outside code spans
    assert all(ord(ch) < 0x2190 for ch in md), "summary must be emoji-free"
    checks = _table_rows(md, "### Checks")
    assert len(checks) == 2 and "RuntimeError: boom" in checks[1]
    assert len(_table_rows(md, "### Gates")) == 2
    findings = _table_rows(md, "### Findings")
    assert len(findings) == 2
    assert "low_robust_accuracy" in findings[0] and "class_gap" in findings[1]


def test_markdown_caps_findings_and_keeps_tables_intact():
    res = make_result()
    for i in range(25):
        res.checks[0].finding("info", f"x.note{i}", f"note {i} | with a pipe\nand a newline")
    md = reports.render_markdown(res)
    assert "top 20 of 27" in md
    rows = _table_rows(md, "### Findings")
    assert len(rows) == 20
    # every row keeps 6 unescaped pipes (5 columns)
    for row in rows:
        assert len(re.findall(r"(?<!\\)\|", row)) == 6, row


def test_duplicate_check_names_get_unique_section_ids():
    res = make_result()
    res.checks.append(CheckResult("adversarial", status="pass"))
    ids = _parse(reports.render_html(res)).ids
    assert ids.count("check-adversarial") == 1 and "check-adversarial-2" in ids


@pytest.mark.parametrize("value, shown", [
    (0.812345, "0.8123"), (0.0313725, "0.03137"), (12345.678, "1.235e+04"), (3.0, "3"),
    (None, "\u2014"), (float("nan"), "\u2014"), (7, "7"), ([3, 16, 16], "3\u00d716\u00d716"),
])
def test_fmt_value(value, shown):
    from reports.format import fmt_value

    assert fmt_value(value) == shown
