"""Train the embedded model from scratch: VAE, then UNet + text encoder, then two ControlNets.

    python -m studio.micro.train --phase all --out runs/embedded --device cuda \\
        --minutes-vae 1 --minutes-unet 5 --minutes-pose 1 --minutes-depth 1 --total-minutes 9

Phases (`--phase`): vae, unet, controlnet-pose, controlnet-depth, or all (in that order,
then export). Every phase renders its training scenes from `studio.micro.world` (seeds
below EVAL_SEED_OFFSET; the evaluation uses seeds above it) in worker processes, in the
background, while earlier phases train. Everything a late phase needs is checked before
the first step (a preflight that runs one step of every requested phase on the device and
exports and reloads an untrained model), checkpoints are atomic, and each phase exports
what it finished, so a run killed at a time limit still leaves usable models.

Reproducible: every random draw of step N (which scenes, captions, caption drops, crops,
timesteps, noise) comes from a generator seeded by (seed, phase, N), so `--resume`
continues bit-for-bit on the CPU once the phase's scene pool is complete. On CUDA the
kernels themselves are not bit-exact.

Imports only torch, numpy, PIL, diffusers, transformers, safetensors, tqdm, cv2 and
studio.micro / studio.engine.openpose (the world's pose maps need controlnet_aux).
"""

from __future__ import annotations

import argparse
import collections
import copy
import csv
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# The fast tokenizer's thread pool does not survive fork; the render workers fork.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import torch
import torch.nn.functional as F

from studio.micro import export as exporting
from studio.micro.architecture import (
    CLIP_MAX_LENGTH,
    IMAGE_SIZE,
    Architecture,
    build_controlnet,
    build_text_encoder,
    build_unet,
    build_vae,
    noise_scheduler_config,
)

PHASES = ("vae", "unet", "controlnet-pose", "controlnet-depth")
CONTROL_KINDS = {"controlnet-pose": "pose", "controlnet-depth": "depth"}
EVAL_SEED_OFFSET = 10_000_000  # scene seeds >= this are held out for studio.micro.eval
# Each phase draws its scenes from its own block of seeds below the offset.
SEED_BLOCKS = {"vae": 0, "unet": 2_000_000, "controlnet-pose": 4_000_000, "controlnet-depth": 7_000_000}
SEED_BLOCK_SIZE = 2_000_000
CAPTIONS_PER_SCENE = 4
MIN_SNR_GAMMA = 5.0
VAE_KL_WEIGHT = 1e-6
SCALING_SAMPLES = {"cuda": 4096, "cpu": 512}  # images whose latents set the VAE scaling factor
GRAD_CLIP = 1.0
LOSS_WINDOW = 5  # log intervals in the reported moving average of the loss
TRAINING_SEED_LIMIT = EVAL_SEED_OFFSET


@dataclass(frozen=True)
class PhaseSettings:
    """How one phase trains on one kind of device; defaults in PHASE_DEFAULTS, overridable by flags."""

    batch: int
    lr: float
    warmup: int
    pool: int  # scenes rendered for this phase
    checkpoint_every: int  # steps
    caption_dropout: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA
    crop: int = IMAGE_SIZE  # vae phase: train on random crops of this size
    noise_offset: float = 0.0


# At these sizes a GPU step is bound by the host dispatching ~2-4k kernels (~20-30 ms for
# the UNet, measured as the CPU-side time of the same step with near-zero channels), not
# by arithmetic (a batch of 512 is ~1.3 TFLOP, a few ms on an H100/H200), so big batches
# cost about nothing there. The CPU is bound by arithmetic (~25-30 UNet samples/s on two
# cores), so its batches are small and its VAE trains on 64 px crops (4x cheaper; the VAE
# is convolutional and its reconstructions carry over to full 128 px images).
_UNET = dict(caption_dropout=0.1, ema_decay=0.999, noise_offset=0.05)
_CONTROLNET = dict(caption_dropout=0.3, ema_decay=0.995, noise_offset=0.05)
PHASE_DEFAULTS = {
    ("vae", "cuda"): PhaseSettings(batch=64, lr=5e-4, warmup=100, pool=32_768, checkpoint_every=1000),
    ("vae", "cpu"): PhaseSettings(batch=8, lr=5e-4, warmup=50, pool=1024, checkpoint_every=200, crop=64),
    ("unet", "cuda"): PhaseSettings(batch=512, lr=5e-4, warmup=500, pool=200_000, checkpoint_every=2000, **_UNET),
    ("unet", "cpu"): PhaseSettings(batch=16, lr=2e-4, warmup=200, pool=4096, checkpoint_every=250, **_UNET),
    ("controlnet", "cuda"): PhaseSettings(
        batch=256, lr=2e-4, warmup=200, pool=50_000, checkpoint_every=1000, **_CONTROLNET
    ),
    ("controlnet", "cpu"): PhaseSettings(batch=8, lr=1e-4, warmup=50, pool=1024, checkpoint_every=200, **_CONTROLNET),
}


def phase_settings(phase: str, device_type: str) -> PhaseSettings:
    family = "controlnet" if phase.startswith("controlnet") else phase
    return PHASE_DEFAULTS[(family, "cuda" if device_type == "cuda" else "cpu")]


@dataclass
class RunOptions:
    """Everything one invocation was asked to do (from the command line)."""

    phases: tuple[str, ...]
    out: Path
    device: str
    minutes: dict[str, float | None]
    total_minutes: float | None
    steps: int | None
    batch: int | None
    pool: int | None
    lr: float | None
    checkpoint_every: int | None
    resume: bool
    seed: int
    workers: int
    arch: str
    export: bool
    export_dest: Path
    tokenizer: Path
    log_every: int | None
    check_only: bool
    command: str
    world_module: str = "studio.micro.world"
    init_from: Path | None = None  # an exported model folder (micro-sd) to start from instead of scratch


# ---------------------------------------------------------------------------- scenes


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer, texts: list[str]) -> np.ndarray:
    """CLIP ids padded to 77 like SD's pipelines do (no attention mask is used)."""
    ids = tokenizer(
        texts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True, return_tensors="np"
    ).input_ids
    return ids.astype(np.int32)


