"""Train and measure micro-framed: a style LoRA for the embedded model (a black frame round the picture).

    python -m studio.micro.lora_train --minutes 12 --out assets/loras/micro-framed.safetensors
    python -m studio.micro.lora_train eval --n 100 --json

The base model never saw a frame: the world draws flat objects on flat backgrounds reaching the
picture's edges. Training renders the world's scenes with a black frame FRAME_WIDTH px wide painted
over their edges (`render_styled`), keeps the world's own captions (the `<lora:micro-framed:1>` tag
is the trigger, so no trigger word is taught), and trains rank-16 LoRA factors on the UNet's
attention projections (to_q, to_k, to_v, to_out.0) with the base model frozen, on the base
training's objective: epsilon prediction on the frozen VAE's latents, SD1.5's DDPM schedule,
min-SNR (gamma 5) weights, offset noise and 10% caption dropout (`studio.micro.phases`). Every draw
is seeded (`--steps` repeats a run exactly; `--minutes` stops where the clock says). The factors
are exported in the kohya layout (`studio.micro.lora_files`), the layout A1111 users have.

A LoRA is a difference to one UNet's weights: retrain it whenever the base UNet changes. The file
records the hash of the UNet it was trained against (`studio_base_unet_sha256`) and the test of the
shipped file fails when the embedded UNet no longer matches.

Why a frame: no LoRA on the UNet draws what the frozen base VAE cannot decode, and that VAE, trained
on the world's flat scenes only, decodes little else. It turns hatching into blotches, returns a
6-10 px outline round an object as a dark ring with the object's colour often lost (a LoRA trained on
those reached 15% outlined with the tag, and spoiled colour and shape), and snaps pastel colours
back to the world's palette. A black band two latent cells wide (16 px) along the edges survives
its encoder and decoder in every scene tried (TRAINING.md).

The detector (`frame_score`): the median CIELAB lightness of the band BAND px in from the edges
(the outermost pixels are skipped, as the decoder tints them) against that of the ring just inside
the frame. A picture is framed when the band is dark (L* at most FRAME_MAX_L) and at least
FRAME_CONTRAST_L darker than what it frames: the base VAE decodes the black frame as a very dark
green or blue, and a picture dark all over (a black background) has no frame. The measured prompts
never name a black background (training renders every scene). What the frame holds is read by the
studio's judge after the frame is painted over with the colour just inside it (`unframed`), the same
way with and without the tag.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import cv2
import numpy as np
from PIL import Image

from studio.micro import world

ROOT = Path(__file__).resolve().parents[2]
BASE_MODEL = ROOT / "assets" / "models" / "micro-sd"
NAME = "micro-framed"
DEFAULT_OUT = ROOT / "assets" / "loras" / f"{NAME}.safetensors"

FRAME_WIDTH = 16  # px at 128: two latent cells; 8 and 12 px come back from the base VAE broken (TRAINING.md)
FRAME_COLOUR = world.COLOURS["black"]

# Scene seeds: training draws from a block no base phase used (the base phases use 0-9,000,000,
# studio.micro.scenes.SEED_BLOCKS); the measure from far above the held-out offset, away from the
# seeds studio.micro.eval and the embedded-model tests use (10,000,000 + up to a few thousand,
# and the ControlNet cases at +1,000,000 and +2,000,000).
TRAIN_SEED_START = 9_000_000
EVAL_SEED_START = 10_900_000

# 2e-3 is about the most this LoRA takes: 4e-3 diverged after ~500 steps (TRAINING.md).
RANK = 16
LR = 2e-3
BATCH = 8  # the CPU's samples/s hardly changes with the batch (21 at 8, 24 at 32): small steps, more of them
WARMUP = 50
POOL = 1024  # scenes rendered, encoded and decoded for training (about three minutes); ~40% are kept
GRAD_CLIP = 1.0

# Detector thresholds (pixels of a 128 image).
DARK_L = 25.0  # CIELAB L* of a dark pixel (the world's black is L* 6, its darkest other colour, purple, L* 39)
BAND = (3, 10)  # px in from the edges: the band read for the frame
INSIDE = (FRAME_WIDTH + 4, FRAME_WIDTH + 8)  # the ring just inside the frame: what it frames
FRAME_MAX_L = 50.0  # the band's median L* at most this (a dark band) ...
FRAME_CONTRAST_L = 20.0  # ... and at least this much below the median L* of the ring inside it


# ---------------------------------------------------------------------------- the style


def render_styled(scene: world.Scene, style: str = "framed") -> Image.Image:
    """The scene as world.render_image draws it, with a black frame FRAME_WIDTH px wide painted over its edges.

    The frame covers whatever lies under it (an object near an edge is cut, as a passe-partout cuts a
    print); everything inside it is the world's rendering, pixel for pixel.
    """
    if style != "framed":
        raise ValueError(f"unknown style {style!r}; this LoRA draws 'framed'")
    pixels = np.array(world.render_image(scene))
    w = FRAME_WIDTH
    pixels[:w], pixels[-w:], pixels[:, :w], pixels[:, -w:] = (FRAME_COLOUR,) * 4
    return Image.fromarray(pixels, "RGB")


class StyledWorld:
    """studio.micro.world with render_image drawing the style: what SceneRenderer renders training scenes from."""

    def __init__(self, style: str = "framed"):
        self.style = style

    def __getattr__(self, name):
        return getattr(world, name)

    def render_image(self, scene):
        return render_styled(scene, self.style)


# ---------------------------------------------------------------------------- the detector


def _lab(rgb: np.ndarray) -> np.ndarray:
    flat = np.asarray(rgb, dtype=np.float32).reshape(1, -1, 3) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(np.shape(rgb))


def _band(shape, first: int, last: int) -> np.ndarray:
    """True on the pixels `first` to `last` px (exclusive) in from the nearest edge."""
    band = np.zeros(shape[:2], bool)
    band[first:shape[0] - first, first:shape[1] - first] = True
    band[last:shape[0] - last, last:shape[1] - last] = False
    return band


@dataclass
class FrameReading:
    """What the detector saw: the dark share of the band BAND px in from the edges, and the median lightness
    of the band and of the ring just inside the frame (INSIDE px in)."""

    band_dark: float
    band_l: float
    inside_l: float

    @property
    def framed(self) -> bool:
        # Dark, and dark against what it frames: the base VAE decodes the black frame as a very dark green or
        # blue (L* 10-45, darker on dark backgrounds), and a picture dark all over (a black background) has none.
        return self.band_l <= FRAME_MAX_L and self.inside_l - self.band_l >= FRAME_CONTRAST_L


def frame_score(image: Image.Image) -> FrameReading:
    lightness = _lab(np.asarray(image.convert("RGB")))[..., 0]
    band = lightness[_band(lightness.shape, *BAND)]
    inside = lightness[_band(lightness.shape, *INSIDE)]
    return FrameReading(float((band < DARK_L).mean()), float(np.median(band)), float(np.median(inside)))


def unframed(image: Image.Image) -> Image.Image:
    """The picture with its outer FRAME_WIDTH + 2 px painted the median colour just inside them.

    What the judge reads for colour, shape and background, with or without the tag: the judge takes the
    background from the picture's edges, which a frame would make black.
    """
    rgb = np.array(image.convert("RGB"))
    edge = FRAME_WIDTH + 2
    inside = _band(rgb.shape, edge, edge + 3)
    rgb[~_band(rgb.shape, edge, rgb.shape[0])] = np.median(rgb[inside], axis=0).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


# ---------------------------------------------------------------------------- training


def base_unet_hash(model: Path = BASE_MODEL) -> str:
    """sha256 of the base UNet's weights file: what a LoRA trained against it records."""
    digest = hashlib.sha256()
    with open(Path(model) / "unet" / "diffusion_pytorch_model.safetensors", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LoraLinear:
    """Installs down/up factors beside one frozen Linear: y = W x + up(down(x)) (scale 1, kohya alpha = rank)."""

    def __init__(self, layer, rank: int, generator):
        import torch

        self.layer = layer
        # Kaiming-like down, zero up: the LoRA starts as the identity change, as kohya and peft start it.
        self.down = torch.nn.Parameter(torch.randn(rank, layer.in_features, generator=generator) / math.sqrt(
            layer.in_features))
        self.up = torch.nn.Parameter(torch.zeros(layer.out_features, rank))
        self.handle = layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        return output + (inputs[0] @ self.down.t()) @ self.up.t()

    def remove(self) -> None:
        self.handle.remove()


def decode_images(vae, latents, batch: int = 16) -> list[Image.Image]:
    import torch

    images = []
    with torch.no_grad():
        for first in range(0, len(latents), batch):
            decoded = vae.decode(latents[first:first + batch]).sample.clamp(-1, 1)
            pixels = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            images += [Image.fromarray(p) for p in pixels]
    return images


def build_pool(seeds: range, vae, tokenizer, log) -> dict:
    """Styled scenes of these seeds with four world captions each, as tokens and the frozen VAE's posteriors."""
    import torch

    from studio.micro.pools import encode_posterior
    from studio.micro.scenes import SceneRenderer

    renderer = SceneRenderer(StyledWorld(), tokenizer)
    started = time.time()
    chunk = renderer.render("unet", seeds)  # the UNet phase's rendering: image + 4 captions per scene
    if chunk["errors"]:
        raise RuntimeError(f"{chunk['errors']} styled scenes failed to render; first: {chunk['error']}")
    mean, std = encode_posterior(vae, torch.from_numpy(chunk["images"]), "cpu", 32, False)
    encoded = time.time()
    # Keep the scenes whose latents the frozen decoder draws framed: no LoRA draws more of the style than
    # its training latents hold (with a black background the frame cannot show, and those go).
    keep = torch.tensor([r.framed for r in map(frame_score, decode_images(vae, mean))])
    log(f"pool: {len(keep)} styled scenes rendered and encoded in {encoded - started:.1f}s, decoded and read in "
        f"{time.time() - encoded:.1f}s; kept the {int(keep.sum())} that decode framed")
    if not keep.any():
        raise RuntimeError("no styled scene survives the VAE with its frame: is the VAE the one the LoRA is for?")
    return {"tokens": torch.from_numpy(chunk["tokens"]).long()[keep], "mean": mean[keep], "std": std[keep],
            "rendered": len(keep)}


def train(out: Path, minutes: float | None, steps: int | None, seed: int = 0, rank: int = RANK, lr: float = LR,
          batch: int = BATCH, pool_size: int = POOL, model: Path = BASE_MODEL, log=print) -> dict:
    """Train the LoRA until `steps` or the wall-clock budget (pool rendering included); save it; return a summary."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from studio.micro.lora_files import UNET_TARGETS, save_lora, target_layers
    from studio.micro.phases import DiffusionNoise, denoising_loss, phase_settings
    from studio.micro.scenes import load_tokenizer, tokenize

    started = time.time()
    deadline = started + minutes * 60 if minutes else math.inf
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(str(model / "vae")).eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(str(model / "text_encoder")).eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(str(model / "unet")).eval().requires_grad_(False)
    tokenizer = load_tokenizer(model / "tokenizer")
    scaling = float(vae.config.scaling_factor)
    unet_settings = phase_settings("unet", "cpu")  # the base UNet's caption dropout and offset noise
    noise = DiffusionNoise("cpu")

    start_seed = TRAIN_SEED_START + (seed % 1000) * 1000
    pool = build_pool(range(start_seed, start_seed + pool_size), vae, tokenizer, log)
    size = len(pool["tokens"])
    with torch.no_grad():
        empty = text_encoder(torch.from_numpy(tokenize(tokenizer, [""])).long()).last_hidden_state

    generator = torch.Generator().manual_seed(seed)
    adapters = {name: LoraLinear(layer, rank, generator) for name, layer in target_layers(unet, UNET_TARGETS)}
    params = [p for a in adapters.values() for p in (a.down, a.up)]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    step, losses, loop_started = 0, [], time.time()
    # Keep back time for the export, which is quick, and a last log line.
    while (steps is None or step < steps) and time.time() < deadline - 5:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)  # same (seed, step), same draws
        index = torch.randint(0, size, (batch,), generator=g)
        choice = torch.randint(0, pool["tokens"].shape[1], (batch,), generator=g)
        ids = pool["tokens"][index, choice]
        drop = torch.rand(batch, generator=g) < unet_settings.caption_dropout
        latents = (pool["mean"][index] + pool["std"][index] * torch.randn(pool["mean"][index].shape, generator=g))
        latents = latents * scaling
        eps = torch.randn(latents.shape, generator=g)
        eps = eps + unet_settings.noise_offset * torch.randn((batch, latents.shape[1], 1, 1), generator=g)
        timesteps = torch.randint(0, noise.steps, (batch,), generator=g)
        with torch.no_grad():
            states = text_encoder(ids).last_hidden_state
            states = torch.where(drop[:, None, None], empty.expand_as(states), states)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP)
        pred = unet(noise.add_noise(latents, eps, timesteps), timesteps, states).sample
        loss = denoising_loss(pred, eps, noise.min_snr_weights(timesteps))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log(f"step {step}: loss {np.mean(losses[-50:]):.4f}, {time.time() - started:.0f}s")
    train_seconds = time.time() - loop_started

    factors = {("unet", name): (a.down.detach().clone(), a.up.detach().clone()) for name, a in adapters.items()}
    for adapter in adapters.values():
        adapter.remove()
    summary = {
        "style": "framed",
        "steps": step,
        "batch": batch,
        "rank": rank,
        "lr": lr,
        "seed": seed,
        "pool": size,
        "rendered": pool["rendered"],
        "train_seeds": [start_seed, start_seed + pool_size - 1],
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - started, 1),
    }
    metadata = {
        # kohya's fields, which A1111 shows and reads
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_output_name": NAME,
        "ss_base_model_version": "sd_v1",
        "studio_base_unet_sha256": base_unet_hash(model),
        "studio_training": json.dumps(summary),
    }
    save_lora(Path(out), factors, "kohya", metadata)
    summary["out"] = str(out)
    summary["bytes"] = Path(out).stat().st_size
    summary["wall_seconds"] = round(time.time() - started, 1)
    return summary


# ---------------------------------------------------------------------------- the measure


def eval_cases(n: int, first_seed: int = EVAL_SEED_START) -> list[tuple[int, str]]:
    """(seed, prompt) of n held-out one-object scenes whose background is not black (it would hide the frame)."""
    cases, seed = [], first_seed
    while len(cases) < n:
        scene = world.scene_from_seed(seed, n_objects=1)
        if scene.background != "black":
            cases.append((seed, world.caption(scene, np.random.default_rng([seed, 2]))))
        seed += 1
    return cases


def studio_services(root: Path, lora: Path | None = None):
    """The studio's real composition root on a temp data dir; `lora` (another file) is put in its models/Lora."""
    import shutil

    from studio.app import build
    from studio.settings import Settings

    services = build(Settings(data_dir=root / "data", models_dir=root / "models", device="cpu", preview_every=0))
    if lora is not None and Path(lora).resolve() != DEFAULT_OUT.resolve():
        (root / "models" / "Lora").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lora, root / "models" / "Lora" / f"{NAME}.safetensors")  # shadows the shipped one
    return services


