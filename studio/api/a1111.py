"""The AUTOMATIC1111-compatible HTTP API, /sdapi/v1/*, served on the studio's own port.

SillyTavern, Open WebUI, openOutpaint, the `webuiapi` client and many scripts speak it. Every
generating call runs through the same JobRunner as the UI (one device lock) and is a history row
with source "api". Errors are JSON {"error", "detail", "field"}: 422 for bad input, 404 for what
does not exist, never a traceback.
"""

from __future__ import annotations

import base64
import io
import logging
import time

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from studio import __version__
from studio.api.a1111_requests import (
    ApiState,
    a1111_field,
    decode_image,
    ignored_fields,
    img2img_request,
    model_title,
    response,
    title_to_name,
    txt2img_request,
)
from studio.api.http import ApiContext, bind, route_table
from studio.engine.devices import available_ram_bytes
from studio.engine.schedulers import SAMPLER_NAMES
from studio.errors import InputError, StudioError
from studio.infotext import parse_infotext, png_text, read_parameters

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"


class A1111Api(ApiContext):
    """What the A1111 routes share: the studio's services and what POST /options set."""

    def __init__(self, services):
        super().__init__(services)
        self.state = ApiState()

    @staticmethod
    def field_name(field: str | None) -> str | None:
        return a1111_field(field)

    def model_names(self) -> list[str]:
        registry = self.services.registry
        return [name for name, entry in registry.entries().items() if not registry.problem(entry)]

    def controlnet_names(self) -> list[str]:
        return list(self.services.registry.controlnet_entries())

    async def generate(self, request: Request, build) -> dict:
        body = await self.body(request)
        studio_request = build(body, self.state, self.model_names(), self.controlnet_names())
        # queued behind the jobs already waiting; a progress callback makes the runner draw live previews
        result = await run_in_threadpool(self.services.queue.run, studio_request, lambda progress: None, "api")
        record = self.services.history.get(result.run_id)
        send = body.get("send_images", True) is not False
        return response(result, body, record.model_hash, send, ignored_fields(body))


ROUTES: list = []
route = route_table(ROUTES)


@route("/txt2img", ("POST",))
async def txt2img(api: A1111Api, request: Request):
    """Text to image, as A1111's txt2img."""
    return await api.generate(request, txt2img_request)


@route("/img2img", ("POST",))
async def img2img(api: A1111Api, request: Request):
    """Image to image; with a mask, inpainting (mask_blur, inpainting_fill, inpaint_full_res, ...)."""
    return await api.generate(request, img2img_request)


def _current_title(api: A1111Api) -> str:
    registry = api.services.registry
    name = api.state.checkpoint or registry.default_name()
    return model_title(name, registry.model_hash(registry.resolve(name))[:10])


@route("/options")
async def get_options(api: A1111Api, request: Request):
    """The options A1111 clients read: the checkpoint, the VAE, seeds, the image format."""
    return {**api.state.other, "sd_model_checkpoint": _current_title(api), "sd_vae": api.state.vae or "Automatic",
            "send_seed": True, "samples_format": "png", "sd_checkpoint_hash":
                api.services.registry.model_hash(api.services.registry.resolve(api.state.checkpoint))}


@route("/options", ("POST",))
async def set_options(api: A1111Api, request: Request):
    """Choose the checkpoint (sd_model_checkpoint) or VAE (sd_vae) later calls use; other options are kept."""
    body = await api.body(request)
    if "sd_model_checkpoint" in body:
        api.state.checkpoint = title_to_name(body["sd_model_checkpoint"], api.model_names(), "sd_model_checkpoint")
    if "sd_vae" in body:
        vae = body["sd_vae"]
        if vae in (None, "", "Automatic", "None"):
            api.state.vae = None
        elif vae in api.services.registry.vae_names():
            api.state.vae = vae
        else:
            raise InputError(f"unknown VAE {vae!r}; choose one of Automatic, "
                             f"{', '.join(api.services.registry.vae_names()) or '(none installed)'}", field="sd_vae")
    api.state.other.update({k: v for k, v in body.items() if k not in ("sd_model_checkpoint", "sd_vae")})
    return None


