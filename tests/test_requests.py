"""Request validation names the field and the allowed values; records round-trip."""

import pytest
from PIL import Image

from studio.errors import InputError
from studio.requests import Txt2ImgRequest, from_record, resolve_seed, to_record, validate


@pytest.mark.parametrize(
    ("changes", "field", "hint"),
    [
        ({"width": 0}, "width", "64 to 4096"),
        ({"width": 100}, "width", "multiple of 8"),
        ({"height": 513}, "height", "use 512 or 520"),
        ({"steps": 0}, "steps", "1 to 150"),
        ({"steps": 10_000}, "steps", "1 to 150"),
        ({"cfg_scale": 0.5}, "cfg_scale", "1 to 30"),
        ({"sampler": "Euler z"}, "sampler", "choose one of"),
        ({"seed": -5}, "seed", "-1 to"),
        ({"batch_size": 0}, "batch_size", "1 to 8"),
        ({"batch_count": 101}, "batch_count", "1 to 100"),
        ({"steps": 2.5}, "steps", "whole number"),
        ({"steps": "many"}, "steps", "'many' is not a whole number from 1 to 150"),
        ({"cfg_scale": float("nan")}, "cfg_scale", "nan is not a finite number; give a number from 1 to 30"),
        ({"cfg_scale": float("inf")}, "cfg_scale", "not a finite number"),
        ({"karras": "yes"}, "karras", "'yes' is not true or false"),
        ({"karras": []}, "karras", "a list is not true or false"),
        ({"seed": None}, "seed", "is empty; give a whole number from -1 to 4294967295"),
        ({"steps": [20]}, "steps", "a list is not a whole number"),
        ({"sampler": ["Euler"]}, "sampler", "a list is not text"),
        ({"negative_prompt": "bad \ud800 text"}, "negative_prompt", "U+D800 at position 4"),
        ({"negative_prompt": "a\x00b"}, "negative_prompt", "NUL character at position 1"),
        ({"negative_prompt": "x" * 20_001}, "negative_prompt", "shorten it to 20,000"),
    ],
)
def test_bad_values_name_the_field(changes, field, hint):
    with pytest.raises(InputError) as error:
        validate(Txt2ImgRequest(prompt="x", **changes))
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}: ")
    assert hint in str(error.value)


def test_valid_request_passes_unchanged():
    request = Txt2ImgRequest(prompt="a cat", width=512, height=768, steps=30, sampler="DPM++ 2M SDE")
    assert validate(request) is request


def test_seeds_are_consecutive_per_image_and_wrap():
    request = Txt2ImgRequest(prompt="x", seed=2**32 - 2, batch_size=2, batch_count=2)
    assert request.seeds() == [2**32 - 2, 2**32 - 1, 0, 1]


def test_random_seed_is_resolved_to_a_concrete_value():
    resolved = resolve_seed(Txt2ImgRequest(prompt="x", seed=-1))
    assert 0 <= resolved.seed < 2**32
    with pytest.raises(InputError):
        Txt2ImgRequest(prompt="x").seeds()


def test_record_round_trip_keeps_every_field_and_image():
    request = Txt2ImgRequest(prompt="p", negative_prompt="n", seed=7, steps=3, width=64, height=72,
                             karras=False, sampler="DDIM", batch_size=2, parent_run_id=4)
    params, images = to_record(request)
    assert images == {}
    assert params["mode"] == "txt2img" and params["height"] == 72
    assert from_record(params, images) == request


def test_record_with_images_and_units_round_trips():
    from dataclasses import dataclass

    from studio.requests import REQUEST_TYPES, register_request_type, spec

    @dataclass(frozen=True, kw_only=True)
    class WithImages(Txt2ImgRequest):
        mode = "test-images"
        image: Image.Image | None = spec(None, "Image")
        units: tuple = spec((), "Units")

    register_request_type(WithImages)
    try:
        red, blue = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
        request = WithImages(prompt="x", image=red, units=({"type": "pose", "map": blue, "weight": 0.5},))
        params, images = to_record(request)
        assert set(images) == {"image", "units.0.map"}
        assert params["units"] == [{"type": "pose", "weight": 0.5}]
        restored = from_record(params, images)
        assert restored.units[0]["map"] is blue and restored.image is red and restored.units[0]["weight"] == 0.5
    finally:
        REQUEST_TYPES.pop("test-images")


def test_null_prompts_mean_no_text():
    request = validate(Txt2ImgRequest(prompt=None, negative_prompt=None))
    assert (request.prompt, request.negative_prompt) == ("", "")


@pytest.mark.parametrize(("value", "expected"), [(12, 12), ("12", 12), ("#7", 7), (3.0, 3)])
def test_run_ids_are_read_from_numbers_and_digits(value, expected):
    from studio.requests import parse_run_id

    assert parse_run_id(value) == expected


@pytest.mark.parametrize(("value", "hint"), [(None, "select a run first"), (2**64, "run numbers go from 1 to"),
                                              (0, "run numbers go from 1 to"), ("abc", "is not a run number"),
                                              (True, "is not a run number"), (2.5, "is not a run number")])
def test_bad_run_ids_are_refused(value, hint):
    from studio.requests import parse_run_id

    with pytest.raises(InputError) as error:
        parse_run_id(value)
    assert error.value.field == "run" and hint in str(error.value)