class SceneRenderer:
    """Renders chunks of training scenes: images, control maps and tokenised captions."""

    def __init__(self, world, tokenizer):
        self.world, self.tokenizer = world, tokenizer

    def wanted(self, phase: str, scene) -> bool:
        # Pose maps are black without a figure: a pose ControlNet learns nothing from those.
        return phase != "controlnet-pose" or any(o.shape == "figure" for o in scene.objects)

    def render_scene(self, phase: str, seed: int) -> tuple | None:
        """(image, control map or None, captions) of one seed's scene, or None if the phase skips it."""
        world = self.world
        scene = world.scene_from_seed(seed)
        if not self.wanted(phase, scene):
            return None
        image = np.asarray(world.render_image(scene).convert("RGB"), dtype=np.uint8)
        control = None
        if phase == "controlnet-pose":
            control = np.asarray(world.render_pose(scene).convert("RGB"), dtype=np.uint8)
        elif phase == "controlnet-depth":
            control = np.asarray(world.render_depth(scene).convert("L"), dtype=np.uint8)[..., None]
        captions = []
        if phase != "vae":
            rng = np.random.default_rng([seed, 1])
            captions = [world.caption(scene, rng) for _ in range(CAPTIONS_PER_SCENE)]
        return image, control, captions

    def render(self, phase: str, seeds: range) -> dict:
        images, controls, captions, kept = [], [], [], []
        errors, first_error = 0, None
        for seed in seeds:
            try:
                rendered = self.render_scene(phase, seed)
            except Exception as error:  # one bad scene must not end a long run; counted and reported
                errors, first_error = errors + 1, first_error or f"seed {seed}: {error!r}"
                continue
            if rendered is None:
                continue
            image, control, texts = rendered
            images.append(image)
            if control is not None:
                controls.append(control)
            captions.extend(texts)
            kept.append(seed)
        size = IMAGE_SIZE
        chunk = {
            "errors": errors,
            "error": first_error,
            "seeds": np.array(kept, dtype=np.int64),
            "images": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        }
        if phase in CONTROL_KINDS:
            channels = 3 if phase == "controlnet-pose" else 1
            chunk["controls"] = np.stack(controls) if controls else np.zeros((0, size, size, channels), np.uint8)
        if phase != "vae":
            ids = tokenize(self.tokenizer, captions) if captions else np.zeros((0, CLIP_MAX_LENGTH), np.int32)
            chunk["tokens"] = ids.reshape(len(kept), CAPTIONS_PER_SCENE, CLIP_MAX_LENGTH)
        return chunk


# Each render worker process holds one renderer, built by the pool's initializer (the
# multiprocessing idiom: the world module and tokenizer are not sent with every task).
_worker_renderer: SceneRenderer | None = None


def _init_worker(world_module: str, tokenizer_dir: str) -> None:
    global _worker_renderer
    import importlib

    _worker_renderer = SceneRenderer(importlib.import_module(world_module), load_tokenizer(Path(tokenizer_dir)))


def _render_in_worker(phase: str, start: int, stop: int) -> dict:
    return _worker_renderer.render(phase, range(start, stop))


class RenderQueue:
    """Chunks of scenes rendered in worker processes (or lazily in-process with no workers)."""

    def __init__(self, renderer: SceneRenderer, workers: int, world_module: str, tokenizer_dir: Path):
        self.renderer = renderer
        self.pool = None
        if workers > 0:
            # fork: the workers need no CUDA and start in milliseconds; the queue is made
            # before the parent touches CUDA or runs a torch op (OpenMP does not survive fork).
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self.pool = context.Pool(workers, _init_worker, (world_module, str(tokenizer_dir)))
        self.pending: dict[str, list] = {}

    def submit(self, phase: str, seeds: range, chunk: int) -> None:
        parts = []
        for start in range(seeds.start, seeds.stop, chunk):
            stop = min(start + chunk, seeds.stop)
            if self.pool is None:
                parts.append((phase, start, stop))
            else:
                parts.append(self.pool.apply_async(_render_in_worker, (phase, start, stop)))
        self.pending[phase] = parts

    def finished(self, phase: str, wait_for_one: bool):
        """Yield a phase's finished chunks in submission order; wait for the first if asked."""
        parts = self.pending.get(phase, [])
        waited = not wait_for_one
        while parts:
            head = parts[0]
            if isinstance(head, tuple):  # no workers: render now, in order
                chunk = self.renderer.render(head[0], range(head[1], head[2]))
            elif head.ready() or not waited:
                waited = True
                try:
                    chunk = head.get()
                except Exception as error:  # a worker died on this chunk: lose the chunk, not the run
                    chunk = {"seeds": np.zeros(0, np.int64), "errors": 1, "error": f"render worker: {error!r}"}
            else:
                return
            parts.pop(0)
            yield chunk

    def remaining(self, phase: str) -> int:
        return len(self.pending.get(phase, []))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def scene_seeds(phase: str, seed: int, count: int, figure_share: float = 1.0) -> range:
    """The training seeds of a phase: its own block below the evaluation offset."""
    needed = int(math.ceil(count / max(figure_share, 1e-3)))
    if needed > SEED_BLOCK_SIZE // 2:
        raise ValueError(
            f"--pool {count} for {phase} needs {needed} seeds; at most {SEED_BLOCK_SIZE // 2} fit its block"
        )
    start = SEED_BLOCKS[phase] + (seed % 1000) * 1000
    if start + needed >= TRAINING_SEED_LIMIT:
        raise ValueError("training seeds would reach the held-out evaluation seeds")
    return range(start, start + needed)


# ---------------------------------------------------------------------------- pools on the device


class GrowingTensor:
    """A device tensor that chunks are appended to (capacity doubles, no per-chunk concatenation)."""

    def __init__(self, device, dtype, shape_tail: tuple[int, ...]):
        self.data = torch.empty((0, *shape_tail), device=device, dtype=dtype)
        self.length = 0

    def append(self, values: torch.Tensor) -> None:
        needed = self.length + len(values)
        if needed > len(self.data):
            bigger = torch.empty(
                (max(needed, 2 * len(self.data)), *self.data.shape[1:]), device=self.data.device, dtype=self.data.dtype
            )
            bigger[: self.length] = self.data[: self.length]
            self.data = bigger
        self.data[self.length : needed] = values.to(self.data.device, self.data.dtype)
        self.length = needed

    def __getitem__(self, index):
        return self.data[: self.length][index]


class ScenePool:
    """A phase's training scenes on the device, filled as render chunks arrive.

    Image phases keep uint8 images; latent phases keep the frozen VAE's posterior mean and
    std per scene instead (encoded once, sampled every step like SD's latent_dist.sample()).
    """

    def __init__(self, phase: str, ctx: "RunContext", encoder=None):
        self.phase, self.queue, self.device = phase, ctx.queue, ctx.device
        self.encoder, self.encode_batch, self.mixed_precision = encoder, ctx.encode_batch, ctx.mixed_precision
        self.fields: dict[str, GrowingTensor] = {}
        self.size = 0
        self.errors, self.first_error = 0, None

    def _append(self, name: str, values: torch.Tensor) -> None:
        if name not in self.fields:
            self.fields[name] = GrowingTensor(self.device, values.dtype, tuple(values.shape[1:]))
        self.fields[name].append(values)

    def absorb(self, chunk: dict) -> None:
        if chunk.get("errors"):
            self.errors += chunk["errors"]
            self.first_error = self.first_error or chunk["error"]
        if len(chunk["seeds"]) == 0:
            return
        images = torch.from_numpy(chunk["images"])
        if self.encoder is None:
            self._append("images", images)
        else:
            mean, std = encode_posterior(self.encoder, images, self.device, self.encode_batch, self.mixed_precision)
            self._append("latent_mean", mean)
            self._append("latent_std", std)
        if "tokens" in chunk:
            self._append("tokens", torch.from_numpy(chunk["tokens"]))
        if "controls" in chunk:
            self._append("controls", torch.from_numpy(chunk["controls"]))
        self.size += len(chunk["seeds"])

    def refresh(self, minimum: int = 0) -> int:
        """Absorb finished chunks; wait for more while fewer than `minimum` scenes are in."""
        for chunk in self.queue.finished(self.phase, wait_for_one=False):
            self.absorb(chunk)
        while self.size < minimum and self.queue.remaining(self.phase):
            for chunk in self.queue.finished(self.phase, wait_for_one=True):
                self.absorb(chunk)
        if self.size == 0:
            raise RuntimeError(
                f"no {self.phase} scene could be rendered ({self.errors} failed; first: {self.first_error})"
            )
        return self.size

    @property
    def complete(self) -> bool:
        return self.queue.remaining(self.phase) == 0

    def __getitem__(self, name: str) -> GrowingTensor:
        return self.fields[name]


