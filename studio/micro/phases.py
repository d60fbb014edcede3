"""The training phases: what each one trains, on which batches, with which loss.

VAE, then UNet + text encoder (on the frozen VAE's latents), then a ControlNet per control
kind (on the frozen UNet), with what they share: per-device settings, SD's forward noise and
min-SNR weights, EMA, and the per-step generator that makes every draw reproducible. The
loop that steps them is `studio.micro.loop`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from studio.micro import export as exporting
from studio.micro.architecture import (
    IMAGE_SIZE,
    Architecture,
    build_controlnet,
    build_text_encoder,
    build_unet,
    build_vae,
    noise_scheduler_config,
)
from studio.micro.pools import ScenePool, encode_posterior, images_to_tensor
from studio.micro.scenes import CONTROL_KINDS, PHASES

if TYPE_CHECKING:
    from studio.micro.train import RunContext

MIN_SNR_GAMMA = 5.0
VAE_KL_WEIGHT = 1e-6
SCALING_SAMPLES = {"cuda": 4096, "cpu": 512}  # images whose latents set the VAE scaling factor


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


# ---------------------------------------------------------------------------- training parts


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


class LatentPhase(Phase):
    """A phase that trains in the frozen VAE's latent space (the UNet and the ControlNets)."""

    def _earlier(self, phase: str, part: str) -> Path | None:
        """A component an earlier phase made: from --init-from, else that phase's checkpoint.

        None in preflight (fresh dependencies), which builds the component instead."""
        if self.fresh:
            return None
        return self.ctx.initial(part) or checkpoint_component(self.ctx.out, phase, part)

    def _load_frozen_vae(self) -> None:
        self.vae = self._frozen(load_or_build("vae", self._earlier("vae", "vae"), self.ctx.arch))
        self.scaling_factor = float(self.vae.config.scaling_factor)

    def make_pool(self):
        return ScenePool(self.name, self.ctx, encoder=self.vae)

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


class UnetPhase(LatentPhase):
    name = "unet"

    def build(self, resume_from):
        arch = self.ctx.arch
        self._load_frozen_vae()
        start = (lambda part: resume_from / part) if resume_from else self.ctx.initial
        self.unet = load_or_build("unet", start("unet"), arch).to(self.device).train()
        self.text_encoder = load_or_build("text_encoder", start("text_encoder"), arch).to(self.device).train()
        self.trainable = {"unet": self.unet, "text_encoder": self.text_encoder}
        self._start_ema(resume_from)

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


class ControlNetPhase(LatentPhase):
    """Trains a ControlNet made from the UNet; VAE, text encoder and UNet stay frozen."""

    def __init__(self, ctx, settings, name: str, fresh_dependencies: bool = False):
        super().__init__(ctx, settings, fresh_dependencies)
        self.name = name

    def build(self, resume_from):
        arch = self.ctx.arch
        self._load_frozen_vae()
        self.unet = self._frozen(load_or_build("unet", self._earlier("unet", "unet"), arch))
        self.text_encoder = self._frozen(load_or_build("text_encoder", self._earlier("unet", "text_encoder"), arch))
        controlnet_folder = resume_from / "controlnet" if resume_from else self.ctx.initial(self.name)
        self.controlnet = load_or_build("controlnet", controlnet_folder, arch, unet=self.unet).to(self.device).train()
        self.trainable = {"controlnet": self.controlnet}
        self._start_ema(resume_from)

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
