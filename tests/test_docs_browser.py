"""The docs page in headless Chromium: "Try it out" on max2d answers 200 with the
output, and the page asks nothing of any other host."""

from __future__ import annotations

from tests.browser import ARTIFACTS, needs_chromium, offline_page

pytestmark = needs_chromium


def test_docs_try_it_out_runs_max2d_offline(server):
    with offline_page(server, height=1600) as (page, elsewhere, problems):
        page.goto(f"{server}/docs#/max/pool-max2d")
        operation = "#operations-max-pool-max2d"
        page.wait_for_selector(f"{operation} .execute", timeout=30_000)
        page.click(f"{operation} .execute")
        page.wait_for_selector(f"{operation} .live-responses-table .response-col_status", timeout=30_000)
        status = page.inner_text(f"{operation} .live-responses-table tbody .response-col_status")
        body = page.inner_text(f"{operation} .live-responses-table .microlight")
        page.locator(f"{operation} .live-responses-table").screenshot(path=str(ARTIFACTS / "docs-try-it-out.png"))
    assert status.strip().startswith("200")
    assert '"op": "max2d"' in body and '"output"' in body
    assert elsewhere == [] and problems == []
