"""Frozen request types, one per mode, and validate(): the vocabulary UI, CLI and history share.

A field's range lives next to it (dataclass metadata), so validation, the UI sliders and the
CLI help all read the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from studio.engine.schedulers import SAMPLER_NAMES
from studio.errors import InputError

MAX_SEED = 2**32 - 1
# Run numbers are SQLite integers (history/schema.py keeps the same bound): larger ones name no run.
MAX_RUN_ID = 2**63 - 1
# The vocabularies of the choice fields (A1111's meanings and words).
MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")
INPAINT_AREAS = ("whole", "masked")
OUTPAINT_INFILLS = ("edge", "blur", "noise", "telea")
CONTROL_TYPES = ("pose", "depth")
# Longer prompts are refused rather than stored: CLIP reads 77 tokens, and A1111-style chunking
# rarely goes past a few thousand characters; this bounds what one request can write to the history.
MAX_TEXT_CHARS = 20_000


def spec(default: Any, label: str, *, min: float | None = None, max: float | None = None,
         step: float | None = None, help: str = "", choices: tuple | None = None,
         choice_labels: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its UI label, range and step, or its choices (and how the UI names them).

    The widgets, the CLI flags and validation all read this: a field's vocabulary is written once.
    """
    return field(default=default, metadata={"label": label, "min": min, "max": max, "step": step, "help": help,
                                            "choices": choices, "choice_labels": choice_labels})


@dataclass(frozen=True, kw_only=True)
class Txt2ImgRequest:
    """Everything a txt2img run needs; width/height None means the model's native size."""

    mode: ClassVar[str] = "txt2img"

    prompt: str = spec("", "Prompt")
    negative_prompt: str = spec("", "Negative prompt")
    model: str | None = spec(None, "Model", help="name from the Models tab; empty = the default model")
    vae: str | None = spec(None, "VAE", help="name of a VAE override; empty = the model's own")
    sampler: str = spec("DPM++ 2M", "Sampling method", choices=SAMPLER_NAMES,
                        help="A1111 names; see `studio samplers`")
    karras: bool = spec(True, "Karras schedule", help="Karras sigma spacing, for samplers that support it")
    steps: int = spec(20, "Sampling steps", min=1, max=150, step=1)
    cfg_scale: float = spec(7.0, "CFG scale", min=1.0, max=30.0, step=0.5)
    width: int | None = spec(None, "Width", min=64, max=4096, step=8)
    height: int | None = spec(None, "Height", min=64, max=4096, step=8)
    seed: int = spec(-1, "Seed", min=-1, max=MAX_SEED, step=1, help="-1 draws a random seed")
    batch_size: int = spec(1, "Batch size", min=1, max=8, step=1, help="images per pipeline call")
    batch_count: int = spec(1, "Batch count", min=1, max=100, step=1, help="pipeline calls in a row")
    parent_run_id: int | None = spec(None, "Parent run", help="the run this one derives from")
    styles: tuple = spec((), "Styles", help="names from styles.csv; their text is put into the prompts when it runs")
    applied_styles: tuple = spec((), "Applied styles", help="recorded: the styles whose text the prompts hold")
    # Hires. fix (A1111's names and defaults): a first pass at width x height, then an img2img pass at the big size
    enable_hr: bool = spec(False, "Hires. fix", help="upscale the first pass and repaint it at the big size")
    hr_upscaler: str = spec("Latent", "Upscaler", help="Latent modes, Lanczos, Nearest or a model from models/ESRGAN")
    hr_scale: float = spec(2.0, "Upscale by", min=1.0, max=4.0, step=0.05)
    hr_resize_x: int = spec(0, "Resize width to", min=0, max=4096, step=8, help="0 = width x Upscale by")
    hr_resize_y: int = spec(0, "Resize height to", min=0, max=4096, step=8, help="0 = height x Upscale by")
    hr_second_pass_steps: int = spec(0, "Hires steps", min=0, max=150, step=1, help="0 = the sampling steps")
    hr_denoise_strength: float = spec(0.7, "Hires denoising strength", min=0.0, max=1.0, step=0.01)

    def __post_init__(self):
        # null is the API's documented default for the prompts: it means no text
        for name in ("prompt", "negative_prompt"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, "")
        for name in ("styles", "applied_styles"):  # JSON and widgets give lists
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def image_count(self) -> int:
        return self.batch_size * self.batch_count

    def hires_size(self) -> tuple[int, int]:
        """The second pass's width and height (A1111: resize-to wins; one side 0 keeps the aspect)."""
        width, height = self.width, self.height
        if self.hr_resize_x or self.hr_resize_y:
            target_w = self.hr_resize_x or round(self.hr_resize_y * width / height)
            target_h = self.hr_resize_y or round(self.hr_resize_x * height / width)
        else:
            target_w, target_h = round(width * self.hr_scale), round(height * self.hr_scale)
        return max(64, target_w // 8 * 8), max(64, target_h // 8 * 8)

    def hires_steps(self) -> int:
        return self.hr_second_pass_steps or self.steps

    def validate_hires(self) -> None:
        if not self.enable_hr:
            return
        if self.mode != "txt2img":
            raise InputError("is a txt2img option; turn it off here, or upscale the result instead", field="enable_hr")
        if int(self.hires_steps() * self.hr_denoise_strength) < 1:
            raise InputError(f"{self.hr_denoise_strength:g} x {self.hires_steps()} hires steps leaves no denoising "
                             "step; raise the strength or the hires steps", field="hr_denoise_strength")

    def seeds(self) -> list[int]:
        """Seed of every image, A1111 style: consecutive from the first (wrapping at 2**32)."""
        if self.seed < 0:
            raise InputError("is -1 (random); resolve the request before asking for seeds", field="seed")
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.image_count)]


