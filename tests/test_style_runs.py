"""Styles in a run: applied when it starts, recorded by name with the text that ran, re-run unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from tests_support import fast_request

from studio.errors import InputError


def write_styles(services, text: str) -> None:
    path = services.runner.styles.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_styles_go_into_the_prompts_and_the_names_are_recorded(services):
    write_styles(services, 'name,prompt,negative_prompt\nOil,"oil painting of {prompt}, impasto",blurry\n'
                           "Moody,dark lighting,\n")
    result = services.runner.run(fast_request(prompt="a red cube", negative_prompt="text", styles=("Oil", "Moody")))
    record = services.history.get(result.run_id)
    assert record.prompt == "oil painting of a red cube, impasto, dark lighting"
    assert record.negative_prompt == "text, blurry"
    assert record.params["styles"] == [] and record.params["applied_styles"] == ["Oil", "Moody"]
    assert result.infotexts[0].startswith("oil painting of a red cube, impasto, dark lighting\nNegative prompt: text, "
                                          "blurry")
    # the style is text the encoder reads: the same prompt typed out gives the same pixels
    typed = services.runner.run(fast_request(prompt="oil painting of a red cube, impasto, dark lighting",
                                             negative_prompt="text, blurry"))
    assert np.array_equal(np.array(typed.images[0]), np.array(result.images[0]))


def test_a_rerun_repeats_the_text_that_ran_after_the_style_changed(services):
    write_styles(services, "name,prompt,negative_prompt\nOil,oil painting,\n")
    result = services.runner.run(fast_request(styles=["Oil"]))
    write_styles(services, "name,prompt,negative_prompt\nOil,watercolour,\n")
    again = services.runner.rerun(result.run_id)
    assert again.request.prompt == result.request.prompt
    assert np.array_equal(np.array(again.images[0]), np.array(result.images[0]))
    restored = services.runner.restore(result.run_id)
    assert restored.styles == () and restored.applied_styles == ("Oil",)


def test_an_unknown_style_is_refused_naming_it_and_nothing_is_recorded(services):
    write_styles(services, "name,prompt,negative_prompt\nOil,oil painting,\n")
    with pytest.raises(InputError, match="Watercolor") as caught:
        services.runner.run(fast_request(styles=("Watercolor",)))
    assert caught.value.field == "styles" and "Oil" in str(caught.value)
    with pytest.raises(InputError) as caught:
        services.runner.run(fast_request(styles=(3,)))
    assert caught.value.field == "styles"
    assert services.history.search() == []
