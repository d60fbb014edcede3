"""One vocabulary: every widget and CLI option of a request field has the spec's range, choices and default."""

import dataclasses

import gradio as gr

from studio.cli import build_parser, cli_word
from studio.requests import CONTROL_UNIT_SPEC, REQUEST_TYPES, field_spec, number


def request_specs() -> dict[str, dict]:
    """Field name -> spec metadata, over every mode (a field means the same in every mode)."""
    specs = {}
    for cls in REQUEST_TYPES.values():
        for f in dataclasses.fields(cls):
            specs.setdefault(f.name, field_spec(cls, f.name))
    return specs


def test_every_widget_of_a_request_field_has_the_spec_range_and_choices(services):
    from studio.ui.app import build_ui

    demo = build_ui(services)
    specs = request_specs()
    checked = 0
    for block in demo.blocks.values():
        field = getattr(block, "studio_field", None)
        if field is None:
            continue
        key = field.split(".", 1)[1] if field.startswith("units[") else field
        meta = CONTROL_UNIT_SPEC.get(key) if field.startswith("units[") else specs.get(field)
        if not meta:
            continue
        if isinstance(block, gr.Slider):
            assert (block.minimum, block.maximum, block.step) == (meta["min"], meta["max"], meta["step"]), field
            assert block.label == meta["label"], field
            checked += 1
        if isinstance(block, (gr.Radio, gr.Dropdown)) and meta.get("choices"):
            assert [value for _, value in block.choices] == list(meta["choices"]), field
            checked += 1
    assert checked >= 30, checked  # the tabs' sliders and choices were all found


def test_every_cli_option_of_a_request_field_has_the_spec_choices_and_default():
    specs = request_specs()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps subcommands here
    checked = 0
    for command in ("generate", "inpaint", "outpaint", "control"):
        cls = REQUEST_TYPES["txt2img" if command == "generate" else command]
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for action in commands[command]._actions:
            meta = specs.get(action.dest)
            if not meta or action.dest in ("prompt", "negative_prompt", "model", "vae"):
                continue
            if meta.get("choices") and action.dest != "sampler":
                assert list(action.choices) == [cli_word(c) for c in meta["choices"]], (command, action.dest)
                assert action.default == cli_word(defaults[action.dest]), (command, action.dest)
            else:
                assert action.default == defaults[action.dest], (command, action.dest)
            if meta.get("min") is not None:
                assert f"({number(meta['min'])}..{number(meta['max'])})" in action.help, (command, action.dest)
            checked += 1
    assert checked >= 35, checked