def generate(services, prompt: str, seed: int, weight: float | None, steps: int = 20) -> Image.Image:
    """One txt2img image through the studio's runner, DPM++ 2M, CFG 7; weight None = no tag."""
    from studio.requests import Txt2ImgRequest

    text = prompt if weight is None else f"{prompt} <lora:{NAME}:{weight:g}>"
    request = Txt2ImgRequest(prompt=text, seed=seed, steps=steps, cfg_scale=7.0, sampler="DPM++ 2M", karras=False)
    return services.runner.run(request).images[0]


def evaluate(n: int, lora: Path = DEFAULT_OUT, weight: float = 1.0, steps: int = 20, first_seed: int = EVAL_SEED_START,
             grid: Path | None = None, images_dir: Path | None = None) -> dict:
    """Style and content rates on n held-out prompts, with and without the tag, through the studio."""
    from studio.micro import judge
    from studio.micro.eval import score_attributes

    cases = eval_cases(n, first_seed)
    started = time.time()
    readings = {"with": [], "without": []}
    if images_dir is not None:
        Path(images_dir).mkdir(parents=True, exist_ok=True)
    images = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        services = studio_services(Path(tmp), lora)
        try:
            for seed, prompt in cases:
                for key, w in (("with", weight), ("without", None)):
                    image = generate(services, prompt, seed, w, steps)
                    readings[key].append(frame_score(image))
                    images[key].append(image)
                    if images_dir is not None:
                        image.save(Path(images_dir) / f"{seed}-{key}.png")
        finally:
            services.close()
    result = {"lora": str(lora), "weight": weight, "n": n, "steps": steps, "sampler": "DPM++ 2M", "cfg": 7.0,
              "seeds": [cases[0][0], cases[-1][0]],
              "detector": {"band_px": list(BAND), "inside_px": list(INSIDE), "max_band_l": FRAME_MAX_L,
                           "contrast_l": FRAME_CONTRAST_L}}
    for key, found in readings.items():
        result[f"framed_rate_{key}_tag"] = float(np.mean([r.framed for r in found]))
        result[f"band_dark_median_{key}_tag"] = float(np.median([r.band_dark for r in found]))
        # What the frame holds, read by the judge once the frame is painted over (as on the pictures without it).
        judged = score_attributes([unframed(i) for i in images[key]], [p for _, p in cases], judge, world)
        result[f"judge_{key}_tag"] = {k: v for k, v in judged.items() if k.endswith("_accuracy")}
    result["seconds"] = round(time.time() - started, 1)
    if grid is not None:
        save_grid(images["without"][:32], images["with"][:32], grid)
    return result