def images_to_tensor(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], SD's VAE input range."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_posterior(
    vae, images: torch.Tensor, device, batch: int, mixed_precision: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(images), batch):
        x = images_to_tensor(images[start : start + batch], device)
        with autocast(device, mixed_precision):
            posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------------------- training parts


def autocast(device, mixed_precision: bool = True):
    """bf16 autocast on CUDA (unless turned off); plain fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and mixed_precision:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def step_generator(seed: int, phase: str, step: int, device) -> torch.Generator:
    """The one source of randomness of a training step: same (seed, phase, step), same draws."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed((seed * 1_000_003 + PHASES.index(phase) * 1_000_000_007 + step) % (2**63 - 1))
    return generator


class EMA:
    """Exponential moving average of a module's weights, with the usual warm-up of the decay."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay

    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        live = [p.detach() for p in module.parameters()]
        shadow = list(self.module.parameters())
        torch._foreach_lerp_(shadow, live, 1.0 - decay)


class DiffusionNoise:
    """SD's forward process on latents: add noise at timestep t; min-SNR loss weights."""

    def __init__(self, device):
        from diffusers import DDPMScheduler

        config = noise_scheduler_config()
        scheduler = DDPMScheduler(
            num_train_timesteps=config["num_train_timesteps"],
            beta_start=config["beta_start"],
            beta_end=config["beta_end"],
            beta_schedule=config["beta_schedule"],
        )
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.steps = config["num_train_timesteps"]

    def add_noise(self, latents, noise, timesteps):
        a = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return a.sqrt() * latents + (1 - a).sqrt() * noise

    def min_snr_weights(self, timesteps, gamma: float = MIN_SNR_GAMMA):
        a = self.alphas_cumprod[timesteps]
        snr = a / (1 - a)
        return torch.clamp(snr, max=gamma) / snr


def denoising_loss(pred: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    per_sample = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


def load_or_build(kind: str, folder: Path | None, arch: Architecture, unet=None):
    """A component from a checkpoint folder when given, else freshly built from the architecture."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    if folder is not None:
        loader = {
            "vae": AutoencoderKL,
            "unet": UNet2DConditionModel,
            "text_encoder": CLIPTextModel,
            "controlnet": ControlNetModel,
        }[kind]
        return loader.from_pretrained(str(folder))
    if kind == "controlnet":
        return build_controlnet(unet, arch.seed)
    return {"vae": build_vae, "unet": build_unet, "text_encoder": build_text_encoder}[kind](arch)


def checkpoint_component(out: Path, phase: str, name: str, prefer_ema: bool = True) -> Path:
    root = exporting.checkpoint_path(out, phase)
    for folder in ((root / f"{name}_ema") if prefer_ema else None, root / name):
        if folder is not None and folder.exists():
            return folder
    raise FileNotFoundError(f"{phase} has no {name} checkpoint under {root}: run --phase {phase} first")


# ---------------------------------------------------------------------------- phases


class Phase:
    """One training phase: its modules, its batches and its loss. The loop is `train_phase`."""

    name: str

    def __init__(self, ctx: "RunContext", settings: PhaseSettings, fresh_dependencies: bool = False):
        self.ctx, self.settings, self.device = ctx, settings, ctx.device
        self.fresh = fresh_dependencies  # preflight: build upstream models instead of loading them
        self.trainable: dict[str, torch.nn.Module] = {}
        self.ema: dict[str, EMA] = {}
        self.pool: ScenePool | None = None

    def build(self, resume_from: Path | None) -> None:
        raise NotImplementedError

    def make_pool(self) -> ScenePool:
        raise NotImplementedError

    def batch(self, step: int) -> dict:
        raise NotImplementedError

    def loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def finish(self) -> None:
        """Work after the last step (the VAE measures its scaling factor)."""

    def export(self, summary: dict) -> list[Path]:
        return []

    def parameters(self):
        return [p for m in self.trainable.values() for p in m.parameters() if p.requires_grad]

    def _start_ema(self, resume_from: Path | None) -> None:
        if self.settings.ema_decay <= 0:
            return
        for name, module in self.trainable.items():
            self.ema[name] = EMA(module, self.settings.ema_decay)
            if resume_from is not None and (resume_from / f"{name}_ema").exists():
                self.ema[name].module = load_or_build(name, resume_from / f"{name}_ema", self.ctx.arch).to(self.device)
                self.ema[name].module.eval().requires_grad_(False)

    def _frozen(self, module):
        return module.to(self.device).eval().requires_grad_(False)

    def _tokens(self, generator, index) -> torch.Tensor:
        """One of each scene's captions, or the empty prompt with probability caption_dropout."""
        tokens = self.pool["tokens"][index]
        choice = torch.randint(0, tokens.shape[1], (len(index),), generator=generator, device=self.device)
        ids = tokens[torch.arange(len(index), device=self.device), choice].long()
        drop = torch.rand(len(index), generator=generator, device=self.device) < self.settings.caption_dropout
        return torch.where(drop[:, None], self.ctx.empty_ids, ids)

    def _noisy_latents(self, generator, index) -> dict:
        mean, std = self.pool["latent_mean"][index], self.pool["latent_std"][index]
        sample = mean + std * torch.randn(mean.shape, generator=generator, device=self.device)
        latents = sample * self.scaling_factor
        noise = torch.randn(latents.shape, generator=generator, device=self.device)
        if self.settings.noise_offset:
            # Offset noise: lets the model move an image's mean colour (flat backgrounds).
            noise = noise + self.settings.noise_offset * torch.randn(
                (len(index), latents.shape[1], 1, 1), generator=generator, device=self.device
            )
        timesteps = torch.randint(0, self.ctx.noise.steps, (len(index),), generator=generator, device=self.device)
        return {"noisy": self.ctx.noise.add_noise(latents, noise, timesteps), "noise": noise, "timesteps": timesteps}

    def _index(self, generator, batch_size: int) -> torch.Tensor:
        return torch.randint(0, self.pool.size, (batch_size,), generator=generator, device=self.device)


class VaePhase(Phase):
    name = "vae"

    def build(self, resume_from):
        folder = resume_from / "vae" if resume_from else self.ctx.initial("vae")
        self.vae = load_or_build("vae", folder, self.ctx.arch).to(self.device).train()
        self.trainable = {"vae": self.vae}

    def make_pool(self):
        return ScenePool(self.name, self.ctx)

    def batch(self, step):
        g = step_generator(self.ctx.seed, self.name, step, self.device)
        index = self._index(g, self.settings.batch)
        images = self.pool["images"][index]
        crop = self.settings.crop
        if crop < IMAGE_SIZE:
            top, left = (int(v) for v in torch.randint(0, IMAGE_SIZE - crop + 1, (2,), generator=g, device=self.device))
            images = images[:, top : top + crop, left : left + crop]
        return {"images": images, "generator": g}

    def loss(self, batch):
        x = images_to_tensor(batch["images"], self.device)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=batch["generator"])
        reconstruction = self.vae.decode(z).sample.float()
        rec = F.l1_loss(reconstruction, x) + F.mse_loss(reconstruction, x)
        # SD's KL weight multiplies a per-pixel-summed reconstruction loss; ours is a mean.
        kl = posterior.kl().float().mean() / x[0].numel()
        return rec + VAE_KL_WEIGHT * kl

    def finish(self):
        """SD's scaling factor for our VAE: 1 / std of latents over a few thousand images."""
        count = min(self.pool.size, SCALING_SAMPLES["cuda" if self.device.type == "cuda" else "cpu"])
        images = self.pool["images"][:count]
        self.vae.eval()
        mean, std = encode_posterior(self.vae, images, self.device, 128, self.ctx.mixed_precision)
        g = torch.Generator(device=self.device).manual_seed(self.ctx.seed)
        latents = mean + std * torch.randn(mean.shape, generator=g, device=self.device)
        spread = float(latents.std())
        self.vae.register_to_config(scaling_factor=1.0 / spread)
        self.ctx.log(
            f"vae: latent mean {float(latents.mean()):+.3f}, std {spread:.3f} over {count} images "
            f"-> scaling_factor {1.0 / spread:.5f}"
        )
        self.vae.train()


