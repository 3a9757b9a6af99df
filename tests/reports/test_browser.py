"""The report in a real browser: headless Chromium opens it, no console errors, every image
decodes, and a screenshot is saved (tests/artifacts/ when AUDIT_SCREENSHOTS is set, else
the test's temp folder)."""
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")]


def open_in_chromium(report: Path, screenshot: Path) -> dict:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.resolve().as_uri(), wait_until="load")
        images = page.evaluate("""() => Array.from(document.images).map(i => ({
            alt: i.alt, ok: i.complete && i.naturalWidth > 0, src: i.src.slice(0, 30)}))""")
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return {"errors": errors, "images": images, "requests": requests}


def _shot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ["AUDIT_SCREENSHOTS"]) if os.environ.get("AUDIT_SCREENSHOTS") else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_demo_report_opens_cleanly_in_chromium(demo_run, tmp_path):
    out, _ = demo_run
    shot = _shot_dir(tmp_path) / "demo-report.png"
    seen = open_in_chromium(out / "report.html", shot)
    assert seen["errors"] == []
    assert seen["images"], "the demo report shows images"
    bad = [i for i in seen["images"] if not i["ok"]]
    assert bad == [], f"images that do not decode: {bad}"
    assert all(i["alt"] for i in seen["images"]), "every image has alt text"
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"]), "the report loads nothing from the network"
    assert shot.stat().st_size > 10_000