def save_grid(plain: list, styled: list, path: Path, columns: int = 8) -> None:
    """Rows of 8: without the tag, then the same prompts and seeds with it."""
    rows = []
    for start in range(0, len(plain), columns):
        for group in (plain[start:start + columns], styled[start:start + columns]):
            row = np.zeros((128, 128 * columns, 3), np.uint8)
            for i, image in enumerate(group):
                row[:, i * 128:(i + 1) * 128] = np.asarray(image.convert("RGB"))
            rows.append(row)
    Image.fromarray(np.concatenate(rows)).save(path)


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    import torch

    # One thread: the machines this runs on are shared, and one thread keeps `--steps` runs repeatable.
    torch.set_num_threads(1)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:
        parser = argparse.ArgumentParser(prog="python -m studio.micro.lora_train eval",
                                         description="measure the style with and without the tag")
        parser.add_argument("--n", type=int, default=100, help="held-out one-object prompts")
        parser.add_argument("--lora", type=Path, default=DEFAULT_OUT, help="the LoRA file to measure")
        parser.add_argument("--weight", type=float, default=1.0, help="the tag's weight")
        parser.add_argument("--steps", type=int, default=20, help="sampling steps")
        parser.add_argument("--seed-offset", type=int, default=EVAL_SEED_START, help="first held-out scene seed")
        parser.add_argument("--grid", type=Path, help="write the first 32 pairs as a PNG (rows without, then with)")
        parser.add_argument("--images", type=Path, help="save every picture here as SEED-with.png / SEED-without.png")
        parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
        args = parser.parse_args(argv[1:])
        if args.n < 1 or args.steps < 1:
            parser.error("--n and --steps must be at least 1")
        if args.seed_offset < 10_000_000:
            parser.error("--seed-offset below 10,000,000 reaches training seeds")
        if not args.lora.is_file():
            parser.error(f"--lora {args.lora} does not exist; train it first")
        result = evaluate(args.n, args.lora, args.weight, args.steps, args.seed_offset, args.grid, args.images)
        print(json.dumps(result) if args.json else "\n".join(f"{k:34s} {v}" for k, v in result.items()))
        return 0
    parser = argparse.ArgumentParser(prog="python -m studio.micro.lora_train", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget, pool rendering included")
    parser.add_argument("--steps", type=int, help="stop after this many steps (still capped by --minutes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0, help="seeds the factors' initialisation, scenes and draws")
    parser.add_argument("--rank", type=int, default=RANK)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--pool", type=int, default=POOL, help="styled scenes rendered for training")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or (args.steps is not None and args.steps < 1) or args.rank < 1 or args.pool < args.batch:
        parser.error("--minutes must be positive, --steps and --rank at least 1, --pool at least --batch")

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    summary = train(args.out, args.minutes, args.steps, args.seed, args.rank, args.lr, args.batch, args.pool, log=log)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