class UnetPhase(Phase):
    name = "unet"

    def build(self, resume_from):
        arch = self.ctx.arch
        if self.fresh:
            vae_folder = None
        else:
            vae_folder = self.ctx.initial("vae") or checkpoint_component(self.ctx.out, "vae", "vae")
        self.vae = self._frozen(load_or_build("vae", vae_folder, arch))
        self.scaling_factor = float(self.vae.config.scaling_factor)
        start = (lambda part: resume_from / part) if resume_from else self.ctx.initial
        self.unet = load_or_build("unet", start("unet"), arch).to(self.device).train()
        self.text_encoder = load_or_build("text_encoder", start("text_encoder"), arch).to(self.device).train()
        self.trainable = {"unet": self.unet, "text_encoder": self.text_encoder}
        self._start_ema(resume_from)

    def make_pool(self):
        return ScenePool(self.name, self.ctx, encoder=self.vae)

    def batch(self, step):
        g = step_generator(self.ctx.seed, self.name, step, self.device)
        index = self._index(g, self.settings.batch)
        return {"tokens": self._tokens(g, index), **self._noisy_latents(g, index)}

    def loss(self, batch):
        states = self.text_encoder(batch["tokens"]).last_hidden_state
        pred = self.unet(batch["noisy"], batch["timesteps"], states).sample
        return denoising_loss(pred, batch["noise"], self.ctx.noise.min_snr_weights(batch["timesteps"]))

    def export_modules(self):
        pick = lambda name: self.ema[name].module if name in self.ema else self.trainable[name]  # noqa: E731
        return self.vae, pick("text_encoder"), pick("unet")

    def export(self, summary):
        vae, text_encoder, unet = self.export_modules()
        dest = self.ctx.export_dest / exporting.SD_FOLDER
        return [exporting.export_sd(dest, vae, text_encoder, unet, self.ctx.tokenizer_dir, summary)]


