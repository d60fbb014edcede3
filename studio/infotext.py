"""The A1111 `parameters` text embedded in PNGs: write it for our outputs, read it from any PNG."""

from __future__ import annotations

import json
import math
import re

from PIL import Image

PARAMETERS_KEY = "parameters"
# Our own PNGs also carry the full request as JSON, so restore is exact for every mode.
STUDIO_KEY = "studio-request"

# "Key: value" pairs of the last line; values with commas or colons are JSON-quoted.
_PAIR = re.compile(r'\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')

def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


# infotext key -> (request field, converter); A1111's names on the left.
_FIELDS = {
    "Steps": ("steps", int),
    "CFG scale": ("cfg_scale", _finite),
    "Seed": ("seed", int),
    "Model": ("model", str),
    "Model hash": ("model_hash", str),
    "VAE": ("vae", str),
    "Denoising strength": ("denoise_strength", _finite),
    "Mask blur": ("mask_blur", int),
    "Batch size": ("batch_size", int),
}


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:\n"') else text


def format_infotext(prompt: str, negative_prompt: str, pairs: dict) -> str:
    """A1111 layout: prompt, 'Negative prompt: ...', then one line of 'Key: value' pairs."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items() if value not in (None, "")))
    return "\n".join(lines)


def _parse_pairs(line: str) -> dict[str, str]:
    pairs = {}
    for key, value in _PAIR.findall(line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value[1:-1]
        pairs[key.strip()] = value
    return pairs


def parse_infotext(text: str) -> dict:
    """Read an A1111 infotext into request-field names (prompt, negative_prompt, steps, sampler, ...).

    Unknown keys are kept under "extra" so nothing the file said is lost.
    """
    from studio.engine.schedulers import parse_sampler_name

    lines = text.strip().split("\n")
    pairs: dict[str, str] = {}
    if lines and len(_parse_pairs(lines[-1])) >= 3:
        pairs = _parse_pairs(lines.pop())
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict = {"prompt": "\n".join(prompt_lines).strip(), "negative_prompt": "\n".join(negative_lines).strip()}
    extra = {}
    for key, value in pairs.items():
        if key in _FIELDS:
            name, convert = _FIELDS[key]
            try:
                result[name] = convert(value)
            except ValueError:
                extra[key] = value
        elif key == "Size" and "x" in value:
            width, height = value.split("x", 1)
            try:
                result["width"], result["height"] = int(width), int(height)
            except ValueError:  # kept as written, like any other value this reader cannot use
                extra[key] = value
        elif key == "Sampler":
            result["sampler"], karras = parse_sampler_name(value)
            result["karras"] = karras or result.get("karras", False)
        elif key == "Schedule type":
            result["karras"] = value.strip().lower() == "karras"
        else:
            extra[key] = value
    if "Schedule type" not in pairs and "sampler" in result and not str(pairs.get("Sampler", "")).endswith("Karras"):
        result["karras"] = False
    result["extra"] = extra
    return result


def png_text(image: Image.Image) -> dict[str, str]:
    """The text chunks of a PNG (empty for other formats)."""
    text = dict(getattr(image, "text", {}) or {})
    for key, value in (image.info or {}).items():
        if isinstance(value, str):
            text.setdefault(key, value)
    return text


def read_parameters(image: Image.Image) -> tuple[str | None, dict | None]:
    """(A1111 parameters text, studio request JSON) found in an image, either may be None."""
    text = png_text(image)
    studio = text.get(STUDIO_KEY)
    try:
        studio_params = json.loads(studio) if studio else None
    except (json.JSONDecodeError, RecursionError):  # unreadable: fall back to the A1111 text
        studio_params = None
    if not isinstance(studio_params, dict):
        studio_params = None
    return text.get(PARAMETERS_KEY), studio_params
