"""The playground in Debian's Firefox, driven over Firefox's own Marionette protocol
(Playwright's Firefox is a patched build it would have to download)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmarks.serve import free_port

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
marionette = pytest.importorskip("marionette_driver.marionette", reason="marionette_driver comes with the test extras")
pytestmark = [
    pytest.mark.skipif(FIREFOX is None, reason="Debian's firefox-esr is not installed (.ci/run installs it)"),
    # marionette_driver leaves its port probe's socket to the garbage collector.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


def test_playground_works_in_firefox(server, tmp_path):
    from marionette_driver import By, Wait

    port = free_port()
    (tmp_path / "user.js").write_text(f'user_pref("marionette.port", {port});\n')
    command = [FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", str(tmp_path)]
    browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = marionette.Marionette(host="127.0.0.1", port=port, startup_timeout=60)
        client.start_session()
        client.navigate(f"{server}/playground")

        def cells(selector: str) -> list:  # type: ignore[type-arg]
            return client.find_elements(By.CSS_SELECTOR, selector)

        Wait(client, timeout=30).until(lambda _: len(cells("[data-testid=output-cell]")) == 4)
        assert [cell.text for cell in cells("[data-testid=output-cell]")] == ["6", "8", "3", "4"]
        assert [cell.get_property("value") for cell in cells("[data-testid=argmax-cell] input")] == ["6", "8", "3", "4"]
        client.find_element(By.ID, "fill-ramp").click()
        Wait(client, timeout=30).until(lambda _: cells("[data-testid=output-cell]")[0].text == "5")
        assert [cell.text for cell in cells("[data-testid=output-cell]")] == ["5", "7", "13", "15"]
        field = client.find_element(By.ID, "param-kernel_size")
        field.clear()
        field.send_keys("0")
        client.find_element(By.CSS_SELECTOR, "[data-testid=run]").click()
        Wait(client, timeout=30).until(lambda _: cells("[data-testid=error]"))
        assert "greater than or equal to 1" in cells("[data-testid=error]")[0].text
        client.delete_session()
    finally:
        browser.terminate()
        browser.wait(timeout=30)
