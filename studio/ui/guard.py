"""The web boundary: every value a browser or API client sends is checked before Gradio or a handler sees it.

Gradio turns any exception that is not a `gr.Error` into `{"error": null}` and its own component
checks into messages that name no field ("Value 0 is less than minimum value 1."). So the studio's
Blocks checks each raw payload first, by the widget it is for, and refuses a bad one with a
message naming the request field and what to send instead; and every handler's own failures
reach the artist as their message, never as an exception class, SQL or a traceback.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from pathlib import Path

import gradio as gr
from gradio import utils as gradio_utils

from studio.errors import StudioError
from studio.requests import check_text, number, shown

log = logging.getLogger(__name__)

# Input images larger than this are refused before decoding (a decompression bomb is a few KB of PNG).
MAX_INPUT_IMAGE_PIXELS = 8192 * 8192
FILE_META = {"_type": "gradio.FileData"}
EDITOR_KEYS = {"background", "layers", "composite", "id"}
# What the artist sees when something fails that no check foresaw; the details go to the server log.
INTERNAL_FAILURE = ("the server could not finish this action (an unexpected error, written to the server's log); "
                    "nothing was recorded for it; try again, and report it if it happens again")


def name_input(component, field: str, empty_ok: bool | None = None):
    """Say which request field a widget feeds, and whether an empty value (null) is allowed."""
    component.studio_field = field
    if empty_ok is not None:
        component.studio_empty_ok = empty_ok
    return component


def field_of(component) -> str:
    return getattr(component, "studio_field", None) or component.elem_id or component.label or type(component).__name__


def _range(component) -> str:
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    if low is not None and high is not None:
        return f" from {number(low)} to {number(high)}"
    return ""


def _whole(component) -> bool:
    if isinstance(component, gr.Slider):
        return float(component.step).is_integer() and float(component.minimum).is_integer()
    return getattr(component, "precision", None) == 0


def _check_number(component, field: str, value) -> None:
    kind = "a whole number" if _whole(component) else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise gr.Error(f"{field}: {shown(value)} is not a number; give {kind}{_range(component)}")
    if not math.isfinite(value):
        raise gr.Error(f"{field}: {shown(value)} is not a finite number; give {kind}{_range(component)}")
    low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
    if (low is not None and value < low) or (high is not None and value > high):
        raise gr.Error(f"{field}: {shown(value)} is out of range; use {number(low)} to {number(high)}")
    if _whole(component) and not float(value).is_integer():
        raise gr.Error(f"{field}: {shown(value)} is not a whole number; give {kind}{_range(component)}")


def _check_choice(component, field: str, value) -> None:
    choices = [choice for _, choice in component.choices]
    if getattr(component, "multiselect", False):  # several choices (styles): a list of them
        if not isinstance(value, list):
            raise gr.Error(f"{field}: {shown(value)} is not a list of choices")
        for item in value:
            _check_choice(_Single(component.choices), field, item)
        return
    if isinstance(value, (list, dict)) or value not in choices:
        listed = ", ".join(str(c) for c in choices[:20]) + (", ..." if len(choices) > 20 else "")
        raise gr.Error(f"{field}: {shown(value)} is not one of {listed}")


class _Single:
    """One item of a multiselect dropdown, checked as a single choice."""

    multiselect = False

    def __init__(self, choices):
        self.choices = choices


def _check_file(field: str, value, what: str = "file") -> Path:
    """A FileData payload pointing at a file uploaded to this server; returns its path."""
    example = 'send {"path": <a path /gradio_api/upload returned>, "meta": {"_type": "gradio.FileData"}}'
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        raise gr.Error(f"{field}: {shown(value)} is not an uploaded {what}; {example}")
    if value.get("meta") != FILE_META:
        raise gr.Error(f"{field}: the {what} object has no meta {{'_type': 'gradio.FileData'}}; {example}")
    path = value["path"]
    if "://" in path or path.startswith("data:"):
        raise gr.Error(f"{field}: the studio does not fetch URLs; upload the {what} and {example}")
    try:
        inside = gradio_utils.is_in_or_equal(path, gradio_utils.get_upload_folder()) and Path(path).is_file()
    except (OSError, ValueError):
        inside = False
    if not inside:
        # the path itself is not echoed: it may name a place outside the studio's folders
        raise gr.Error(f"{field}: that path is not a file uploaded to this server; upload the {what} first and "
                       f"{example}")
    return Path(path)


def _check_image_file(field: str, value) -> None:
    from PIL import Image, UnidentifiedImageError

    path = _check_file(field, value, "image")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_INPUT_IMAGE_PIXELS:
                raise gr.Error(f"{field}: the image is {image.width}x{image.height}, over the "
                               f"{MAX_INPUT_IMAGE_PIXELS:,} pixels the studio reads; downscale it")
            image.load()
    except gr.Error:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise gr.Error(f"{field}: the uploaded file is not a readable image (damaged, truncated or not an image "
                       "format); upload a PNG, JPEG or WebP") from error


def _check_editor(field: str, value) -> None:
    if not isinstance(value, dict) or not set(value) <= EDITOR_KEYS:
        raise gr.Error(f"{field}: {shown(value)} is not an image editor value; send "
                       '{"background": <image>, "layers": [<image>, ...], "composite": <image or null>}')
    for key in ("background", "composite"):
        if value.get(key) is not None:
            _check_image_file(f"{field}.{key}", value[key])
    layers = value.get("layers") or []
    if not isinstance(layers, list):
        raise gr.Error(f"{field}.layers: {shown(layers)} is not a list of images")
    for index, layer in enumerate(layers):
        _check_image_file(f"{field}.layers[{index}]", layer)


def check_payload(component, value) -> None:
    """Refuse a raw value that this widget would not accept, with a message naming its field."""
    field = field_of(component)
    text_like = isinstance(component, (gr.Textbox, gr.Image, gr.ImageEditor, gr.File))
    if value is None:
        if getattr(component, "studio_empty_ok", text_like):
            return
        if isinstance(component, (gr.Number, gr.Slider)):
            raise gr.Error(f"{field}: is empty (null); give {'a whole number' if _whole(component) else 'a number'}"
                           f"{_range(component)}")
        raise gr.Error(f"{field}: is empty (null); give a value")
    if isinstance(component, (gr.Number, gr.Slider)):
        _check_number(component, field, value)
    elif isinstance(component, gr.Checkbox):
        if not isinstance(value, bool):
            raise gr.Error(f"{field}: {shown(value)} is not true or false; send true or false")
    elif isinstance(component, gr.Textbox) and getattr(component, "studio_any_scalar", False):
        if isinstance(value, (bool, list, dict)):
            raise gr.Error(f"{field}: {shown(value)} is not one value; send a number or text")
    elif isinstance(component, gr.Textbox):
        if not isinstance(value, str):
            raise gr.Error(f"{field}: {shown(value)} is not text; send a string")
        try:
            check_text(value, field)
        except StudioError as error:
            raise gr.Error(str(error)) from error
    elif isinstance(component, (gr.Radio, gr.Dropdown)):
        if not getattr(component, "allow_custom_value", False):
            _check_choice(component, field, value)
        elif not isinstance(value, str):
            raise gr.Error(f"{field}: {shown(value)} is not a name; send a string")
    elif isinstance(component, gr.ImageEditor):
        _check_editor(field, value)
    elif isinstance(component, gr.Image):
        _check_image_file(field, value)
    elif isinstance(component, gr.File):
        _check_file(field, value)


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose inputs are checked by check_payload before Gradio preprocesses them."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call: bool = False):
        wanted = block_fn.inputs
        if len(inputs) < len(wanted):
            names = ", ".join(field_of(block) for block in wanted)
            raise gr.Error(f"this action takes {len(wanted)} values ({names}); {len(inputs)} were sent")
        for index, block in enumerate(wanted):
            if block.stateful or index in block_fn.component_prop_inputs:
                continue
            if state is not None and block._id in state:
                block = state[block._id]  # choices updated since the page was built
            check_payload(block, inputs[index])
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as error:  # a payload shape no check above foresaw
            log.warning("refused inputs of %s: %s", block_fn.name, error, exc_info=True)
            raise gr.Error("one of the values sent could not be read; send what /gradio_api/info describes "
                           "for this action") from error


def user_error(error: BaseException) -> gr.Error:
    """What the artist sees: our own messages as they are; anything unforeseen logged, with a plain sentence."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, StudioError):
        return gr.Error(str(error))
    log.error("unexpected error in a UI action", exc_info=error)
    return gr.Error(INTERNAL_FAILURE)


def guarded(function):
    """Wrap a Gradio handler (plain or generator) so every failure reaches the artist as user_error()."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def generator(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                raise user_error(error) from error
        return generator

    @functools.wraps(function)
    def plain(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise user_error(error) from error
    return plain
