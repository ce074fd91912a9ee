"""Headless Chromium (Debian's) through Playwright, with every request to another host
refused and recorded: the pages must work on a machine with no internet."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@contextmanager
def offline_page(server: str, width: int = 1280, height: int = 1400) -> Iterator[tuple[Any, list[str], list[str]]]:
    """(page, requests to other hosts, page errors), on a fresh browser."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright comes with the test extras")
    elsewhere: list[str] = []
    problems: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page(viewport={"width": width, "height": height})

        def only_the_service(route: Any) -> None:
            if route.request.url.startswith(server):
                route.continue_()
            else:
                elsewhere.append(route.request.url)
                route.abort()

        page.route("**/*", only_the_service)
        page.on("pageerror", lambda error: problems.append(str(error)))
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            yield page, elsewhere, problems
        finally:
            browser.close()
