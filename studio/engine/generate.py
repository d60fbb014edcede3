"""One pipeline call loop shared by every mode: request + pipeline + seeds + step callback -> images.

A mode contributes only what differs (its pipeline kwargs and a finishing step), the way every
diffusers scheduler offers the same set_timesteps/step interface: the loop never branches on mode.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from studio.engine.devices import cpu_generator


@dataclass(frozen=True)
class StepInfo:
    """Progress of one sampling step, for the progress bar and live previews."""

    batch_index: int
    batch_count: int
    step: int
    total_steps: int
    latents: torch.Tensor | None

    @property
    def fraction(self) -> float:
        done = self.batch_index * self.total_steps + self.step
        return min(1.0, done / max(1, self.batch_count * self.total_steps))


class CancelToken:
    """Set by the Interrupt button; checked between steps."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class CallPlan:
    """What a request's pipeline calls take (the same for every batch) and what its finish step needs."""

    kwargs: dict
    state: Any = None  # the mode's own working data (an inpaint's crop box and soft mask), for finish()


class Mode:
    """A generation mode: what it adds to the shared loop. Every hook has a default, so nothing probes for them.

    1. resolve: make the request concrete before it is recorded (sizes, control maps); may use the device
    2. components: extra pipeline parts (ControlNets) loaded through the model manager
    3. plan: the pipeline kwargs for this request, computed once for all its batches
    4. finish: what happens to the pipeline's images (compositing over the original)
    5. infotext_pairs: the mode's own A1111 infotext keys
    """

    name: str = "txt2img"

    def pipeline_mode(self, request) -> str:
        return "txt2img"

    def resolve(self, request, env):
        return request

    def components(self, request, models) -> dict:
        return {}

    def plan(self, request, pipe) -> CallPlan:
        return CallPlan({"width": request.width, "height": request.height})

    def finish(self, images: list[Image.Image], request, plan: CallPlan) -> list[Image.Image]:
        return images

    def infotext_pairs(self, request) -> dict:
        return {}


class Txt2Img(Mode):
    name = "txt2img"


MODES: dict[str, Mode] = {"txt2img": Txt2Img()}


def register_mode(mode: Mode) -> Mode:
    MODES[mode.name] = mode
    return mode


@dataclass
class Outcome:
    images: list[Image.Image]
    seeds: list[int]
    cancelled: bool


@dataclass
class HiresTools:
    """What a Hires. fix second pass needs besides the first pass's pipeline."""

    pipe: Any  # the img2img pipeline sharing the model's weights
    upscalers: Any  # engine.upscalers.UpscalerRegistry
    device: Any = "cpu"


def run(pipe, request, mode: Mode, *, on_step: Callable[[StepInfo], None] | None = None,
        cancel: CancelToken | None = None, prompt: str | None = None, hires: HiresTools | None = None) -> Outcome:
    """Run every batch of a request; stops between steps when cancelled, keeping finished images.

    prompt: the text the encoder sees, when it differs from the request's (LoRA tags removed).
    hires: with request.enable_hr, each batch's first pass is upscaled and repainted (engine/hires.py).
    """
    from studio.engine import hires as hires_fix

    seeds = request.seeds()
    plan = mode.plan(request, pipe)
    text = request.prompt if prompt is None else prompt
    two_passes = bool(getattr(request, "enable_hr", False)) and hires is not None
    second_steps = int(request.hires_steps() * request.hr_denoise_strength) if two_passes else 0
    images: list[Image.Image] = []
    used_seeds: list[int] = []
    cancelled = False
    for batch in range(request.batch_count):
        batch_seeds = seeds[batch * request.batch_size:(batch + 1) * request.batch_size]
        if hasattr(pipe.scheduler, "noise_sampler_seed"):
            # DPM++ SDE draws Brownian noise from its own seed, random unless set: tie it to ours
            pipe.scheduler.noise_sampler_seed = batch_seeds[0]

        def step_end(pipeline, step, _timestep, tensors, batch=batch, offset=0):
            nonlocal cancelled
            if cancel is not None and cancel.cancelled:
                cancelled = True
                pipeline._interrupt = True  # diffusers skips the remaining steps and decodes
            if on_step is not None:
                total = (request.steps + second_steps if two_passes else
                         getattr(pipeline, "_num_timesteps", None) or request.steps)
                on_step(StepInfo(batch, request.batch_count, offset + step + 1, total, tensors.get("latents")))
            return tensors

        result = pipe(
            prompt=text,
            negative_prompt=request.negative_prompt or None,
            num_inference_steps=request.steps,
            guidance_scale=request.cfg_scale,
            num_images_per_prompt=len(batch_seeds),
            generator=[cpu_generator(seed) for seed in batch_seeds],
            callback_on_step_end=step_end,
            callback_on_step_end_tensor_inputs=["latents"],
            output_type="latent" if two_passes else "pil",
            **plan.kwargs,
        )
        batch_images = list(result.images)
        if two_passes:
            if cancelled or (cancel is not None and cancel.cancelled):
                batch_images = hires_fix.decode(pipe, result.images)  # interrupted: the first pass is what there is
            else:
                if hasattr(hires.pipe.scheduler, "noise_sampler_seed"):
                    hires.pipe.scheduler.noise_sampler_seed = batch_seeds[0]
                image = hires_fix.second_pass_input(pipe, result.images, request, hires.upscalers, hires.device)
                batch_images = hires_fix.run_second_pass(
                    hires.pipe, image, request, text, batch_seeds,
                    lambda p, i, t, tensors, batch=batch: step_end(p, i, t, tensors, batch, request.steps))
        images.extend(mode.finish(batch_images, request, plan))
        used_seeds.extend(batch_seeds)
        if cancelled or (cancel is not None and cancel.cancelled):
            cancelled = True
            break
    return Outcome(images, used_seeds, cancelled)