@route("/sd-models")
async def sd_models(api: A1111Api, request: Request):
    """Checkpoints that can load (title, model_name, hash, sha256, filename)."""
    registry, rows = api.services.registry, []
    for name in api.model_names():
        entry = registry.resolve(name)
        sha = await run_in_threadpool(registry.model_hash, entry)
        rows.append({"title": model_title(name, sha[:10]), "model_name": name, "hash": sha[:10], "sha256": sha,
                     "filename": entry.location, "config": None})
    return rows


@route("/sd-vae")
async def sd_vae(api: A1111Api, request: Request):
    """VAEs in models/VAE."""
    folder = api.services.registry.vae_dir
    return [{"model_name": name, "filename": str(folder / name)} for name in api.services.registry.vae_names()]


@route("/samplers")
async def samplers(api: A1111Api, request: Request):
    """Sampler names (A1111's)."""
    return [{"name": name, "aliases": [], "options": {}} for name in SAMPLER_NAMES]


@route("/schedulers")
async def schedulers(api: A1111Api, request: Request):
    """Schedules: automatic (the sampler's own; Karras where it has one) and karras."""
    return [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
            {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}]


def _empty_list(path: str, doc: str):
    async def handler(api: A1111Api, request: Request):
        return []
    handler.__doc__ = doc
    route(path)(handler)


for _path, _doc in (("/hypernetworks", "Hypernetworks (none)."), ("/face-restorers", "Face restorers (none)."),
                    ("/realesrgan-models", "Real-ESRGAN models (those in models/RealESRGAN are in /upscalers).")):
    _empty_list(_path, _doc)


@route("/upscalers")
async def upscalers(api: A1111Api, request: Request):
    """Image upscalers for Hires. fix and extra-single-image: Lanczos, Nearest and the model files."""
    rows = []
    for row in api.services.registry.upscalers.describe(probe=False):
        if row["kind"] == "latent":
            continue
        rows.append({"name": row["name"], "model_name": row["name"] if row["kind"] == "model" else None,
                     "model_path": row["path"], "model_url": None, "scale": row.get("scale") or 4})
    return rows


@route("/latent-upscale-modes")
async def latent_upscale_modes(api: A1111Api, request: Request):
    """Latent upscalers for Hires. fix (A1111's names)."""
    from studio.engine.upscalers import LATENT_UPSCALERS

    return [{"name": name} for name in LATENT_UPSCALERS]


@route("/loras")
async def loras(api: A1111Api, request: Request):
    """LoRAs in models/Lora (and the embedded ones): use them in a prompt as <lora:name:weight>."""
    return [{"name": row["name"], "alias": row["name"], "path": row["path"], "metadata": {}}
            for row in api.services.registry.loras.describe() if not row["problem"]]


