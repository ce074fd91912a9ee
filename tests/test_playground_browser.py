"""The playground page in headless Chromium, against a real server: the worked example,
a typed grid with its argmax, the image mode, an error beside its field, phone width."""

from __future__ import annotations

import pytest

from tests.browser import ARTIFACTS, needs_chromium, offline_page

pytestmark = needs_chromium


@pytest.fixture
def page(server):
    with offline_page(server) as (tab, elsewhere, problems):
        tab.goto(f"{server}/")  # the root leads here
        tab.wait_for_selector("[data-testid=output-cell]")
        yield tab
    assert elsewhere == [] and problems == []


def outputs(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator("[data-testid=output-cell]").all_inner_texts()


def winners(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator("[data-testid=argmax-cell] input").evaluate_all("cells => cells.map(c => c.value)")


def test_the_worked_example_is_shown_on_load(page):
    assert page.locator("[data-testid=op-select]").input_value() == "max2d"
    assert outputs(page) == ["6", "8", "3", "4"]
    assert winners(page) == ["6", "8", "3", "4"]
    page.locator("[data-testid=output-cell]").nth(1).hover()  # its window lights up
    assert page.locator(".cell.window").count() == 4
    page.screenshot(path=str(ARTIFACTS / "playground-example.png"), full_page=True)


def test_a_typed_grid_is_pooled_with_its_argmax(page):
    values = [3, 0, 1, 2, 9, 4, 0, 0, 5, 5, 6, 1, 0, 7, 2, 8]
    cells = page.locator("[data-testid=input-cell]")
    for index, value in enumerate(values):
        cells.nth(index).fill(str(value))
        cells.nth(index).press("Tab")
        page.wait_for_timeout(30)
    page.locator("[data-testid=run]").click()
    page.wait_for_function("document.querySelectorAll('[data-testid=output-cell]')[0].textContent === '9'")
    assert outputs(page) == ["9", "2", "7", "8"]  # windows of rows 0-1 and 2-3, columns 0-1 and 2-3
    assert sorted(winners(page)) == ["2", "7", "8", "9"]


def test_an_invalid_parameter_shows_its_error_beside_it(page):
    page.fill("#param-kernel_size", "0")
    page.locator("[data-testid=run]").click()
    error = page.locator("label[data-param=kernel_size] [data-testid=error]")
    error.wait_for()
    assert "greater than or equal to 1" in error.inner_text()
    page.screenshot(path=str(ARTIFACTS / "playground-error.png"), full_page=True)


def test_image_mode_pools_the_sample_through_the_api(page):
    page.click("#image-sample")
    page.locator("[data-testid=image-run]").click()
    page.wait_for_function("document.querySelector('[data-testid=image-output-size]').textContent !== ''")
    assert page.locator("[data-testid=image-output-size]").inner_text() == "32×32"
    page.locator("#image-out").screenshot(path=str(ARTIFACTS / "playground-image.png"))


def test_translation_demo_keeps_the_max_and_moves_the_average(page):
    maxima = []
    for _ in range(4):
        page.click("#translate")
        page.wait_for_timeout(150)
        maxima.append(outputs(page)[0])
    assert maxima == ["9", "9", "9", "9"]
    page.select_option("[data-testid=op-select]", "avg2d")
    page.wait_for_timeout(200)
    page.click("#translate")
    page.wait_for_timeout(200)
    assert outputs(page)[0] == "2.25"


def test_readable_at_phone_width(page):
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.locator("[data-testid=output-cell]").first.is_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 420
    page.screenshot(path=str(ARTIFACTS / "playground-phone.png"), full_page=True)


def test_keyboard_alone_reaches_the_windows(page):
    page.locator("[data-testid=output-cell]").nth(3).focus()  # output cells take focus, as Tab reaches them
    assert page.locator(".cell.window").count() == 4
    page.keyboard.press("Shift+Tab")
    page.wait_for_timeout(50)
    assert page.evaluate("document.activeElement.dataset.testid") == "output-cell"
    assert page.locator(".cell.window").count() == 4  # the previous cell's window now
