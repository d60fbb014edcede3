"""Hostile and careless requests to every Gradio endpoint: each refusal names its field, nothing internal leaks.

Values are sent over real HTTP to a live server, the way a script or an attacker would; positions are
read from the app's own event wiring, so a new widget is fuzzed as soon as it exists.
"""

import math
import re
import time

import gradio as gr
import numpy as np
import pytest
from gradio_http import FILE_META, GradioHTTP
from PIL import Image
from tests_support import fast_request, free_port

from studio.ui.guard import field_of

ENDPOINTS = ("txt2img", "inpaint", "outpaint", "control", "restore_run", "rerun_run", "xyz_plot", "upscale")
# What must never reach a user: exception classes, SQL, tracebacks, file system internals.
INTERNAL = re.compile(r"Traceback|sqlalchemy|\bSQL\b|INSERT INTO|\b[A-Z][A-Za-z]+(Error|Exception)\b|site-packages|"
                      r"/tmp/|\.py\b|/etc/|gradio/|\bNone\b|object at 0x")


@pytest.fixture
def server(services):
    from studio.ui.server import launch

    services.settings.port = free_port()
    demo, url = launch(services, block=False)
    yield demo, GradioHTTP(url)
    demo.close()


def endpoint_inputs(demo, api_name: str) -> list:
    [block_fn] = [fn for fn in demo.fns.values() if fn.api_name == api_name]
    return block_fn.inputs


def baseline(component, run_id: int):
    """A value every check accepts for this widget (images absent: empty is allowed at the boundary)."""
    if isinstance(component, (gr.Image, gr.ImageEditor, gr.File)):
        return None
    if getattr(component, "studio_field", "") == "run":
        return run_id
    if isinstance(component, gr.Textbox):
        return "a red circle"
    if isinstance(component, gr.Dropdown) and component.multiselect:
        return []  # no style picked
    if isinstance(component, gr.Dropdown) and component.value in (None, []):
        return component.choices[0][1] if component.choices else None
    return component.value


def hostile_values(component, files: dict) -> list:
    """Values this widget must refuse."""
    if isinstance(component, (gr.Number, gr.Slider)):
        values = [math.nan, math.inf, -math.inf, "yes", "5", [], {}, True]
        if not getattr(component, "studio_empty_ok", False):
            values.append(None)
        if component.maximum is not None:
            values += [component.maximum + 1, 1e308]
        if component.minimum is not None:
            values.append(component.minimum - 1)
        if isinstance(component, gr.Slider) and float(component.step).is_integer():
            values.append(component.minimum + 0.5)
        return values
    if isinstance(component, gr.Checkbox):
        return ["yes", "false", [], {}, 1, None]
    if isinstance(component, gr.Textbox):
        return [[], {}, 5, "a\ud800b", "a\x00b", "x" * 20_001]
    if isinstance(component, gr.Dropdown) and component.multiselect:  # a list of choices (styles)
        return [{}, "a", 5, None, ["no such choice"], [5], [[]]]
    if isinstance(component, (gr.Radio, gr.Dropdown)):
        values = [[], {}, ["a", "b"]]
        if not getattr(component, "allow_custom_value", False):
            values += ["no such choice", 5]
        if not getattr(component, "studio_empty_ok", False):
            values.append(None)
        return values
    images = [5, [], "not a file object", {"path": files["png"]}, {"path": "/etc/passwd", "meta": FILE_META},
              {"path": "http://127.0.0.1:9/x.png", "meta": FILE_META}, {"path": files["text"], "meta": FILE_META},
              {"path": files["truncated"], "meta": FILE_META}, {"path": files["png"] + "/../../../etc/hosts",
                                                                  "meta": FILE_META}]
    if isinstance(component, gr.ImageEditor):
        return [*images[:3], {"background": images[4]}, {"background": None, "layers": "x"},
                {"background": None, "layers": [images[7]]}, {"composite": images[6]}, {"surprise": 1}]
    if isinstance(component, gr.Image):
        return images
    if isinstance(component, gr.File):
        return [5, "/etc/passwd", {"path": "/etc/passwd", "meta": FILE_META}]
    return []


def uploads(client, tmp_path) -> dict:
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(picture.read_bytes()[:300])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    return {"png": client.upload(picture), "truncated": client.upload(truncated), "text": client.upload(text)}


def test_hundreds_of_malformed_requests_are_refused_by_field(server, services, tmp_path):
    demo, client = server
    first = services.runner.run(fast_request())
    files = uploads(client, tmp_path)
    sent, refusals, started = 0, [], time.monotonic()
    for api_name in ENDPOINTS:
        inputs = endpoint_inputs(demo, api_name)
        good = [None if block.stateful else baseline(block, first.run_id) for block in inputs]
        # units 2 and 3 are the same widgets as unit 1: fuzzing one of them is enough
        payload_inputs = [(i, block) for i, block in enumerate(inputs) if not block.stateful
                          and not field_of(block).startswith(("units[1]", "units[2]"))]
        kind, message = client.call(api_name, good[: len(inputs) // 2])  # too few values
        sent += 1
        assert kind == "error" and message.startswith("this action takes"), (api_name, message)
        for index, block in payload_inputs:
            for value in hostile_values(block, files):
                data = list(good)
                data[index] = value
                kind, message = client.call(api_name, data)
                sent += 1
                refusals.append((api_name, field_of(block), value, kind, message))
    elapsed = time.monotonic() - started
    assert sent >= 300, sent
    problems = []
    for api_name, field, value, kind, message in refusals:
        shown = repr(value)[:60]
        if kind != "error" or not isinstance(message, str):
            problems.append(f"{api_name} {field}={shown}: not refused ({kind}: {message!r:.120})")
        elif not message.startswith(field.split("[")[0]):
            problems.append(f"{api_name} {field}={shown}: the message names no field: {message!r:.160}")
        elif INTERNAL.search(message):
            problems.append(f"{api_name} {field}={shown}: internal text: {message!r:.160}")
    assert not problems, f"{len(problems)} of {len(refusals)}:\n" + "\n".join(problems[:40])
    # nothing half-recorded, and the server still serves a good request
    assert services.history.search(status="running") == []
    assert services.history.count() == 1
    kind, _ = client.call("txt2img", [baseline(block, first.run_id) for block in endpoint_inputs(demo, "txt2img")])
    assert kind == "complete" and services.history.count() == 2
    print(f"{sent} requests in {elapsed:.1f} s")


def test_the_documented_null_negative_prompt_is_accepted(server, services):
    demo, client = server
    inputs = endpoint_inputs(demo, "txt2img")
    data = [baseline(block, 0) for block in inputs]
    for index, block in enumerate(inputs):
        if field_of(block) == "negative_prompt":
            data[index] = None
        if field_of(block) in ("steps", "width", "height"):
            data[index] = {"steps": 2, "width": 64, "height": 64}[field_of(block)]
    kind, _ = client.call("txt2img", data)
    assert kind == "complete"
    [record] = services.history.search()
    assert record.status == "done" and record.negative_prompt == ""