class ControlNetPhase(Phase):
    """Trains a ControlNet made from the UNet; VAE, text encoder and UNet stay frozen."""

    def __init__(self, ctx, settings, name: str, fresh_dependencies: bool = False):
        super().__init__(ctx, settings, fresh_dependencies)
        self.name = name

    def build(self, resume_from):
        arch = self.ctx.arch
        folder = (
            (lambda phase, part: None)
            if self.fresh
            else (lambda phase, part: self.ctx.initial(part) or checkpoint_component(self.ctx.out, phase, part))
        )
        self.vae = self._frozen(load_or_build("vae", folder("vae", "vae"), arch))
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.unet = self._frozen(load_or_build("unet", folder("unet", "unet"), arch))
        self.text_encoder = self._frozen(load_or_build("text_encoder", folder("unet", "text_encoder"), arch))
        controlnet_folder = resume_from / "controlnet" if resume_from else self.ctx.initial(self.name)
        self.controlnet = load_or_build("controlnet", controlnet_folder, arch, unet=self.unet).to(self.device).train()
        self.trainable = {"controlnet": self.controlnet}
        self._start_ema(resume_from)

    def make_pool(self):
        return ScenePool(self.name, self.ctx, encoder=self.vae)

    def batch(self, step):
        g = step_generator(self.ctx.seed, self.name, step, self.device)
        index = self._index(g, self.settings.batch)
        controls = self.pool["controls"][index].to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if controls.shape[1] == 1:  # depth is stored as one channel, fed as grey RGB
            controls = controls.expand(-1, 3, -1, -1)
        return {"tokens": self._tokens(g, index), "controls": controls, **self._noisy_latents(g, index)}

    def loss(self, batch):
        with torch.no_grad():
            states = self.text_encoder(batch["tokens"]).last_hidden_state
        down, mid = self.controlnet(
            batch["noisy"],
            batch["timesteps"],
            encoder_hidden_states=states,
            controlnet_cond=batch["controls"],
            return_dict=False,
        )
        pred = self.unet(
            batch["noisy"],
            batch["timesteps"],
            states,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample
        return denoising_loss(pred, batch["noise"], self.ctx.noise.min_snr_weights(batch["timesteps"]))

    def export(self, summary):
        controlnet = self.ema["controlnet"].module if "controlnet" in self.ema else self.controlnet
        dest = self.ctx.export_dest / exporting.CONTROLNET_FOLDERS[self.name]
        return [exporting.export_controlnet(dest, controlnet, CONTROL_KINDS[self.name], summary)]


def make_phase(name: str, ctx: "RunContext", settings: PhaseSettings, fresh_dependencies: bool = False) -> Phase:
    if name == "vae":
        return VaePhase(ctx, settings, fresh_dependencies)
    if name == "unet":
        return UnetPhase(ctx, settings, fresh_dependencies)
    return ControlNetPhase(ctx, settings, name, fresh_dependencies)


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(phase: Phase, optimizer, state: dict) -> None:
    """Atomically replace out/<phase>/checkpoint with the current weights, optimiser and RNG."""
    final = exporting.checkpoint_path(phase.ctx.out, phase.name)
    staging = final.with_name(final.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name, module in phase.trainable.items():
        module.save_pretrained(str(staging / name), safe_serialization=True)
    for name, ema in phase.ema.items():
        ema.module.save_pretrained(str(staging / f"{name}_ema"), safe_serialization=True)
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and phase.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(phase.device)
    torch.save(rng, staging / "rng.pt")
    (staging / "state.json").write_text(json.dumps(state, indent=1))
    exporting._replace_folder(staging, final)


def read_checkpoint_state(out: Path, phase: str) -> dict | None:
    path = exporting.checkpoint_path(out, phase) / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---------------------------------------------------------------------------- the loop


@dataclass
class PhaseResult:
    step: int = 0
    loss_avg: float = float("nan")
    seconds: float = 0.0
    samples_per_second: float = 0.0
    status: str = "not run"
    pool: int = 0
    batch: int = 0
    lr: float = 0.0
    steps_this_run: int = 0
    render_errors: int = 0
    first_render_error: str | None = None
    exported: list[str] = field(default_factory=list)


def learning_rate(settings: PhaseSettings, step: int) -> float:
    """Linear warm-up, then constant (the EMA does the averaging a decay would)."""
    return settings.lr * min(1.0, (step + 1) / max(1, settings.warmup))


def train_phase(phase: Phase, deadline: float, max_steps: int | None, resume: bool) -> PhaseResult:
    """Run one phase until its step cap or deadline; checkpoint and export on the way and at the end."""
    ctx, settings, started = phase.ctx, phase.settings, time.time()
    result = PhaseResult(batch=settings.batch, lr=settings.lr)
    state = read_checkpoint_state(ctx.out, phase.name) if resume else None
    resume_from = exporting.checkpoint_path(ctx.out, phase.name) if state else None
    phase.build(resume_from)
    params = phase.parameters()
    optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.999), weight_decay=0.01, foreach=True)
    step, loss_avg = 0, float("nan")
    if state:
        optimizer.load_state_dict(
            torch.load(resume_from / "optimizer.pt", map_location=phase.device, weights_only=True)
        )
        rng = torch.load(resume_from / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and phase.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], phase.device)
        step, loss_avg = state["step"], state.get("loss_avg", float("nan"))
        ctx.log(f"{phase.name}: resuming at step {step}")
    result.step, result.loss_avg, result.pool = step, loss_avg, (state or {}).get("pool", 0)
    if max_steps is not None and step >= max_steps:
        result.status = "step cap (reached earlier)"
        return result
    phase.pool = phase.make_pool()
    pool_target = phase.pool.refresh(minimum=min(settings.pool, 8 * settings.batch))
    ctx.log(
        f"{phase.name}: {pool_target} scenes ready ({'complete' if phase.pool.complete else 'more rendering'}), "
        f"start after {time.time() - started:.1f}s"
    )

    def checkpoint(status: str) -> None:
        save_checkpoint(
            phase,
            optimizer,
            {
                "step": step,
                "loss_avg": loss_avg,
                "recent_losses": list(recent),
                "phase": phase.name,
                "status": status,
                "pool": phase.pool.size,
                "settings": asdict(settings),
                "arch": ctx.arch_name,
            },
        )

    log_every = ctx.log_every or (50 if phase.device.type == "cuda" else 10)
    running = torch.zeros((), device=phase.device)
    since_log, log_time, first_step, loop_started = 0, time.time(), step, time.time()
    recent = collections.deque((state or {}).get("recent_losses", []), maxlen=LOSS_WINDOW)

    def flush_log() -> bool:
        """Fold the steps since the last log into the moving average; False if the loss went non-finite."""
        nonlocal loss_avg, since_log, log_time
        if since_log == 0:
            return True
        mean_loss = float(running) / since_log  # the one host sync per log interval
        running.zero_()
        if not math.isfinite(mean_loss):
            return False
        recent.append(mean_loss)
        loss_avg = float(np.mean(recent))
        now = time.time()
        rate = since_log * settings.batch / max(now - log_time, 1e-9)
        ctx.record_loss(
            phase.name, step, mean_loss, loss_avg, learning_rate(settings, step), rate, phase.pool.size, now - started
        )
        progress.set_postfix(loss=f"{loss_avg:.4f}", samples_s=f"{rate:.0f}", pool=phase.pool.size)
        since_log, log_time = 0, now
        return True

    progress = ctx.progress(phase.name, total=max_steps, initial=step)
    try:
        while True:
            if max_steps is not None and step >= max_steps:
                result.status = "step cap"
                break
            if time.time() >= deadline:
                result.status = "time budget"
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, step)
            batch = phase.batch(step)
            with autocast(phase.device, ctx.mixed_precision):
                loss = phase.loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for name, ema in phase.ema.items():
                ema.update(phase.trainable[name], step)
            running += loss.detach().float()
            step += 1
            since_log += 1
            progress.update(1)
            at_checkpoint = step % settings.checkpoint_every == 0
            if since_log >= log_every or at_checkpoint:
                if not flush_log():
                    result.status = f"diverged before step {step}; kept the last checkpoint"
                    ctx.log(f"{phase.name}: {result.status}")
                    break
                phase.pool.refresh()
            if at_checkpoint:  # only after flush_log has seen a finite loss
                checkpoint("running")
                if ctx.options.export:
                    ctx.export_phase(phase)
        loop_seconds = time.time() - loop_started
        if not result.status.startswith("diverged") and not flush_log():
            result.status = f"diverged before step {step}; kept the last checkpoint"
    finally:
        progress.close()
    if not result.status.startswith("diverged"):
        phase.finish()
        checkpoint(result.status)
    result.step, result.loss_avg = step, loss_avg
    result.steps_this_run = step - first_step
    result.seconds = time.time() - started
    result.samples_per_second = result.steps_this_run * settings.batch / max(loop_seconds, 1e-9)
    result.pool = phase.pool.size
    result.render_errors, result.first_render_error = phase.pool.errors, phase.pool.first_error
    if phase.pool.errors:
        ctx.log(f"{phase.name}: {phase.pool.errors} scenes failed to render; first: {phase.pool.first_error}")
    return result


# ---------------------------------------------------------------------------- the run


