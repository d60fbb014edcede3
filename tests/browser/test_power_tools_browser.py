"""In a real browser: pick a LoRA into the prompt, run a 2x2 X/Y plot, restore the plot from History."""

import pytest
from tests_support import wait_for

from studio.micro.lora_files import random_factors, save_lora
from studio.micro.tiny import tiny_pipeline

pytestmark = pytest.mark.browser


def choose(page, elem_id: str, value: str) -> None:
    """Pick a value of a Gradio dropdown as a user does: open it, type, click the option."""
    box = page.locator(f"#{elem_id} input")
    box.click()
    box.fill(value)
    page.get_by_role("option", name=value, exact=True).first.click()


def test_a_lora_from_the_picker_and_a_2x2_plot(page, services):
    save_lora(services.settings.models_dir / "Lora" / "outline.safetensors", random_factors(tiny_pipeline(0), seed=3))
    page.locator("#txt2img-prompt textarea").fill("a red circle")
    page.get_by_text("LoRA", exact=True).first.click()
    page.locator("#txt2img-lora-refresh").click()
    choose(page, "txt2img-lora", "outline")
    page.locator("#txt2img-lora-add").click()
    prompt = page.locator("#txt2img-prompt textarea")
    wait_for(lambda: prompt.input_value() == "a red circle <lora:outline:1>")
    page.locator("#txt2img-steps input[type=number]").fill("2")
    page.locator("#txt2img-steps input[type=number]").press("Enter")

    page.get_by_text("X/Y/Z plot", exact=True).click()
    choose(page, "txt2img-x-type", "LoRA weight")
    page.locator("#txt2img-x-values textarea").fill("0, 1")
    choose(page, "txt2img-y-type", "CFG Scale")
    page.locator("#txt2img-y-values textarea").fill("3, 7")
    page.locator("#txt2img-xyz-generate").click()
    wait_for(lambda: services.history.count() == 5 and all(r.status == "done" for r in services.history.search()))
    grid = next(r for r in services.history.search() if r.mode == "xyz")
    cells = [r for r in services.history.search() if r.parent_id == grid.id]
    assert sorted((r.prompt, r.cfg_scale) for r in cells) == [
        ("a red circle <lora:outline:0>", 3.0), ("a red circle <lora:outline:0>", 7.0),
        ("a red circle <lora:outline:1>", 3.0), ("a red circle <lora:outline:1>", 7.0)]
    assert all(r.loras and r.loras[0]["name"] == "outline" for r in cells)
    wait_for(lambda: page.locator("#txt2img-gallery img").count() >= 5)

    page.locator("#txt2img-x-values textarea").fill("something else")
    page.get_by_role("tab", name="History").click()
    page.locator("#history-refresh").click()
    wait_for(lambda: page.locator("#history-gallery img").count() == 5)
    page.locator("#history-gallery img").last.click()  # the grid's run started first: the oldest of the five
    wait_for(lambda: page.locator("#history-selected input").input_value() == str(grid.id))
    page.locator("#history-restore").click()
    wait_for(lambda: page.locator("#txt2img-x-values textarea").input_value() == "0, 1")
    assert page.locator("#txt2img-y-values textarea").input_value() == "3, 7"
