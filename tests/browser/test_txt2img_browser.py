"""In a real browser: generate from the txt2img tab, find the run in History, re-run it."""

import pytest
from tests_support import wait_for

pytestmark = pytest.mark.browser



def test_generate_then_find_and_rerun_in_history(page, services):
    page.locator("#txt2img-prompt textarea").fill("a red circle on the left")
    page.locator("#txt2img-generate").click()
    page.wait_for_selector("#txt2img-gallery img")
    wait_for(lambda: "Seed:" in page.locator("#txt2img-info textarea").input_value())
    info = page.locator("#txt2img-info textarea").input_value()
    assert info.startswith("a red circle on the left") and "Model: tiny" in info
    [record] = services.history.search()
    assert record.status == "done" and record.prompt == "a red circle on the left"
    assert f"Seed: {record.seed}" in info

    page.get_by_role("tab", name="History").click()
    page.locator("#history-refresh").click()
    page.wait_for_selector("#history-gallery img")
    page.locator("#history-gallery img").first.click()
    wait_for(lambda: page.locator("#history-selected input").input_value() == str(record.id))
    assert "a red circle on the left" in page.locator("#history-details").inner_text()
    page.locator("#history-rerun").click()
    wait_for(lambda: services.history.count() == 2)
    wait_for(lambda: "re-run" in page.locator("#history-progress").inner_text())
    rerun = services.history.search()[0]
    assert rerun.rerun_of == record.id and rerun.seeds == record.seeds and rerun.status == "done"
    assert rerun.outputs[0].path.read_bytes() == record.outputs[0].path.read_bytes()


def test_ctrl_enter_generates_and_restore_fills_the_tab(page, services):
    prompt = page.locator("#txt2img-prompt textarea")
    prompt.fill("a blue square at the top")
    prompt.press("Control+Enter")
    wait_for(lambda: services.history.count() == 1 and services.history.search()[0].status == "done")
    record = services.history.search()[0]
    prompt.fill("something else")
    page.get_by_role("tab", name="History").click()
    page.locator("#history-refresh").click()
    page.locator("#history-gallery img").first.click()
    wait_for(lambda: page.locator("#history-selected input").input_value() == str(record.id))
    page.locator("#history-restore").click()
    wait_for(lambda: prompt.input_value() == "a blue square at the top")
    assert page.locator("#txt2img-seed input").input_value() == str(record.seed)


def test_bad_input_shows_an_error_and_the_server_keeps_serving(page, services):
    width = page.locator("#txt2img-width input[type=number]")
    width.fill("100")
    width.press("Enter")
    page.locator("#txt2img-prompt textarea").fill("a green triangle")
    page.locator("#txt2img-generate").click()
    toast = page.get_by_text("width: 100 is not a multiple of 8")
    toast.first.wait_for()
    assert services.history.count() == 0
    width.fill("64")
    width.press("Enter")
    page.locator("#txt2img-generate").click()
    wait_for(lambda: services.history.count() == 1 and services.history.search()[0].status == "done")