class RunContext:
    """What every phase of one invocation shares: options, device, world, queue, logs."""

    def __init__(self, options: RunOptions, world, tokenizer):
        self.options = options
        self.out = options.out
        self.device = torch.device(options.device)
        self.seed = options.seed
        self.arch_name = options.arch
        self.arch = Architecture.named(options.arch)
        self.world = world
        self.tokenizer = tokenizer
        self.tokenizer_dir = options.tokenizer
        self.empty_ids = (
            torch.from_numpy(tokenize(tokenizer, [""])[0]).long().to(self.device)
        )  # SD's unconditional prompt
        self.noise = DiffusionNoise(self.device)
        self.queue: RenderQueue | None = None
        self.export_dest = options.export_dest
        self.log_every = options.log_every
        self.encode_batch = 512 if self.device.type == "cuda" else 32
        self.mixed_precision = self.device.type == "cuda"  # bf16 autocast; preflight may turn it off
        self.summary: dict = {}
        self.loss_file = self.out / "loss.csv"
        self.init_from = options.init_from

    def initial(self, part: str) -> Path | None:
        """Where to load a component from when starting (not resuming): an earlier export, if given.

        part: "vae", "unet", "text_encoder" (inside micro-sd), or "controlnet-pose"/"controlnet-depth"
        (the sibling micro-controlnet-* folders).
        """
        if self.init_from is None:
            return None
        folder = (self.init_from.parent / f"micro-{part}") if part.startswith("controlnet") else self.init_from / part
        return folder if folder.is_dir() else None

    def log(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr)

    def progress(self, phase: str, total: int | None, initial: int):
        from tqdm import tqdm

        # Off a terminal (a log file, a remote runner) a bar line every 10 s is plenty.
        interval = 0.5 if sys.stderr.isatty() else 10.0
        return tqdm(
            total=total,
            initial=initial,
            desc=phase,
            unit="step",
            mininterval=interval,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def record_loss(self, phase, step, loss, loss_avg, lr, samples_per_second, pool, elapsed) -> None:
        new = not self.loss_file.exists()
        with self.loss_file.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["phase", "step", "loss", "loss_avg", "lr", "samples_per_second", "pool", "elapsed_s"])
            writer.writerow(
                [
                    phase,
                    step,
                    f"{loss:.6f}",
                    f"{loss_avg:.6f}",
                    f"{lr:.3g}",
                    f"{samples_per_second:.1f}",
                    pool,
                    f"{elapsed:.1f}",
                ]
            )

    def export_phase(self, phase: Phase) -> list[Path]:
        try:
            return phase.export(self.summary)
        except Exception:  # an export failure must not end the training run: log it, keep going
            self.log(f"{phase.name}: export failed:\n{traceback.format_exc()}")
            return []

    def write_summary(self) -> None:
        path = self.out / "train_summary.json"
        staging = path.with_suffix(".json.partial")
        staging.write_text(json.dumps(self.summary, indent=1, default=str))
        staging.replace(path)


def parse_args(argv: list[str] | None) -> RunOptions:
    parser = argparse.ArgumentParser(prog="python -m studio.micro.train", description=__doc__.splitlines()[0])
    parser.add_argument("--phase", required=True, choices=(*PHASES, "all"))
    parser.add_argument("--out", type=Path, default=Path("runs/embedded"), help="checkpoints, logs, summary")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1")
    parser.add_argument("--minutes", type=float, help="wall-clock budget of each phase (default: none)")
    parser.add_argument("--minutes-vae", type=float)
    parser.add_argument("--minutes-unet", type=float)
    parser.add_argument("--minutes-pose", type=float)
    parser.add_argument("--minutes-depth", type=float)
    parser.add_argument(
        "--total-minutes", type=float, help="hard budget of the whole command; phases stop early to meet it"
    )
    parser.add_argument("--steps", type=int, help="step cap of each phase (a phase's total, counting resumed steps)")
    parser.add_argument("--batch", type=int, help="batch size of every phase (default: per phase and device)")
    parser.add_argument("--pool", type=int, help="scenes rendered per phase (default: per phase and device)")
    parser.add_argument("--lr", type=float, help="learning rate of every phase (default: per phase)")
    parser.add_argument(
        "--checkpoint-every", type=int, help="steps between checkpoints (default: per phase and device)"
    )
    parser.add_argument("--resume", action="store_true", help="continue each phase from its checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers",
        type=int,
        help="scene-rendering processes; 0 renders in this process. Default: min(8, cores - 1) "
        "on CUDA; 0 on the CPU, where rendering is ~2%% of the work and a worker's "
        "cores would stall the training threads",
    )
    parser.add_argument("--arch", default="default", choices=("default", "tiny"), help="tiny: for tests")
    parser.add_argument("--no-export", dest="export", action="store_false", help="do not export after phases")
    parser.add_argument("--export-dest", type=Path, default=exporting.DEFAULT_DEST)
    parser.add_argument("--tokenizer", type=Path, default=exporting.TOKENIZER_DIR)
    parser.add_argument("--log-every", type=int, help="steps between loss logs (default 50 cuda, 10 cpu)")
    parser.add_argument("--check", dest="check_only", action="store_true", help="validate and preflight, then stop")
    parser.add_argument(
        "--init-from",
        type=Path,
        help="start from an exported model folder (micro-sd, with its micro-controlnet-* siblings) instead of "
        "random weights: continue a GPU run on another machine, where its checkpoints are not",
    )
    args = parser.parse_args(argv)
    phases = PHASES if args.phase == "all" else (args.phase,)
    per_phase = {
        "vae": args.minutes_vae,
        "unet": args.minutes_unet,
        "controlnet-pose": args.minutes_pose,
        "controlnet-depth": args.minutes_depth,
    }
    minutes = {p: per_phase[p] if per_phase[p] is not None else args.minutes for p in phases}
    if args.total_minutes is not None:
        minutes = split_total_minutes(minutes, args.total_minutes)
    if (
        not args.check_only
        and args.steps is None
        and any(m is None for m in minutes.values())
        and args.total_minutes is None
    ):
        parser.error(
            "give --steps, --minutes (or the per-phase --minutes-*), or --total-minutes: training never ends by itself"
        )
    for name, value in (
        ("--steps", args.steps),
        ("--batch", args.batch),
        ("--pool", args.pool),
        ("--checkpoint-every", args.checkpoint_every),
    ):
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if args.workers is None:
        args.workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if args.device.startswith("cuda") else 0
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    command = "python -m studio.micro.train " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    return RunOptions(
        phases=phases,
        out=args.out,
        device=args.device,
        minutes=minutes,
        total_minutes=args.total_minutes,
        steps=args.steps,
        batch=args.batch,
        pool=args.pool,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        seed=args.seed,
        workers=args.workers,
        arch=args.arch,
        export=args.export,
        export_dest=args.export_dest,
        tokenizer=args.tokenizer,
        log_every=args.log_every,
        check_only=args.check_only,
        command=command,
        init_from=args.init_from,
    )


# How a --total-minutes budget is shared among phases given no minutes of their own: the
# UNet (and text encoder) is what the model's quality depends on; the VAE learns flat
# colours fast; a ControlNet starts from the UNet's weights.
TIME_SHARES = {"vae": 0.12, "unet": 0.60, "controlnet-pose": 0.14, "controlnet-depth": 0.14}
PREFLIGHT_MINUTES = 0.5  # validation, preflight steps, the first render chunks


