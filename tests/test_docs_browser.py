"""The docs page in headless Chromium: "Try it out" on max2d answers 200 with the
output, and the page asks nothing of any other host."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright comes with the test extras")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def test_docs_try_it_out_runs_max2d_offline(server):
    elsewhere: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1600})

        def only_the_service(route):  # type: ignore[no-untyped-def]
            if route.request.url.startswith(server):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_service)
        page.goto(f"{server}/docs#/max/pool-max2d")
        operation = "#operations-max-pool-max2d"
        page.wait_for_selector(f"{operation} .execute", timeout=30_000)
        page.click(f"{operation} .execute")
        page.wait_for_selector(f"{operation} .live-responses-table .response-col_status", timeout=30_000)
        status = page.inner_text(f"{operation} .live-responses-table tbody .response-col_status")
        body = page.inner_text(f"{operation} .live-responses-table .microlight")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator(f"{operation} .live-responses-table").screenshot(path=str(ARTIFACTS / "docs-try-it-out.png"))
        browser.close()
    assert status.strip().startswith("200")
    assert '"op": "max2d"' in body and '"output"' in body
    assert elsewhere == []
