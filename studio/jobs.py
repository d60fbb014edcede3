"""JobRunner: the single path every run takes, from a request to recorded output files.

1. validate and resolve the request (model, size, seed); bad input fails before anything is written
2. store input blobs and insert the history row as `running`, in one transaction
3. ask the ModelManager for the mode's pipeline (shared weights) with a fresh scheduler
4. run the mode through engine.generate with a step callback (progress, previews, cancel)
5. write outputs atomically as PNGs carrying their parameters, then mark the row `done`
6. on any error mark the row `failed` with the message; Interrupt marks it `interrupted`
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from studio import (
    __version__,
    plots,  # registers the X/Y/Z plot request
)
from studio.engine import control, generate, inpainting, loras  # noqa: F401  (they register their modes)
from studio.engine.control import Preprocessors, ResolveEnv
from studio.engine.generate import CancelToken, StepInfo
from studio.engine.models import ModelManager, out_of_memory
from studio.engine.previews import Previewer
from studio.engine.schedulers import SAMPLER_NAMES, describe_scheduler, make_scheduler, supports_karras
from studio.errors import InputError, ModelError, StudioError
from studio.history.store import HistoryStore, ImageRef
from studio.infotext import format_infotext, parse_infotext, read_parameters
from studio.requests import (
    REQUEST_TYPES,
    Txt2ImgRequest,
    UpscaleRequest,
    check_text,
    from_record,
    resolve_seed,
    to_record,
    validate,
)
from studio.settings import Settings
from studio.styles import StyleBook


@dataclass(frozen=True)
class Progress:
    """What the UI shows while a run is going."""

    fraction: float
    message: str
    preview: Image.Image | None = None
    step: int = 0  # sampling step of the current image batch, of total_steps
    total_steps: int = 0
    started: float = 0.0  # time.monotonic() when the run began sampling (for an ETA)


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    request: Any
    seeds: list[int]
    images: list[Image.Image]
    outputs: list[ImageRef]
    infotexts: list[str]
    duration_s: float
    notices: tuple[str, ...] = ()


class DeviceLock:
    """One device, one job at a time, whether the UI, the API or the CLI asked; it knows its holder.

    With a path, the lock also holds an flock on that file, so a CLI job in another process on the
    same data folder waits for the server's run instead of sharing the GPU with it.
    """

    def __init__(self, path: Path | None = None):
        self._lock = threading.Lock()
        self._holder: int | None = None
        self._path = path
        self._file = None

    def __enter__(self) -> DeviceLock:
        self._lock.acquire()
        try:
            if self._path is not None:
                import fcntl

                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self._path, "a+b")
                fcntl.flock(self._file, fcntl.LOCK_EX)
        except BaseException:
            self._close_file()
            self._lock.release()
            raise
        self._holder = threading.get_ident()
        return self

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None

    def __exit__(self, *exc) -> None:
        self._holder = None
        self._close_file()
        self._lock.release()

    def held_by_current_thread(self) -> bool:
        return self._holder == threading.get_ident()


def hires_from_infotext(parsed: dict) -> dict:
    """The Hires. fix fields of an A1111 infotext (its denoising strength is the second pass's)."""
    extra = parsed.get("extra", {})
    if not any(key in extra for key in ("Hires upscale", "Hires resize", "Hires upscaler")):
        return {}
    values: dict = {"enable_hr": True}
    try:
        if "Hires upscale" in extra:
            values["hr_scale"] = float(extra["Hires upscale"])
        if "Hires resize" in extra and "x" in extra["Hires resize"]:
            width, height = extra["Hires resize"].split("x", 1)
            values["hr_resize_x"], values["hr_resize_y"] = int(width), int(height)
        if "Hires steps" in extra:
            values["hr_second_pass_steps"] = int(extra["Hires steps"])
    except ValueError:
        return {}
    if extra.get("Hires upscaler"):
        values["hr_upscaler"] = extra["Hires upscaler"]
    if "denoise_strength" in parsed:
        values["hr_denoise_strength"] = parsed["denoise_strength"]
    return values


def _quote_value(text: str) -> str:
    return json.dumps(text) if any(c in text for c in ',:"') else text


def _ignore(progress: Progress) -> None:
    """The progress callback of a run nobody watches."""


def library_versions() -> dict:
    import diffusers
    import torch
    import transformers

    return {"studio": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__}


class JobRunner:
    def __init__(self, models: ModelManager, history: HistoryStore, settings: Settings,
                 preprocessors: Preprocessors | None = None):
        self.models = models
        self.history = history
        self.settings = settings
        self.preprocessors = preprocessors or Preprocessors(settings.annotators_dir, settings.offline,
                                                            models.placement.device, settings.pose_detector)
        self.device_lock = DeviceLock(settings.data_dir / "device.lock")
        self.styles = StyleBook.in_data_dir(settings.data_dir)
        self._current: CancelToken | None = None
        self._versions: dict | None = None

    # -- the path of a run -----------------------------------------------------------------

    def prepare(self, request, notices: list[str] | None = None):
        """Validate and make concrete (model, size, seed, mask, control maps): what will run and be recorded.

        Making a request concrete may run preprocessors on the device, so it waits for the device.
        """
        validate(request)  # a bad value is refused at once, not after the current run
        with self.device_lock:
            return self._prepare(request, notices)

    def _prepare(self, request, notices: list[str] | None = None):
        validate(request)
        entry = self.models.registry.resolve(request.model)
        request = dataclasses.replace(request, model=entry.name)
        native = self.models.native_size(entry)
        mode = generate.MODES[request.mode]
        env = ResolveEnv(native, notices if notices is not None else [], self.preprocessors, self.models)
        request = mode.resolve(request, env)
        if request.width is None or request.height is None:
            request = dataclasses.replace(request, width=request.width or native, height=request.height or native)
        request = resolve_seed(request)
        request = self.apply_styles(request)
        self.lora_uses(request)  # an unknown or unusable LoRA is refused before anything runs
        pixels = request.width * request.height
        if pixels > self.settings.max_pixels:
            raise InputError(f"{request.width}x{request.height} is {pixels:,} pixels, over the limit of "
                             f"{self.settings.max_pixels:,} (STUDIO_MAX_PIXELS); use a smaller size", field="width")
        if getattr(request, "enable_hr", False):
            self._check_hires(request)
        if request.sampler and request.karras and not supports_karras(request.sampler):
            request = dataclasses.replace(request, karras=False)
        return request

    def _check_hires(self, request) -> None:
        upscalers = self.models.registry.upscalers
        if request.hr_upscaler not in upscalers.names():
            raise InputError(f"{request.hr_upscaler!r} is not an upscaler here; pick one of: "
                             f"{', '.join(upscalers.names())}", field="hr_upscaler")
        width, height = request.hires_size()
        if width * height > self.settings.max_pixels:
            raise InputError(f"Hires. fix to {width}x{height} is {width * height:,} pixels, over the limit of "
                             f"{self.settings.max_pixels:,} (STUDIO_MAX_PIXELS); lower Upscale by", field="hr_scale")

    def apply_styles(self, request):
        """Styles put into the prompts (A1111: {prompt} placeholder, else appended), so the record holds the text
        that ran and a re-run repeats it even after styles.csv changes; the names stay in applied_styles."""
        if not request.styles:
            return request
        prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, request.styles)
        return dataclasses.replace(request, prompt=check_text(prompt, "prompt"),
                                   negative_prompt=check_text(negative, "negative_prompt"), styles=(),
                                   applied_styles=tuple(request.applied_styles) + tuple(request.styles))

    def lora_uses(self, request) -> list[loras.LoraUse]:
        """The LoRA files the prompt's <lora:name:weight> tags name, with their weights and hashes."""
        _, tags = loras.parse_tags(request.prompt)
        return self.models.registry.loras.resolve(tags)

    def cancel(self) -> bool:
        """Interrupt the run in progress (if any) after its current step."""
        token = self._current
        if token is not None:
            token.cancel()
        return token is not None

    def run(self, request, on_progress: Callable[[Progress], None] | None = None,
            cancel: CancelToken | None = None, rerun_of: int | None = None, source: str = "ui",
            queued_at: float | None = None, job: dict | None = None) -> RunResult:
        """Run a request on the device (waiting for it when another job has it) and record it.

        job: farm mode's columns of the row ({job_key, worker}); the key makes a redelivered job find its row.
        """
        notices: list[str] = []
        validate(request)  # a bad value is refused at once, not after the current run
        if request.mode == UpscaleRequest.mode:
            return self._run_upscale(request, on_progress or _ignore, rerun_of, source, queued_at, job)
        if request.mode == plots.PlotRequest.mode:  # every cell is a run of its own; the device is taken per cell
            return plots.run_plot(self, request, on_progress or _ignore, cancel or CancelToken(), rerun_of, source,
                                  queued_at, job)
        if rerun_of is not None:  # a re-run needs the LoRA files its run used, unchanged
            self.models.registry.loras.check_recorded(self.history.get(rerun_of).loras, rerun_of)
        cancel = cancel or CancelToken()
        with self.device_lock:
            request = self._prepare(request, notices)
            mode = generate.MODES[request.mode]
            params, inputs = to_record(request)
            if request.parent_run_id is None and inputs:
                parent = self._parent_of(inputs)
                if parent is not None:
                    request = dataclasses.replace(request, parent_run_id=parent)
                    params["parent_run_id"] = parent
            self._current = cancel
            try:
                # previews cost a decode every few steps: only made when a caller watches the progress
                row = {"source": source, "queued_at": None if queued_at is None else
                       datetime.fromtimestamp(queued_at, timezone.utc), **(job or {})}
                result = self._run_locked(request, mode, params, inputs, on_progress or _ignore, cancel,
                                          rerun_of, row, watching=on_progress is not None)
                return dataclasses.replace(result, notices=tuple(notices))
            finally:
                self._current = None

    def _run_upscale(self, request, on_progress, rerun_of, source, queued_at, job: dict | None = None) -> RunResult:
        """A1111's Extras upscale as a run: the source image in, the upscaled one out, the source's run as parent."""
        from studio.engine.upscalers import upscale_image

        upscalers = self.models.registry.upscalers
        name = request.upscaler
        if name not in upscalers.names() or upscalers.is_latent(name):
            choices = [n for n in upscalers.names() if not upscalers.is_latent(n)]
            raise InputError(f"{name!r} is not an image upscaler here; pick one of: {', '.join(choices)}",
                             field="upscaler")
        started = time.perf_counter()
        with self.device_lock:
            params, inputs = to_record(request)
            parent = request.parent_run_id or self._parent_of(inputs)
            params["parent_run_id"] = parent
            request = dataclasses.replace(request, parent_run_id=parent)
            width, height = round(request.image.width * request.scale), round(request.image.height * request.scale)
            path = upscalers.model_files().get(name)
            if self._versions is None:
                self._versions = library_versions()
            row = dict(mode=request.mode, model_name=name, model_hash=self.models.registry.hashes.sha256(path) if path
                       else "", vae=None, sampler="", karras=False, scheduler={}, prompt="", negative_prompt="", seed=0,
                       seeds=[0], steps=0, cfg_scale=0.0, width=width, height=height, batch_size=1, batch_count=1,
                       params=params, device=self.models.placement.description, dtype="float32",
                       versions=self._versions, parent_id=parent, rerun_of=rerun_of, source=source,
                       queued_at=None if queued_at is None else datetime.fromtimestamp(queued_at, timezone.utc),
                       **(job or {}))
            run_id = self.history.start(row, inputs)
            on_progress(Progress(0.05, f"upscaling {request.image.width}x{request.image.height} x {request.scale:g} "
                                       f"with {name}"))
            try:
                try:
                    image = upscale_image(request.image.convert("RGB"), name, request.scale, upscalers,
                                          device=self.models.placement.device)
                except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
                    if not out_of_memory(error):
                        raise
                    self.models.release_memory()
                    raise ModelError(f"the device ran out of memory upscaling to {width}x{height}; use a smaller "
                                     "factor", field="scale") from error
                text = f"Postprocess upscale by: {request.scale:g}, Postprocess upscaler: {_quote_value(name)}"
                if parent is not None:
                    text += f", Source run: {parent}"
                elapsed = time.perf_counter() - started
                refs = self.history.finish(run_id, [(image, 0, text, params)], duration_s=elapsed,
                                           timings={"upscale_s": round(elapsed, 4)})
            except BaseException as error:
                message = str(error) if isinstance(error, StudioError) else f"{type(error).__name__}: {error}"
                self.history.fail(run_id, message, time.perf_counter() - started)
                raise
        on_progress(Progress(1.0, "done"))
        return RunResult(run_id, "done", request, [0], [image], refs, [text], time.perf_counter() - started)

    def start_plot_row(self, plot, rerun_of: int | None, source: str, queued_at: float | None, cells: int,
                       job: dict | None = None) -> int:
        """The grid's history row, `running` until its cells are done: they name it as their parent.

        In farm mode it carries the job's key (its cells do not: a redelivered plot finds the grid by the key and
        the cells as its children)."""
        base = plot.base
        entry = self.models.registry.resolve(base.model)
        if self._versions is None:
            self._versions = library_versions()
        params, inputs = to_record(plot)
        row = dict(mode=plot.mode, model_name=entry.name, model_hash=self.models.registry.model_hash(entry),
                   vae=base.vae, sampler=base.sampler, karras=base.karras, scheduler={}, prompt=base.prompt,
                   negative_prompt=base.negative_prompt, seed=base.seed, seeds=[base.seed], steps=base.steps,
                   cfg_scale=base.cfg_scale, width=base.width, height=base.height, batch_size=1, batch_count=cells,
                   params=params, device=self.models.placement.description, dtype=self.models.placement.dtype_name,
                   versions=self._versions, parent_id=base.parent_run_id, rerun_of=rerun_of, source=source,
                   queued_at=None if queued_at is None else datetime.fromtimestamp(queued_at, timezone.utc),
                   **(job or {}))
        return self.history.start(row, inputs)

    def plot_infotext(self, plot, axes: dict) -> str:
        """The grid's parameters: the base run's A1111 pairs, then the plot's (X Type, X Values...)."""
        base = plot.base
        pairs = {"Steps": base.steps, "Sampler": base.sampler, "Schedule type": "Karras" if base.karras else
                 "Automatic", "CFG scale": f"{base.cfg_scale:g}", "Seed": base.seed,
                 "Size": f"{base.width}x{base.height}", "Model": base.model, **axes,
                 "Version": f"studio {__version__}"}
        return format_infotext(base.prompt, base.negative_prompt, pairs)

    def _parent_of(self, inputs: dict) -> int | None:
        """The run whose output this run starts from: the edited image first, then any other input."""
        names = sorted(inputs, key=lambda name: (name not in ("image", "init_image"), name))
        for name in names:
            parent = self.history.run_with_output(inputs[name])
            if parent is not None:
                return parent
        return None

    def _run_locked(self, request, mode, params, inputs, on_progress, cancel, rerun_of, extra_row: dict,
                    watching: bool) -> RunResult:
        started = time.perf_counter()
        model = self.models.load(request.model)
        load_s = time.perf_counter() - started
        components = mode.components(request, self.models)
        pipe = self.models.pipeline(mode.pipeline_mode(request), request.model, request.vae, **components)
        pipe.scheduler = make_scheduler(request.sampler, request.karras, dict(pipe.scheduler.config))
        hires = None
        if getattr(request, "enable_hr", False):
            second = self.models.pipeline("img2img", request.model, request.vae)
            second.scheduler = make_scheduler(request.sampler, request.karras, dict(second.scheduler.config))
            self._vae_tiling(second, request, *request.hires_size())
            hires = generate.HiresTools(second, self.models.registry.upscalers, self.models.placement.device)
        self._vae_tiling(pipe, request)
        uses = self.lora_uses(request)
        row = {**self._row(request, model, pipe, params, rerun_of), **extra_row,
               "loras": [use.record() for use in uses] or None}
        run_id = self.history.start(row, inputs)
        with self.history.heartbeat(run_id):
            return self._generate(run_id, request, mode, pipe, model, on_progress, cancel, started, load_s, watching,
                                  uses, hires)

    def _generate(self, run_id, request, mode, pipe, model, on_progress, cancel, started, load_s,
                  watching: bool, uses: list, hires=None) -> RunResult:
        try:
            every = self.settings.preview_every
            previews = Previewer(pipe, model.family) if watching and every else None

            def on_step(info: StepInfo) -> None:
                preview = None
                if previews and info.latents is not None and (info.step % every == 0 or info.step == info.total_steps):
                    preview = previews(info.latents)
                on_progress(Progress(info.fraction, f"image batch {info.batch_index + 1}/{info.batch_count}, "
                                                    f"step {info.step}/{info.total_steps}", preview, info.step,
                                     info.total_steps, sample_clock))

            sample_started = time.perf_counter()
            sample_clock = time.monotonic()
            try:
                with loras.applied(pipe, uses):
                    # the encoder sees the prompt without its LoRA tags, as in A1111
                    outcome = generate.run(pipe, request, mode, on_step=on_step, cancel=cancel,
                                           prompt=loras.parse_tags(request.prompt)[0], hires=hires)
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
                if not out_of_memory(error):
                    raise
                self.models.release_memory()
                raise ModelError(f"the device ran out of memory at {request.width}x{request.height} with batch "
                                 f"size {request.batch_size}; use a smaller size or batch, or lower "
                                 "STUDIO_MAX_PIXELS", field="width") from error
            sample_s = time.perf_counter() - sample_started
            infotexts = [self.infotext(request, model, seed, uses) for seed in outcome.seeds]
            outputs = [(image, seed, text, self._image_request_json(request, seed))
                       for image, seed, text in zip(outcome.images, outcome.seeds, infotexts)]
            status = "interrupted" if outcome.cancelled else "done"
            duration = time.perf_counter() - started
            refs = self.history.finish(
                run_id, outputs, status=status, duration_s=duration,
                timings={"load_s": round(load_s, 4), "sample_s": round(sample_s, 4),
                         "per_image_s": round(sample_s / max(1, len(outcome.images)), 4)},
                error="interrupted by the user" if outcome.cancelled else None)
        except BaseException as error:
            message = str(error) if isinstance(error, StudioError) else f"{type(error).__name__}: {error}"
            self.history.fail(run_id, message, time.perf_counter() - started)
            raise
        on_progress(Progress(1.0, "interrupted" if outcome.cancelled else "done"))
        return RunResult(run_id, status, request, outcome.seeds, outcome.images, refs, infotexts,
                         time.perf_counter() - started)

    def _vae_tiling(self, pipe, request, width: int | None = None, height: int | None = None) -> None:
        # Large canvases decode tile by tile so memory stays bounded instead of running out.
        if (width or request.width) * (height or request.height) > self.settings.vae_tiling_pixels:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()

    def _row(self, request, model, pipe, params: dict, rerun_of: int | None) -> dict:
        if self._versions is None:
            self._versions = library_versions()
        return dict(
            mode=request.mode, model_name=model.entry.name, model_hash=model.model_hash, vae=request.vae,
            sampler=request.sampler, karras=request.karras, scheduler=describe_scheduler(pipe.scheduler),
            prompt=request.prompt, negative_prompt=request.negative_prompt, seed=request.seed,
            seeds=request.seeds(), steps=request.steps, cfg_scale=request.cfg_scale, width=request.width,
            height=request.height, batch_size=request.batch_size, batch_count=request.batch_count,
            params=params, device=self.models.placement.description, dtype=self.models.placement.dtype_name,
            versions=self._versions, parent_id=request.parent_run_id, rerun_of=rerun_of,
        )

    # -- parameters in and out of PNGs ------------------------------------------------------

    def infotext(self, request, model, seed: int, uses: list | None = None) -> str:
        """The A1111 `parameters` text of one output image."""
        pairs = {
            "Steps": request.steps,
            "Sampler": request.sampler,
            "Schedule type": "Karras" if request.karras else "Automatic",
            "CFG scale": f"{request.cfg_scale:g}",
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model hash": model.model_hash[:10],
            "Model": model.entry.name,
            "VAE": request.vae,
        }
        pairs.update(generate.MODES[request.mode].infotext_pairs(request))
        if getattr(request, "enable_hr", False):
            pairs["Denoising strength"] = f"{request.hr_denoise_strength:g}"
            if request.hr_resize_x or request.hr_resize_y:
                pairs["Hires resize"] = "{}x{}".format(*request.hires_size())
            else:
                pairs["Hires upscale"] = f"{request.hr_scale:g}"
            if request.hr_second_pass_steps:
                pairs["Hires steps"] = request.hr_second_pass_steps
            pairs["Hires upscaler"] = request.hr_upscaler
        if uses:
            pairs["Lora hashes"] = ", ".join(f"{use.name}: {use.short_hash}" for use in uses)
        pairs["Version"] = f"studio {__version__}"
        return format_infotext(request.prompt, request.negative_prompt, pairs)

    @staticmethod
    def _image_request_json(request, seed: int) -> dict:
        """The request that reproduces exactly this one image (its own seed, batch of one)."""
        params, _ = to_record(dataclasses.replace(request, seed=seed, batch_size=1, batch_count=1))
        return params

    def request_from_png(self, image: Image.Image):
        """Parameters of a PNG made by this studio (exact) or by A1111 (its infotext) as a request."""
        text, studio_params = read_parameters(image)
        if studio_params and studio_params.get("mode") in REQUEST_TYPES:
            try:
                return validate(from_record(studio_params, {}))
            except InputError as error:
                raise InputError(f"the parameters in this PNG are not usable ({error})", field="png") from error
            except (TypeError, ValueError, AttributeError, KeyError) as error:
                raise InputError("the parameters in this PNG are damaged or from an unknown version; use a PNG "
                                 "this studio or A1111 wrote", field="png") from error
        if not text:
            raise InputError("this image carries no generation parameters (no PNG 'parameters' text)",
                             field="png")
        parsed = parse_infotext(text)
        parsed["prompt"] = loras.restore_tags(parsed["prompt"], parsed["extra"].get("Lora hashes"),
                                              self.models.registry.loras)
        fields = {f.name for f in dataclasses.fields(Txt2ImgRequest)}
        values = {k: v for k, v in parsed.items() if k in fields}
        values.update(hires_from_infotext(parsed))
        if values.get("model") and values["model"] not in self.models.registry.entries():
            values["model"] = self._model_by_hash(parsed.get("model_hash"))
        if values.get("sampler") and values["sampler"] not in SAMPLER_NAMES:
            values["sampler"] = Txt2ImgRequest.sampler
        try:
            return validate(Txt2ImgRequest(**values))
        except InputError as error:
            raise InputError(f"the parameters in this PNG are not usable ({error})", field="png") from error

    def _model_by_hash(self, short_hash: str | None) -> str | None:
        if not short_hash:
            return None
        for entry in self.models.registry.entries().values():
            try:
                if self.models.registry.model_hash(entry).startswith(short_hash.lower()):
                    return entry.name
            except StudioError:
                continue
        return None

    # -- history actions --------------------------------------------------------------------

    def restore(self, run_id: int):
        """The exact request of a past run, inputs included: what Restore puts back in its tab."""
        record = self.history.get(run_id)
        return from_record(record.params, self.history.load_inputs(record))

    def rerun(self, run_id: int, on_progress=None, cancel=None, source: str = "ui") -> RunResult:
        """Run a past request again: same seeds, same settings, recorded as a re-run of it."""
        return self.run(self.restore(run_id), on_progress, cancel, rerun_of=run_id, source=source)