def split_total_minutes(minutes: dict[str, float | None], total: float) -> dict[str, float | None]:
    """Give phases without their own budget a share of what --total-minutes leaves."""
    open_phases = [p for p, m in minutes.items() if m is None]
    if not open_phases:
        return minutes
    left = total - PREFLIGHT_MINUTES - sum(m for m in minutes.values() if m is not None)
    weight = sum(TIME_SHARES[p] for p in open_phases)
    return {p: (m if m is not None else max(0.0, left) * TIME_SHARES[p] / weight) for p, m in minutes.items()}


def resolved_settings(options: RunOptions, phase: str, device_type: str) -> PhaseSettings:
    settings = phase_settings(phase, device_type)
    overrides = {
        k: v
        for k, v in (
            ("batch", options.batch),
            ("pool", options.pool),
            ("lr", options.lr),
            ("checkpoint_every", options.checkpoint_every),
        )
        if v is not None
    }
    settings = replace(settings, **overrides)
    if settings.pool < settings.batch:
        settings = replace(settings, pool=settings.batch)
    return settings


def validate(options: RunOptions, world, tokenizer) -> list[str]:
    """Everything that can be known wrong before a step is taken; returns problems, fatal first."""
    problems = []
    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        problems.append(f"--device {options.device}: torch {torch.__version__} sees no CUDA device")
    for name in (
        "SIZE",
        "COLOURS",
        "SHAPES",
        "scene_from_seed",
        "render_image",
        "render_depth",
        "render_pose",
        "caption",
    ):
        if not hasattr(world, name):
            problems.append(f"{world.__name__} lacks {name}")
    if getattr(world, "SIZE", IMAGE_SIZE) != IMAGE_SIZE:
        problems.append(f"world.SIZE is {world.SIZE}, the architecture expects {IMAGE_SIZE}")
    if len(tokenizer) != 49408 or tokenizer.bos_token_id != 49406 or tokenizer.eos_token_id != 49407:
        problems.append(
            f"tokenizer at {options.tokenizer} is not SD's CLIP tokenizer (size {len(tokenizer)}, "
            f"bos {tokenizer.bos_token_id}, eos {tokenizer.eos_token_id})"
        )
    if tokenizer.model_max_length != CLIP_MAX_LENGTH:
        problems.append(
            f"tokenizer at {options.tokenizer} has model_max_length {tokenizer.model_max_length}, "
            f"SD pipelines need {CLIP_MAX_LENGTH}"
        )
    if options.init_from is not None and not (options.init_from / "model_index.json").is_file():
        problems.append(f"--init-from {options.init_from} is not an exported model folder (no model_index.json)")
    needs_vae = [p for p in options.phases if p != "vae"]
    vae_state = read_checkpoint_state(options.out, "vae")
    if needs_vae and "vae" not in options.phases and options.init_from is None:
        if vae_state is None:
            problems.append(f"--phase {needs_vae[0]} needs a trained VAE: no checkpoint in {options.out / 'vae'}")
        elif vae_state.get("status") == "running":
            # Mid-phase checkpoints predate the scaling factor, which is measured at the phase's end.
            problems.append(
                "the VAE checkpoint is from an interrupted phase and has no scaling factor yet: "
                "finish it with --phase vae --resume"
            )
    control = [p for p in options.phases if p.startswith("controlnet")]
    if (control and "unet" not in options.phases and options.init_from is None
            and read_checkpoint_state(options.out, "unet") is None):
        problems.append(f"--phase {control[0]} needs a trained UNet: no checkpoint in {options.out / 'unet'}")
    free = shutil.disk_usage(options.out).free / 1e9
    if free < 2:
        problems.append(f"only {free:.1f} GB free under {options.out}")
    return problems


def preflight(ctx: RunContext, phase_names: tuple[str, ...]) -> dict[str, str]:
    """A real training step, checkpoint and export of every phase on the device; returns failures.

    On CUDA, phases that fail under bf16 autocast are tried again in fp32 (TF32); if that
    mends any, the whole run trains in fp32: slower, but it trains.
    """
    failures = _preflight_phases(ctx, phase_names)
    if failures and ctx.device.type == "cuda" and ctx.mixed_precision:
        ctx.mixed_precision = False
        ctx.log(f"preflight: trying {', '.join(failures)} again without bf16 autocast")
        retried = _preflight_phases(ctx, tuple(failures))
        if len(retried) < len(failures):
            failures = retried
        else:
            ctx.mixed_precision = True
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return failures


def _preflight_phases(ctx: RunContext, phase_names: tuple[str, ...]) -> dict[str, str]:
    failures = {}
    for name in phase_names:
        try:
            preflight_phase(ctx, name)
        except Exception:
            failures[name] = traceback.format_exc()
            ctx.log(f"preflight {name}: FAILED\n{failures[name]}")
        else:
            ctx.log(f"preflight {name}: ok")
    return failures