@route("/prompt-styles")
async def prompt_styles(api: A1111Api, request: Request):
    """Styles of styles.csv in the data folder (A1111's format)."""
    return [{"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
            for style in api.services.runner.styles.styles()]


@route("/extra-single-image", ("POST",))
async def extra_single_image(api: A1111Api, request: Request):
    """Upscale one image (A1111's Extras): image, upscaler_1, upscaling_resize; a history run of its own."""
    from studio.api.a1111_requests import _number, png_base64
    from studio.requests import UpscaleRequest

    body = await api.body(request)
    if body.get("resize_mode", 0) not in (0, None):
        raise InputError("only resize_mode 0 (scale by upscaling_resize) is supported", field="resize_mode")
    upscale = UpscaleRequest(image=decode_image(body.get("image"), "image").convert("RGB"),
                             upscaler=body.get("upscaler_1") or "Lanczos",
                             scale=_number({"upscaling_resize": 2, **body}, "upscaling_resize"))
    result = await run_in_threadpool(api.services.queue.run, upscale, lambda progress: None, "api")
    ignored = [name for name in ("upscaler_2", "gfpgan_visibility", "codeformer_visibility")
               if body.get(name) not in (None, "", "None", 0)]
    return {"html_info": result.infotexts[0], "image": png_base64(result.outputs[0].path), "run_id": result.run_id,
            "ignored": ignored}


@route("/embeddings")
async def embeddings(api: A1111Api, request: Request):
    """Textual inversion embeddings (none yet)."""
    return {"loaded": {}, "skipped": {}}


@route("/scripts")
async def scripts(api: A1111Api, request: Request):
    """Scripts: ControlNet units are taken in alwayson_scripts."""
    return {"txt2img": ["controlnet"], "img2img": ["controlnet"]}


@route("/cmd-flags")
async def cmd_flags(api: A1111Api, request: Request):
    """The server's settings that A1111 reports as command-line flags (never the API password)."""
    settings = api.services.settings
    return {"api": True, "listen": settings.listen, "port": settings.port, "nowebui": False,
            "api_auth": "set" if settings.api_auth else None, "data_dir": str(settings.data_dir),
            "ckpt_dir": str(api.services.registry.checkpoints_dir), "device": settings.device}


@route("/progress")
async def progress(api: A1111Api, request: Request):
    """The running job: progress, ETA, steps, queue length, the live preview (base64 PNG)."""
    job_queue = api.services.queue
    running = job_queue.running
    current = running.progress if running is not None else None
    fraction = current.fraction if current else 0.0
    eta = 0.0
    if current and current.started and 0 < fraction < 1:
        elapsed = time.monotonic() - current.started
        eta = elapsed / fraction - elapsed
    image = None
    if current and current.preview is not None and request.query_params.get("skip_current_image") != "true":
        buffer = io.BytesIO()
        current.preview.save(buffer, format="PNG")
        image = base64.b64encode(buffer.getvalue()).decode()
    return {"progress": round(fraction, 4), "eta_relative": round(eta, 3),
            "state": {"skipped": False, "interrupted": False, "job": "studio" if current else "",
                      "job_count": (1 if running else 0) + job_queue.waiting_count(), "job_timestamp": "0",
                      "job_no": 0,
                      "sampling_step": current.step if current else 0,
                      "sampling_steps": current.total_steps if current else 0},
            "current_image": image, "textinfo": current.message if current else None}


@route("/interrupt", ("POST",))
async def interrupt(api: A1111Api, request: Request):
    """Stop the running job after its current step (it keeps the images it finished)."""
    stop_running(api)
    return None


@route("/skip", ("POST",))
async def skip(api: A1111Api, request: Request):
    """As interrupt: the studio stops the running job (A1111 skips to the next image of the batch)."""
    stop_running(api)
    return None


def stop_running(api: A1111Api) -> None:
    """The queue's running job (in farm mode it runs on a worker, which the queue reaches), else the runner's."""
    running = api.services.queue.running
    if running is not None:
        try:
            api.services.queue.cancel(running.id)
            return
        except StudioError:  # it finished meanwhile
            pass
    api.services.runner.cancel()


@route("/png-info", ("POST",))
async def png_info(api: A1111Api, request: Request):
    """The generation parameters a PNG carries (A1111's or this studio's)."""
    body = await api.body(request)
    image = decode_image(body.get("image"), "image")
    text, _studio = read_parameters(image)
    items = {k: v for k, v in png_text(image).items() if k != "parameters"}
    parameters = {k: v for k, v in parse_infotext(text).items() if k != "extra"} if text else {}
    return {"info": text or "", "items": items, "parameters": parameters}


@route("/refresh-checkpoints", ("POST",))
async def refresh_checkpoints(api: A1111Api, request: Request):
    """The studio scans the models folder on every call; nothing to do."""
    return None


@route("/memory")
async def memory(api: A1111Api, request: Request):
    """RAM (and CUDA memory where there is a GPU)."""
    import torch

    ram = {"free": available_ram_bytes(), "total": 0, "used": 0}
    try:
        import os

        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        ram.update(total=total, used=total - ram["free"])
    except (ValueError, OSError, AttributeError):
        pass
    cuda = {"error": "no CUDA device"}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        cuda = {"system": {"free": free, "used": total - free, "total": total}}
    return {"ram": ram, "cuda": cuda}


@route("/server-version")
async def server_version(api: A1111Api, request: Request):
    """Which server answers."""
    return {"version": f"studio {__version__}"}


def build_routes(services) -> list:
    """The A1111 routes bound to one studio."""
    return bind(ROUTES, A1111Api(services), PREFIX)
