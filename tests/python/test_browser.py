"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright,
against `streamlit run dashboard/app.py` reading a running job. Saves a screenshot
(`$TRENDFLOW_ARTIFACTS/dashboard.png`, default `target/artifacts/`)."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from conftest import REPO, free_port

CHROMIUM = os.environ.get("TRENDFLOW_CHROMIUM", "/usr/bin/chromium")
# As the machine's notes advise: no background networking on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def streamlit_url(job):
    port = free_port()
    env = dict(os.environ, TRENDFLOW_FLIGHT_URI=job.uri, TRENDFLOW_STATUS_URL=job.status_url, TRENDFLOW_REFRESH_S="5")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "streamlit did not start"
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_dashboard_renders_every_chart_in_chromium(streamlit_url):
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: scripts/test.sh installs Debian's chromium"
    artifacts = Path(os.environ.get("TRENDFLOW_ARTIFACTS", REPO / "target" / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(streamlit_url)
        page.get_by_text("Price levels", exact=True).wait_for(timeout=60_000)
        charts = page.locator("[data-testid='stVegaLiteChart']")
        page.wait_for_function("document.querySelectorAll(\"[data-testid='stVegaLiteChart'] canvas, "
                               "[data-testid='stVegaLiteChart'] svg\").length >= 4", timeout=60_000)
        page.wait_for_timeout(1500)  # let the charts finish drawing before the screenshot
        page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
        assert page.locator("[data-testid='stException']").count() == 0, "the page shows an exception"
        assert page.locator("[data-testid='stAlertContentError']").count() == 0, page.content()[:2000]
        assert charts.count() >= 4
        for i in range(charts.count()):
            box = charts.nth(i).bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100, f"chart {i} has no size: {box}"
        # Vega draws each bar, line and point as an SVG path inside a `mark-*` group.
        marks = page.evaluate("""() => [...document.querySelectorAll("[data-testid='stVegaLiteChart']")].map(c =>
            c.querySelectorAll("g[class*='mark-rect'] path, g[class*='mark-line'] path, g[class*='mark-symbol'] path").length)""")
        assert len(marks) >= 4 and all(n > 0 for n in marks), f"marks per chart: {marks}"
        text = page.inner_text("body")
        assert "Records processed" in text and "20,000" in text
        browser.close()