def preflight_phase(ctx: RunContext, name: str) -> None:
    """Two optimiser steps of one phase on two scenes, its checkpoint reloaded, its export loaded."""
    phase = make_phase(name, ctx, replace(phase_settings(name, ctx.device.type), batch=2, pool=2), True)
    phase.build(None)
    seeds = scene_seeds(name, ctx.seed, 2, figure_share=0.05 if name == "controlnet-pose" else 1.0)
    chunk = SceneRenderer(ctx.world, ctx.tokenizer).render(name, seeds)
    if len(chunk["seeds"]) == 0:
        raise RuntimeError(f"no usable {name} scene among seeds {seeds}: {chunk['error']}")
    phase.pool = phase.make_pool()
    phase.pool.absorb(chunk)
    optimizer = torch.optim.AdamW(phase.parameters(), lr=1e-6)
    for step in range(2):
        with autocast(ctx.device, ctx.mixed_precision):
            loss = phase.loss(phase.batch(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(phase.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for part, ema in phase.ema.items():
            ema.update(phase.trainable[part], step)
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"preflight loss is {float(loss.detach())}")
    if name == "vae":
        phase.finish()
    with tempfile.TemporaryDirectory() as tmp:
        for part, module in phase.trainable.items():
            module.save_pretrained(str(Path(tmp) / part), safe_serialization=True)
            load_or_build(part, Path(tmp) / part, ctx.arch)
        torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
        torch.load(Path(tmp) / "optimizer.pt", map_location=ctx.device, weights_only=True)
        check_export(phase, Path(tmp) / "export")


def check_export(phase: Phase, folder: Path) -> None:
    """Export untrained modules as the phase will, and load them the way the studio does."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    if isinstance(phase, UnetPhase):
        vae, text_encoder, unet = phase.export_modules()
        exporting.export_sd(folder / "sd", vae, text_encoder, unet, phase.ctx.tokenizer_dir, None)
        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder / "sd"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
        pipe.set_progress_bar_config(disable=True)
        image = pipe("a red circle", num_inference_steps=1, output_type="np").images[0]
        if image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise RuntimeError(f"exported pipeline made a {image.shape} image")
    elif isinstance(phase, ControlNetPhase):
        exporting.export_controlnet(folder / "cn", phase.controlnet, CONTROL_KINDS[phase.name])
        ControlNetModel.from_pretrained(str(folder / "cn"))


def environment(device: torch.device) -> dict:
    import diffusers
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(options: RunOptions, world=None) -> dict:
    """Validate, preflight, train the requested phases in order, export; returns the summary."""
    import importlib

    started = time.time()
    hard_deadline = started + options.total_minutes * 60 if options.total_minutes else math.inf
    options.out.mkdir(parents=True, exist_ok=True)
    world = world or importlib.import_module(options.world_module)
    tokenizer = load_tokenizer(options.tokenizer)
    problems = validate(options, world, tokenizer)
    if problems:
        raise SystemExit("cannot train:\n  " + "\n  ".join(problems))

    device = torch.device(options.device)
    renderer = SceneRenderer(world, tokenizer)
    # The render workers fork now, before this process runs a torch op or touches CUDA.
    queue = RenderQueue(renderer, 0 if options.check_only else options.workers, options.world_module, options.tokenizer)
    torch.manual_seed(options.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    ctx = RunContext(options, world, tokenizer)
    ctx.queue = queue
    previous = {}
    if options.resume and (options.out / "train_summary.json").exists():
        previous = json.loads((options.out / "train_summary.json").read_text())
    ctx.summary = {
        "command": options.command,
        "seed": options.seed,
        "arch": options.arch,
        **environment(device),
        "phases": previous.get("phases", {}),
        "sittings": previous.get("sittings", []) + [{"command": options.command}],
        "wall_seconds": previous.get("wall_seconds", 0.0),
    }
    settings = {name: resolved_settings(options, name, device.type) for name in options.phases}
    try:
        start_rendering(ctx, settings)
        ctx.log(
            f"device {ctx.summary['device_name']}, {options.workers} render workers, phases {', '.join(options.phases)}"
        )
        failures = preflight(ctx, options.phases)
        ctx.summary["precision"] = "bf16 autocast" if device.type == "cuda" and ctx.mixed_precision else "fp32"
        fatal = [p for p in failures if p in ("vae", "unet")]
        if fatal:
            raise SystemExit(f"preflight failed for {', '.join(fatal)}; nothing was trained (see the traceback above)")
        if options.check_only:
            ctx.log("check passed" if not failures else f"check: {', '.join(failures)} would be skipped")
            return ctx.summary
        for name in options.phases:
            if name in failures:
                ctx.summary["phases"][name] = {"status": "skipped: preflight failed", "error": failures[name][-2000:]}
                continue
            minutes = options.minutes.get(name)
            budget = min(minutes * 60 if minutes is not None else math.inf, hard_deadline - time.time())
            deadline = time.time() + budget - closing_seconds(name, device.type, budget)
            if deadline <= time.time():
                ctx.summary["phases"][name] = {**ctx.summary["phases"].get(name, {}), "status": "skipped: no time left"}
                continue
            ctx.summary["phases"][name] = run_phase(ctx, name, settings[name], deadline)
            ctx.summary["wall_seconds"] = previous.get("wall_seconds", 0.0) + time.time() - started
            ctx.write_summary()
    finally:
        queue.close()
        ctx.summary["wall_seconds"] = previous.get("wall_seconds", 0.0) + time.time() - started
        ctx.write_summary()
    sd_folder = options.export_dest / exporting.SD_FOLDER
    if options.export and "unet" in options.phases and sd_folder.exists():
        # The export after the UNet phase predates the ControlNets: give TRAINING.md every phase.
        (sd_folder / "TRAINING.md").write_text(exporting.training_markdown(ctx.summary))
        (sd_folder / "model_card.json").write_text(json.dumps(exporting.model_card(ctx.summary), indent=2) + "\n")
    return ctx.summary


def start_rendering(ctx: RunContext, settings: dict[str, PhaseSettings]) -> None:
    """Queue every requested phase's scenes now, in phase order, so later phases' pools render early."""
    options = ctx.options
    figure_share = measure_figure_share(ctx.world, options.seed)
    for name in options.phases:
        state = read_checkpoint_state(options.out, name) if options.resume else None
        if state and options.steps is not None and state["step"] >= options.steps:
            continue  # already at its step cap: nothing to render
        share = figure_share if name == "controlnet-pose" else 1.0
        ctx.queue.submit(
            name,
            scene_seeds(name, options.seed, settings[name].pool, share),
            chunk=256 if ctx.device.type == "cuda" else 64,
        )


def run_phase(ctx: RunContext, name: str, settings: PhaseSettings, deadline: float) -> dict:
    """Train and export one phase; a failure is recorded (with its traceback) and the run goes on."""
    options = ctx.options
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    try:
        phase = make_phase(name, ctx, settings)
        result = train_phase(phase, deadline, options.steps, options.resume)
    except Exception:
        ctx.log(f"{name}: FAILED\n{traceback.format_exc()}")
        return {"status": "failed", "error": traceback.format_exc()[-4000:]}
    ctx.log(
        f"{name}: {result.status} at step {result.step}, loss {result.loss_avg:.4f}, "
        f"{result.samples_per_second:.0f} samples/s over {result.seconds:.0f}s"
    )
    info = {**asdict(result), **{k: v for k, v in asdict(settings).items() if k not in ("batch", "lr", "pool")}}
    if ctx.device.type == "cuda":
        info["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(ctx.device) / 1e9, 2)
    ctx.summary["phases"][name] = info
    if options.export:
        if result.status.startswith("diverged"):
            # The weights in memory are broken: export what the last checkpoint holds.
            exported = exporting.export_runs(
                options.out, options.export_dest, ctx.summary, phases=(name,), tokenizer_dir=options.tokenizer
            )
        else:
            exported = ctx.export_phase(phase)
        info["exported"] = [str(p) for p in exported]
        for folder in exported:
            ctx.log(f"exported {folder} ({exporting.folder_megabytes(folder):.1f} MB)")
    del phase
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return info


def closing_seconds(phase: str, device_type: str, budget: float) -> float:
    """Time kept back from a phase's budget for its final checkpoint, export (and VAE scaling factor)."""
    if device_type == "cuda":
        estimate = 15.0
    else:  # the CPU encodes SCALING_SAMPLES images at ~60 ms each for the scaling factor
        estimate = 40.0 if phase == "vae" else 10.0
    return min(estimate, 0.25 * budget)


def measure_figure_share(world, seed: int, samples: int = 400) -> float:
    """How many training scenes hold a figure, to size the pose phase's seed range."""
    seeds = scene_seeds("controlnet-pose", seed, samples)
    has_figure = [any(o.shape == "figure" for o in world.scene_from_seed(s).objects) for s in seeds]
    return max(0.05, float(np.mean(has_figure)) * 0.9)  # 0.9: a margin so the pool fills


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    summary = run(options)
    print(
        json.dumps(
            {
                name: {k: info.get(k) for k in ("status", "step", "loss_avg", "samples_per_second")}
                for name, info in summary.get("phases", {}).items()
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