REQUEST_TYPES: dict[str, type] = {"txt2img": Txt2ImgRequest}


def register_request_type(cls: type) -> type:
    """Add a mode's request class to the shared vocabulary (used by later modes)."""
    REQUEST_TYPES[cls.mode] = cls
    return cls


def field_spec(cls: type, name: str) -> dict:
    """The label/min/max/step metadata of one request field."""
    return dict(next(f for f in dataclasses.fields(cls) if f.name == name).metadata)


def number(value: float) -> str:
    """A number as people write it: 4294967295, 7.5, 0.75 (not 4.29497e+09)."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e16):
        return str(int(value))
    return f"{value:g}"


def shown(value: Any) -> str:
    """A short, safe rendering of a given value for a message (never the whole of a huge payload)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    return {list: "a list", tuple: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")


def check_text(value: str, field: str) -> str:
    """Text that can be stored, encoded and shown: UTF-8 encodable, no NUL, of a sane length."""
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(f"is {len(value):,} characters long; shorten it to {MAX_TEXT_CHARS:,} at most", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(f"contains a character that is not valid text (U+{ord(value[error.start]):04X} at "
                         f"position {error.start}, half of a surrogate pair); remove it", field=field) from None
    if "\0" in value:
        raise InputError(f"contains a NUL character at position {value.index(chr(0))}; remove it", field=field)
    return value


def parse_id(value: Any, field: str, noun: str, where: str) -> int:
    """A run or job number from a widget or an API call (a number or its digits), or an InputError."""
    if value is None or value == "":
        raise InputError(f"select a {noun} first", field=field)
    if isinstance(value, str) and value.strip().lstrip("#").isdigit():
        value = int(value.strip().lstrip("#"))
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{shown(value)} is not a {noun} number; give the # of a {noun} in {where}", field=field)
    if not 1 <= value <= MAX_RUN_ID:
        raise InputError(f"{value} is not a {noun} number; {noun} numbers go from 1 to {MAX_RUN_ID}", field=field)
    return value


def parse_run_id(value: Any, field: str = "run") -> int:
    return parse_id(value, field, "run", "the History")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _wanted(cls: type, name: str, base: Any) -> str:
    """What a field takes, in words: "a whole number from 1 to 150", "true or false", "text"."""
    meta = field_spec(cls, name)
    bounds = f" from {number(meta['min'])} to {number(meta['max'])}" if meta.get("min") is not None else ""
    return {bool: "true or false", int: f"a whole number{bounds}", float: f"a number{bounds}", str: "text",
            tuple: "a list"}.get(base, "a value")


def _check_type(cls: type, name: str, value: Any, hint: Any) -> None:
    """The value has the field's declared type (a request built in code, or from a record, can hold anything)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return
        raise InputError(f"is empty; give {_wanted(cls, name, base)}", field=name)
    wrong = {bool: not isinstance(value, bool),
             int: isinstance(value, bool) or not isinstance(value, int),
             float: isinstance(value, bool) or not isinstance(value, (int, float)),
             str: not isinstance(value, str), tuple: not isinstance(value, tuple)}.get(base, False)
    if wrong:
        raise InputError(f"{shown(value)} is not {_wanted(cls, name, base)}", field=name)
    if base is float and not math.isfinite(value):
        raise InputError(f"{value} is not a finite number; give {_wanted(cls, name, base)}", field=name)
    if base is str:
        check_text(value, name)


def _check_range(request: Any, name: str) -> None:
    value = getattr(request, name)
    meta = field_spec(type(request), name)
    low, high = meta.get("min"), meta.get("max")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{shown(value)} is not a number", field=name)
    if not math.isfinite(value):
        raise InputError(f"{value} is not a finite number; use {number(low)} to {number(high)}", field=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InputError(f"{number(value)} is out of range; use {number(low)} to {number(high)}", field=name)


def validate(request: Any) -> Any:
    """Check every field; raise InputError naming the first bad field and the allowed values."""
    own = getattr(request, "validate_self", None)
    if own is not None:  # a request made of requests (an X/Y/Z plot) checks itself
        own()
        return request
    for name, hint in _field_types(type(request)).items():
        if name in {f.name for f in dataclasses.fields(request)}:
            _check_type(type(request), name, getattr(request, name), hint)
    for f in dataclasses.fields(request):
        if f.metadata.get("min") is not None or f.metadata.get("max") is not None:
            _check_range(request, f.name)
    for name in ("steps", "width", "height", "seed", "batch_size", "batch_count", "hr_resize_x", "hr_resize_y",
                 "hr_second_pass_steps"):
        value = getattr(request, name)
        if value is not None and int(value) != value:
            raise InputError(f"{value} is not a whole number", field=name)
    for name in ("width", "height"):
        value = getattr(request, name)
        if value is not None and value % 8:
            lower = max(64, value - value % 8)
            raise InputError(f"{value} is not a multiple of 8; use {lower} or {lower + 8}", field=name)
    for f in dataclasses.fields(request):
        choices = f.metadata.get("choices")
        if choices and getattr(request, f.name) not in choices:
            raise InputError(f"{shown(getattr(request, f.name))} is unknown; choose one of "
                             f"{', '.join(map(str, choices))}", field=f.name)
    request.validate_hires()
    for name in ("styles", "applied_styles"):
        for item in getattr(request, name):
            if not isinstance(item, str) or not item:
                raise InputError(f"{shown(item)} is not a style name; give names from styles.csv", field=name)
    extra = getattr(request, "validate_mode", None)
    if extra is not None:
        extra()
    return request


def resolve_seed(request: Any, rng: random.Random | None = None) -> Any:
    """Replace seed -1 by a concrete random seed, so the record says what really ran."""
    if request.seed >= 0:
        return request
    return dataclasses.replace(request, seed=(rng or random.SystemRandom()).randint(0, MAX_SEED))


def to_record(request: Any) -> tuple[dict, dict[str, Image.Image]]:
    """Split a request into JSON-able parameters and its input images (stored as blobs)."""
    if hasattr(request, "record"):  # a request made of requests records itself
        return request.record()
    params: dict[str, Any] = {"mode": request.mode}
    images: dict[str, Image.Image] = {}
    for f in dataclasses.fields(request):
        value = getattr(request, f.name)
        if isinstance(value, Image.Image):
            images[f.name] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
            # control units: each unit may hold its own images
            units = []
            for i, unit in enumerate(value):
                plain = {}
                for key, item in unit.items():
                    if isinstance(item, Image.Image):
                        images[f"{f.name}.{i}.{key}"] = item
                    else:
                        plain[key] = item
                units.append(plain)
            params[f.name] = units
        else:
            params[f.name] = value
    return params, images


def from_record(params: dict, images: dict[str, Image.Image]) -> Any:
    """Rebuild the request a run was made from (rollback): the inverse of to_record."""
    mode = params.get("mode", "txt2img")
    cls = REQUEST_TYPES.get(mode)
    if cls is None:
        raise InputError(f"unknown mode {mode!r}", field="mode")
    if hasattr(cls, "from_params"):
        return cls.from_params(params, images)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in params.items() if k in names}
    for key, image in images.items():
        parts = key.split(".")
        if len(parts) == 1 and key in names:
            values[key] = image
        elif len(parts) == 3 and parts[0] in values:
            units = [dict(u) for u in values[parts[0]]]
            units[int(parts[1])][parts[2]] = image
            values[parts[0]] = units
    for key, value in list(values.items()):
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            values[key] = tuple(value)
    upgrade = getattr(cls, "upgrade_recorded", None)  # a record made before a setting existed
    return cls(**(upgrade(values) if upgrade else values))


def _check_denoising_steps(request: Any) -> None:
    """img2img-style runs do steps x strength steps (as A1111 and diffusers); at least one is needed."""
    if int(request.steps * request.denoise_strength) < 1:
        raise InputError(f"{request.denoise_strength:g} x {request.steps} steps leaves no denoising step; raise "
                         "the strength or the steps", field="denoise_strength")


def _check_image(request: Any, name: str) -> None:
    value = getattr(request, name)
    if value is None:
        raise InputError("is missing; upload an image", field=name)
    if not isinstance(value, Image.Image):
        raise InputError(f"is a {type(value).__name__}, not an image; upload a PNG or JPEG", field=name)


@register_request_type
@dataclass(frozen=True, kw_only=True)
class InpaintRequest(Txt2ImgRequest):
    """Repaint the masked part of an image (A1111 meanings for every option).

    width/height are the processing size: the image's own size (snapped to 8) for the whole
    picture, the model's native size for "only masked". The output always has the input's size.
    """

    mode: ClassVar[str] = "inpaint"

    image: Image.Image | None = spec(None, "Image")
    mask: Image.Image | None = spec(None, "Mask", help="white = repaint; painted on the image or uploaded")
    mask_blur: int = spec(4, "Mask blur", min=0, max=64, step=1, help="pixels of Gaussian blur on the mask edge")
    invert_mask: bool = spec(False, "Inpaint not masked", help="repaint everything except the mask")
    masked_content: str = spec("original", "Masked content", help="what the masked area starts from",
                               choices=MASKED_CONTENT)
    inpaint_area: str = spec("whole", "Inpaint area", choices=INPAINT_AREAS,
                             choice_labels=("Whole picture", "Only masked"),
                             help="whole picture, or only the masked region at full resolution")
    padding: int = spec(32, "Only masked padding, pixels", min=0, max=256, step=4)
    denoise_strength: float = spec(0.75, "Denoising strength", min=0.0, max=1.0, step=0.01)

    def validate_mode(self) -> None:
        _check_image(self, "image")
        _check_image(self, "mask")
        _check_denoising_steps(self)


@register_request_type
@dataclass(frozen=True, kw_only=True)
class OutpaintRequest(Txt2ImgRequest):
    """Extend the canvas on any side and paint the new area to continue the image."""

    mode: ClassVar[str] = "outpaint"

    image: Image.Image | None = spec(None, "Image")
    left: int = spec(0, "Extend left", min=0, max=2048, step=8)
    right: int = spec(0, "Extend right", min=0, max=2048, step=8)
    top: int = spec(0, "Extend top", min=0, max=2048, step=8)
    bottom: int = spec(0, "Extend bottom", min=0, max=2048, step=8)
    infill: str = spec("telea", "Infill of the new area", choices=OUTPAINT_INFILLS,
                       help="how the new area is pre-filled before diffusion")
    overlap: int = spec(16, "Overlap, pixels", min=0, max=256, step=8,
                        help="band of the original repainted for a seamless join")
    feather: int = spec(16, "Feather, pixels", min=0, max=256, step=8,
                        help="soft ramp of the mask inside the overlap band")
    denoise_strength: float = spec(0.85, "Denoising strength", min=0.0, max=1.0, step=0.01)

    def validate_mode(self) -> None:
        _check_image(self, "image")
        _check_denoising_steps(self)
        for side in ("left", "right", "top", "bottom"):
            if getattr(self, side) % 8:
                value = getattr(self, side)
                raise InputError(f"{value} is not a multiple of 8; use {value - value % 8} or "
                                 f"{value - value % 8 + 8}", field=side)
        if not (self.left or self.right or self.top or self.bottom):
            raise InputError("all four sides are 0; set at least one side (left, right, top, bottom) to extend",
                             field="extend")


MAX_CONTROL_UNITS = 3
# One control unit's settings: default, label, range or choices, help (a unit is a plain dict so it can hold
# images; the UI, the CLI and validation read this table).
CONTROL_UNIT_SPEC = {
    "type": dict(default="pose", label="Type", choices=CONTROL_TYPES),
    "image": dict(default=None, label="Photo, or a ready control map"),
    "preprocess": dict(default=True, label="Preprocess (detect the pose/depth in a photo)"),
    "map": dict(default=None, label="Control map (what the ControlNet sees)"),
    "weight": dict(default=1.0, label="Control weight", min=0.0, max=2.0, step=0.05),
    "start": dict(default=0.0, label="Guidance start", min=0.0, max=1.0, step=0.01),
    "end": dict(default=1.0, label="Guidance end", min=0.0, max=1.0, step=0.01),
    "guess_mode": dict(default=False, label="Guess mode (ControlNet is more important)"),
    "model": dict(default=None, label="ControlNet"),
    # pose preprocessing: also detect hands / face (A1111's openpose_hand, _face, _full)
    "hands": dict(default=False, label="Pose: also detect hands"),
    "face": dict(default=False, label="Pose: also detect the face"),
}
CONTROL_UNIT_DEFAULTS = {key: item["default"] for key, item in CONTROL_UNIT_SPEC.items()}


def control_unit(**values) -> dict:
    """A control unit with defaults filled in; unknown keys are refused by validation."""
    return {**CONTROL_UNIT_DEFAULTS, **values}


def _check_unit(index: int, unit: dict) -> None:
    where = f"units[{index}]"
    if not isinstance(unit, dict):
        raise InputError(f"{shown(unit)} is not a control unit (type, image, weight, ...)", field=where)
    unknown = set(unit) - set(CONTROL_UNIT_DEFAULTS)
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(sorted(unknown))}; use {', '.join(CONTROL_UNIT_DEFAULTS)}",
                         field=where)
    if unit.get("type") not in CONTROL_TYPES:
        raise InputError(f"type {shown(unit.get('type'))} is not one of {', '.join(CONTROL_TYPES)}",
                         field=f"{where}.type")
    picture = unit.get("map") if unit.get("map") is not None else unit.get("image")
    if picture is None:
        raise InputError("has no image; upload a photo to preprocess or a ready control map", field=f"{where}.image")
    if not isinstance(picture, Image.Image):
        raise InputError(f"is a {type(picture).__name__}, not an image", field=f"{where}.image")
    for key in ("weight", "start", "end"):
        low, high, value = CONTROL_UNIT_SPEC[key]["min"], CONTROL_UNIT_SPEC[key]["max"], unit.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise InputError(f"{shown(value)} is out of range; use {number(low)} to {number(high)}",
                             field=f"{where}.{key}")
    for key in ("preprocess", "guess_mode", "hands", "face"):
        if not isinstance(unit.get(key), bool):
            raise InputError(f"{shown(unit.get(key))} is not true or false", field=f"{where}.{key}")
    if unit.get("model") is not None and not isinstance(unit["model"], str):
        raise InputError(f"{shown(unit['model'])} is not a ControlNet name", field=f"{where}.model")
    if unit["start"] >= unit["end"]:
        raise InputError(f"start {unit['start']:g} must be before end {unit['end']:g}", field=f"{where}.start")


@register_request_type
@dataclass(frozen=True, kw_only=True)
class ControlRequest(Txt2ImgRequest):
    """txt2img (or img2img with init_image) guided by one or more ControlNet units (pose, depth)."""

    mode: ClassVar[str] = "control"

    units: tuple = spec((), "Control units",
                        help="each: type, image or map, preprocess, weight, start, end, guess mode, model")
    init_image: Image.Image | None = spec(None, "Init image", help="img2img with controls when given")
    denoise_strength: float = spec(0.75, "Denoising strength", min=0.0, max=1.0, step=0.01)

    @staticmethod
    def upgrade_recorded(values: dict) -> dict:
        """Units recorded before a unit setting existed (hands, face) get its default."""
        return {**values, "units": tuple(control_unit(**unit) for unit in values.get("units", ()))}

    def validate_mode(self) -> None:
        if not self.units:
            raise InputError("add at least one control unit (pose or depth)", field="units")
        if len(self.units) > MAX_CONTROL_UNITS:
            raise InputError(f"{len(self.units)} units; use at most {MAX_CONTROL_UNITS}", field="units")
        for index, unit in enumerate(self.units):
            _check_unit(index, unit)
        if self.init_image is not None:
            if not isinstance(self.init_image, Image.Image):
                raise InputError("is not an image", field="init_image")
            _check_denoising_steps(self)


@register_request_type
@dataclass(frozen=True, kw_only=True)
class UpscaleRequest:
    """Upscale one image (A1111's Extras): an upscaler and a factor; recorded as a run whose parent is the source."""

    mode: ClassVar[str] = "upscale"

    image: Image.Image | None = spec(None, "Image")
    upscaler: str = spec("Lanczos", "Upscaler", help="Lanczos, Nearest or a model from models/ESRGAN (and the like)")
    scale: float = spec(2.0, "Upscale by", min=1.0, max=8.0, step=0.05)
    parent_run_id: int | None = spec(None, "Parent run", help="the run whose image this upscales")

    # what the queue panel shows of a job
    prompt: ClassVar[str] = ""
    model: ClassVar[str | None] = None

    def validate_self(self) -> None:
        for name, hint in _field_types(type(self)).items():
            if name in {f.name for f in dataclasses.fields(self)}:
                _check_type(type(self), name, getattr(self, name), hint)
        _check_range(self, "scale")
        _check_image(self, "image")
        width, height = round(self.image.width * self.scale), round(self.image.height * self.scale)
        if width > 16384 or height > 16384:
            raise InputError(f"{self.image.width}x{self.image.height} x {self.scale:g} is {width}x{height}; keep each "
                             "side at most 16384", field="scale")
