"""AUTOMATIC1111 API bodies -> studio requests, and studio results -> A1111 responses.

A1111's field names (sampler_name, n_iter, inpainting_fill, ...) are translated into the studio's
one vocabulary (studio/requests.py), so validation, history and re-runs are the same as for the UI.
Unknown fields are accepted and ignored, as A1111 does; fields the studio cannot honour are named
in the response's info under "ignored" when they ask for something (restore_faces: true).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from PIL import Image, UnidentifiedImageError

from studio import __version__
from studio.engine.schedulers import SAMPLER_NAMES, parse_sampler_name
from studio.errors import InputError
from studio.requests import ControlRequest, InpaintRequest, Txt2ImgRequest, control_unit, shown, validate

# A1111's inpainting_fill numbers, in its order
INPAINTING_FILL = ("fill", "original", "latent noise", "latent nothing")
# A1111's defaults where a field is absent (StableDiffusionProcessing and its API models)
DEFAULTS = {"prompt": "", "negative_prompt": "", "seed": -1, "steps": 50, "cfg_scale": 7.0, "width": 512,
            "height": 512, "batch_size": 1, "n_iter": 1, "denoising_strength": 0.75, "mask_blur": 4,
            "inpainting_fill": 0, "inpaint_full_res": True, "inpaint_full_res_padding": 0,
            "inpainting_mask_invert": 0, "resize_mode": 0, "sampler_name": "Euler", "enable_hr": False,
            "hr_scale": 2.0, "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0}
# Fields the studio cannot honour yet, with the value that asks for nothing (then they are not "ignored").
UNSUPPORTED = {"restore_faces": False, "tiling": False, "subseed_strength": 0, "script_name": None,
               "hr_checkpoint_name": [None, "", "Use same checkpoint"], "hr_sampler_name": [None, "", "Use same sampler"],
               "hr_prompt": "", "hr_negative_prompt": "", "hr_scheduler": [None, "", "Use same scheduler"], "resize_mode": 0, "seed_resize_from_h": [0, -1],
               "seed_resize_from_w": [0, -1], "refiner_checkpoint": None, "s_churn": 0, "eta": [None, 0, 1],
               "image_cfg_scale": [None, 1.5], "initial_noise_multiplier": [None, 1]}
# studio field -> the A1111 field a message should name
A1111_NAMES = {"batch_count": "n_iter", "sampler": "sampler_name", "denoise_strength": "denoising_strength",
               "image": "init_images", "invert_mask": "inpainting_mask_invert", "masked_content": "inpainting_fill",
               "inpaint_area": "inpaint_full_res", "padding": "inpaint_full_res_padding", "karras": "scheduler",
               "model": "override_settings.sd_model_checkpoint", "vae": "override_settings.sd_vae",
               "init_image": "init_images", "units": "alwayson_scripts.ControlNet.args",
               "hr_denoise_strength": "denoising_strength", "upscaler": "upscaler_1", "scale": "upscaling_resize"}


def a1111_field(field_name: str | None) -> str | None:
    """The A1111 name of a studio field (units[0].weight -> alwayson_scripts.ControlNet.args[0].weight)."""
    if field_name is None:
        return None
    unit = re.match(r"units\[(\d+)\](.*)", field_name)
    if unit:
        return f"alwayson_scripts.ControlNet.args[{unit.group(1)}]{unit.group(2)}"
    return A1111_NAMES.get(field_name, field_name)


def decode_image(value: Any, field_name: str) -> Image.Image:
    """A base64 image, with or without a data:image/...;base64, prefix."""
    if not isinstance(value, str) or not value:
        raise InputError(f"{shown(value)} is not a base64 image; send a PNG or JPEG as base64 text", field=field_name)
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        raw = base64.b64decode(text, validate=False)
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > 8192 * 8192:
                raise InputError(f"the image is {image.width}x{image.height}; send one of at most 8192x8192",
                                 field=field_name)
            image.load()
            return image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()
    except InputError:
        raise
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise InputError("is not a readable base64 image (damaged, truncated or not an image format); send a PNG or "
                         "JPEG as base64", field=field_name) from error


def _whole(body: dict, name: str) -> int:
    value = body.get(name, DEFAULTS.get(name))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{shown(value)} is not a whole number", field=name)
    return value


def _number(body: dict, name: str) -> float:
    value = body.get(name, DEFAULTS.get(name))
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{shown(value)} is not a number", field=name)
    if not math.isfinite(value):
        raise InputError(f"{shown(value)} is not a finite number", field=name)
    return float(value)


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, DEFAULTS.get(name))
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # A1111 sends inpainting_mask_invert as 0 or 1
        return bool(value)
    raise InputError(f"{shown(value)} is not true or false", field=name)


def _text(body: dict, name: str) -> str:
    value = body.get(name, DEFAULTS.get(name, ""))
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{shown(value)} is not text", field=name)
    return value


@dataclass
class ApiState:
    """What POST /options changed: the model and VAE calls use when they do not override them."""

    checkpoint: str | None = None  # a model name; None: the studio's default
    vae: str | None = None
    other: dict = field(default_factory=dict)  # options we keep and echo but do not act on


def model_title(name: str, short_hash: str) -> str:
    return f"{name} [{short_hash}]"


def title_to_name(title: Any, names: list[str], field_name: str) -> str:
    """A model chosen by A1111 title ("name [hash]"), file name or name."""
    if not isinstance(title, str) or not title.strip():
        raise InputError(f"{shown(title)} is not a model title; see GET /sdapi/v1/sd-models", field=field_name)
    text = re.sub(r"\s*\[[0-9a-fA-F]{6,64}\]\s*$", "", title.strip())
    for candidate in (text, text.rsplit("/", 1)[-1], re.sub(r"\.safetensors$", "", text.rsplit("/", 1)[-1])):
        if candidate in names:
            return candidate
    raise InputError(f"unknown model {title!r}; choose one of {', '.join(names)}", field=field_name)


# A1111's schedule names; the studio has automatic (the sampler's own) and karras, the rest are ignored
A1111_SCHEDULES = ("automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
                   "align_your_steps", "simple", "normal", "ddim", "beta")


def _sampler(body: dict) -> tuple[str, bool | None]:
    given = [name for name in ("sampler_name", "sampler_index") if body.get(name) is not None]
    field_name = given[0] if given else "sampler_name"
    raw = body[field_name] if given else DEFAULTS["sampler_name"]
    if not isinstance(raw, str):
        raise InputError(f"{shown(raw)} is not a sampler name", field=field_name)
    name, karras_suffix = parse_sampler_name(raw)
    if name not in SAMPLER_NAMES:
        raise InputError(f"unknown sampler {raw!r}; choose one of {', '.join(SAMPLER_NAMES)}", field=field_name)
    scheduler = body.get("scheduler")
    if scheduler is not None and (not isinstance(scheduler, str) or scheduler.lower() not in A1111_SCHEDULES):
        raise InputError(f"{shown(scheduler)} is not a schedule; choose one of {', '.join(A1111_SCHEDULES)}",
                         field="scheduler")
    schedule = (scheduler or "automatic").lower()
    if karras_suffix or schedule == "karras":
        return name, True
    if schedule == "automatic":
        return name, None  # the sampler's own default (the studio's: Karras where the sampler has it)
    return name, False


def ignored_fields(body: dict) -> list[str]:
    """The fields of a body that ask for something the studio does not do yet."""
    names = []
    if isinstance(body.get("scheduler"), str) and body["scheduler"].lower() not in ("automatic", "karras"):
        names.append("scheduler")
    for name, harmless in UNSUPPORTED.items():
        if name not in body:
            continue
        allowed = harmless if isinstance(harmless, list) else [harmless]
        if body[name] not in allowed and body[name] not in (None, "", [], {}):
            names.append(name)
    return names


def _common(body: dict, state: ApiState, models: list[str]) -> dict:
    """The txt2img fields every generating call shares, as studio request values."""
    sampler, karras = _sampler(body)
    override = body.get("override_settings")
    override = {} if override is None else override
    if not isinstance(override, dict):
        raise InputError(f"{shown(override)} is not an object", field="override_settings")
    model = state.checkpoint
    if override.get("sd_model_checkpoint"):
        model = title_to_name(override["sd_model_checkpoint"], models, "override_settings.sd_model_checkpoint")
    vae = override.get("sd_vae", state.vae)
    values = dict(prompt=_text(body, "prompt"), negative_prompt=_text(body, "negative_prompt"),
                  seed=_whole(body, "seed"), steps=_whole(body, "steps"), cfg_scale=_number(body, "cfg_scale"),
                  width=_whole(body, "width"), height=_whole(body, "height"), sampler=sampler,
                  batch_size=_whole(body, "batch_size"), batch_count=_whole(body, "n_iter"), model=model,
                  vae=None if vae in (None, "", "Automatic", "None") else vae)
    if karras is not None:
        values["karras"] = karras
    styles = body.get("styles")
    if styles not in (None, []):
        if not isinstance(styles, list) or not all(isinstance(name, str) for name in styles):
            raise InputError(f"{shown(styles)} is not a list of style names", field="styles")
        values["styles"] = tuple(styles)
    if values["seed"] < -1:  # A1111 treats any negative seed as random
        values["seed"] = -1
    return values


def control_units(body: dict, controlnets: list[str]) -> tuple:
    """sd-webui-controlnet units from alwayson_scripts.ControlNet.args, as studio control units."""
    scripts = body.get("alwayson_scripts")
    scripts = {} if scripts is None else scripts
    if not isinstance(scripts, dict):
        raise InputError(f"{shown(scripts)} is not an object", field="alwayson_scripts")
    entry = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    if not entry:
        return ()
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list):
        raise InputError(f"{shown(args)} is not a list of units", field="alwayson_scripts.ControlNet.args")
    units = []
    for index, raw in enumerate(args):
        where = f"alwayson_scripts.ControlNet.args[{index}]"
        if not isinstance(raw, dict):
            raise InputError(f"{shown(raw)} is not a unit object", field=where)
        if raw.get("enabled") is False:
            continue
        module = str(raw.get("module") or "none").lower()
        model_text = str(raw.get("model") or "").lower()
        kind = "depth" if "depth" in module or "depth" in model_text else "pose"
        picture = raw.get("image") or raw.get("input_image")
        if isinstance(picture, dict):  # {"image": b64, "mask": b64} in some versions
            picture = picture.get("image")
        mode = raw.get("control_mode", 0)
        model = None
        if raw.get("model") not in (None, "", "None"):
            model = title_to_name(raw["model"], controlnets, f"{where}.model")
        units.append(control_unit(
            type=kind, image=decode_image(picture, f"{where}.image"), preprocess=module not in ("none", ""),
            weight=_number(raw, "weight") if "weight" in raw else 1.0,
            start=_number(raw, "guidance_start") if "guidance_start" in raw else 0.0,
            end=_number(raw, "guidance_end") if "guidance_end" in raw else 1.0,
            guess_mode=mode in (2, "ControlNet is more important"), model=model,
            hands="hand" in module or "full" in module, face="face" in module or "full" in module))
    return tuple(units)


def hires_values(body: dict) -> dict:
    """A1111's Hires. fix fields (enable_hr, hr_scale, hr_upscaler, ...; denoising_strength is the second pass's)."""
    if not _flag(body, "enable_hr"):
        return {}
    values = {"enable_hr": True, "hr_scale": _number(body, "hr_scale"),
              "hr_second_pass_steps": _whole(body, "hr_second_pass_steps"), "hr_resize_x": _whole(body, "hr_resize_x"),
              "hr_resize_y": _whole(body, "hr_resize_y"),
              # the UI's 0.7 when absent (the img2img default, 0.75, is for img2img)
              "hr_denoise_strength": _number({"denoising_strength": 0.7, **body}, "denoising_strength")}
    upscaler = body.get("hr_upscaler")
    if upscaler not in (None, ""):
        if not isinstance(upscaler, str):
            raise InputError(f"{shown(upscaler)} is not an upscaler name; see GET /sdapi/v1/upscalers",
                             field="hr_upscaler")
        values["hr_upscaler"] = upscaler
    return values


def txt2img_request(body: dict, state: ApiState, models: list[str], controlnets: list[str]):
    """The studio request a /sdapi/v1/txt2img body describes."""
    values = _common(body, state, models)
    units = control_units(body, controlnets)
    if units:
        if body.get("enable_hr"):
            raise InputError("Hires. fix with ControlNet units is not supported yet; send one or the other",
                             field="enable_hr")
        return ControlRequest(**values, units=units)
    return Txt2ImgRequest(**values, **hires_values(body))


def img2img_request(body: dict, state: ApiState, models: list[str], controlnets: list[str]):
    """The studio request a /sdapi/v1/img2img body describes: inpaint with a mask, else img2img as a full mask."""
    values = _common(body, state, models)
    validate(Txt2ImgRequest(**values))  # sizes are checked before any image is resized to them
    images = body.get("init_images")
    if not isinstance(images, list) or not images:
        raise InputError("give at least one base64 image in init_images", field="init_images")
    size = (values["width"], values["height"])
    image = decode_image(images[0], "init_images[0]").convert("RGB")
    if image.size != size:  # resize_mode 0, "Just resize", as A1111 does before inpainting
        image = image.resize(size, Image.LANCZOS)
    strength = _number(body, "denoising_strength")
    units = control_units(body, controlnets)
    mask_value = body.get("mask")
    if units:
        if mask_value:
            raise InputError("inpainting with ControlNet units is not supported yet; send the mask or the units",
                             field="mask")
        return ControlRequest(**values, units=units, init_image=image, denoise_strength=strength)
    fill = _whole(body, "inpainting_fill")
    if not 0 <= fill < len(INPAINTING_FILL):
        raise InputError(f"{fill} is not one of 0 (fill), 1 (original), 2 (latent noise), 3 (latent nothing)",
                         field="inpainting_fill")
    if mask_value:
        mask = decode_image(mask_value, "mask").convert("L")
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        area = "masked" if _flag(body, "inpaint_full_res") else "whole"
        blur, content = _whole(body, "mask_blur"), INPAINTING_FILL[fill]
    else:
        # plain img2img: the whole picture repainted from itself
        mask, area, blur, content = Image.new("L", size, 255), "whole", 0, "original"
    values.update(width=None, height=None)  # the (resized) image's own size
    return InpaintRequest(**values, image=image, mask=mask, mask_blur=blur, masked_content=content,
                          inpaint_area=area, padding=_whole(body, "inpaint_full_res_padding"),
                          invert_mask=_flag(body, "inpainting_mask_invert") if mask_value else False,
                          denoise_strength=strength)


def png_base64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def response(result, body: dict, model_hash: str, send_images: bool, ignored: list[str]) -> dict:
    """What A1111 answers: images (base64 PNGs with their infotext), the request echoed, info as a JSON string."""
    request = result.request
    count = len(result.seeds)
    info = {
        "prompt": request.prompt, "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * count,
        "seed": result.seeds[0] if result.seeds else request.seed, "all_seeds": result.seeds,
        "subseed": -1, "all_subseeds": [-1] * count, "subseed_strength": 0,
        "width": request.width, "height": request.height, "sampler_name": request.sampler,
        "cfg_scale": request.cfg_scale, "steps": request.steps, "batch_size": request.batch_size,
        "restore_faces": False, "sd_model_name": request.model, "sd_model_hash": model_hash[:10],
        "sd_vae_name": request.vae, "denoising_strength": getattr(request, "denoise_strength", None),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": result.infotexts,
        "styles": list(getattr(request, "applied_styles", ())),
        "job_timestamp": datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"), "clip_skip": 1,
        "version": f"studio {__version__}", "run_id": result.run_id, "status": result.status,
        "ignored": ignored, "notices": list(result.notices),
    }
    images = [png_base64(ref.path) for ref in result.outputs] if send_images else []
    return {"images": images, "parameters": body, "info": json.dumps(info)}
