"""Train and measure micro-outlined: a style LoRA for the embedded model (a thick black outline round every object).

    python -m studio.micro.lora_train --minutes 12 --out assets/loras/micro-outlined.safetensors
    python -m studio.micro.lora_train eval --n 100 --json

The base model never saw an outline: the world draws flat objects on flat backgrounds. Training
renders the world's scenes with every object outlined (`render_styled`), keeps the world's own
captions (the `<lora:micro-outlined:1>` tag is the trigger, so no trigger word is taught), and
trains rank-8 LoRA factors on the UNet's attention projections (to_q, to_k, to_v, to_out.0) with
the base model frozen, on the base training's objective: epsilon prediction on the frozen VAE's
latents, SD1.5's DDPM schedule, min-SNR (gamma 5) weights, offset noise and 10% caption dropout
(`studio.micro.phases`). Every draw is seeded. The factors are exported in the kohya layout
(`studio.micro.lora_files`), the layout A1111 users have.

A LoRA is a difference to one UNet's weights: retrain it whenever the base UNet changes. The file
records the hash of the UNet it was trained against (`studio_base_unet_sha256`) and the test of the
shipped file fails when the embedded UNet no longer matches.

Why an outline and not hatching: both go through the base VAE, which was trained on flat scenes
only and whose latent cells are 8 px. Its encoder turns 8-16 px hatching into blotches, so the
UNet could never learn stripes from those latents; a 6 px outline outside the object survives the
encoder and decoder as a dark ring (see assets/loras/TRAINING.md).

The detector (`outline_score`): find the object's coloured core (pixels far from the background
colour and not dark), then look at a ring 2-4 px outside it; an image is outlined when most of
that ring is dark (CIELAB L* below 25: the world's black is L* 7, its darkest other colour, purple,
is L* 41). A plain object's ring is background, an outlined one's is the outline. A black object
has no coloured core and a black background hides an outline, so the measured prompts name
neither (training renders every scene).
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
from scipy import ndimage

from studio.micro import world

ROOT = Path(__file__).resolve().parents[2]
BASE_MODEL = ROOT / "assets" / "models" / "micro-sd"
NAME = "micro-outlined"
DEFAULT_OUT = ROOT / "assets" / "loras" / f"{NAME}.safetensors"

OUTLINE_WIDTH = 10.0  # px at 128; thinner outlines do not survive the base VAE (TRAINING.md)
OUTLINE_COLOUR = world.COLOURS["black"]

# Scene seeds: training draws from a block no base phase used (the base phases use 0-9,000,000,
# studio.micro.scenes.SEED_BLOCKS); the measure from far above the held-out offset, away from the
# seeds studio.micro.eval and the embedded-model tests use (10,000,000 + up to a few thousand,
# and the ControlNet cases at +1,000,000 and +2,000,000).
TRAIN_SEED_START = 9_000_000
EVAL_SEED_START = 10_900_000

RANK = 8
LR = 1e-3
BATCH = 8
WARMUP = 50
POOL = 64  # scenes rendered, encoded and inverted for training
INVERT_ITERATIONS = 25
INVERT_LR = 0.1
INVERT_PULL = 0.05
CHECK = 32
GRAD_CLIP = 1.0

# Detector thresholds (pixels of a 128 image).
DARK_L = 25.0
RIM = (2, 4)  # the band read for the outline, in px inside the object's outer edge
MIN_AREA = 40  # the judge's smallest object
MIN_INSIDE = 20  # pixels, about a 5 px disc: what an outlined object must hold that is not dark
OUTLINED_SHARE = 0.5  # dark share of the ring above which an object counts as outlined


# ---------------------------------------------------------------------------- the style


def render_styled(scene: world.Scene, style: str = "outlined") -> Image.Image:
    """The scene as world.render_image draws it, with a black outline OUTLINE_WIDTH px wide round each object.

    The outline lies outside the object, so the object keeps its colour, shape and size. Objects
    are composited back to front, each one's outline first: a nearer object and its outline cover a
    farther one. Each object's antialiased coverage is read back from the world's own rendering
    (objects never overlap, so every pixel near an object blends its colour with the background's
    only), which keeps the edges exactly as the world draws them.
    """
    if style != "outlined":
        raise ValueError(f"unknown style {style!r}; this LoRA draws 'outlined'")
    base = np.asarray(world.render_image(scene), dtype=np.float32)
    background = np.array(world.COLOURS[scene.background], dtype=np.float32)
    black = np.array(OUTLINE_COLOUR, dtype=np.float32)
    out = np.empty_like(base)
    out[:] = background
    near = np.ones((5, 5), np.uint8)
    for obj, silhouette in zip(scene.objects, world.render_silhouettes(scene)):
        colour = np.array(world.COLOURS[obj.colour], dtype=np.float32)
        direction = colour - background
        # Coverage = where the pixel sits between background and object colour, near this object only.
        around = cv2.dilate(silhouette.astype(np.uint8), near).astype(bool)
        alpha = np.clip((base - background) @ direction / float(direction @ direction), 0.0, 1.0) * around
        outside = ndimage.distance_transform_edt(~silhouette)
        ring = np.clip(OUTLINE_WIDTH + 0.5 - outside, 0.0, 1.0)  # antialiased outer edge
        out += ring[..., None] * (black - out)
        out += alpha[..., None] * (colour - out)
    return Image.fromarray(np.rint(out).astype(np.uint8), "RGB")


class StyledWorld:
    """studio.micro.world with render_image drawing the style: what SceneRenderer renders training scenes from."""

    def __init__(self, style: str = "outlined"):
        self.style = style

    def __getattr__(self, name):
        return getattr(world, name)

    def render_image(self, scene):
        return render_styled(scene, self.style)


# ---------------------------------------------------------------------------- the detector


def _lab(rgb: np.ndarray) -> np.ndarray:
    flat = np.asarray(rgb, dtype=np.float32).reshape(1, -1, 3) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(np.shape(rgb))


_PALETTE = {name: _lab(np.array(rgb, dtype=np.float32)) for name, rgb in world.COLOURS.items()}


def _background(rgb: np.ndarray) -> tuple[str, np.ndarray]:
    """The named colour of the 2 px frame's majority, and the frame's median Lab value of that colour."""
    frame = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3), rgb[:, :2].reshape(-1, 3),
                            rgb[:, -2:].reshape(-1, 3)])
    lab = _lab(frame)
    names = list(_PALETTE)
    labels = np.argmin(np.stack([np.linalg.norm(lab - _PALETTE[n], axis=-1) for n in names]), axis=0)
    index = int(np.bincount(labels, minlength=len(names)).argmax())
    return names[index], np.median(lab[labels == index], axis=0)


@dataclass
class OutlineReading:
    """What the detector saw: the background's name and, per object (largest first), its region, the dark share
    of its rim (RIM px inside its edge) and how many pixels deeper than that are not dark."""

    background: str
    regions: list[np.ndarray]
    rim_dark: list[float]
    inside_light: list[int]

    def object_outlined(self, i: int) -> bool:
        return self.rim_dark[i] >= OUTLINED_SHARE and self.inside_light[i] >= MIN_INSIDE

    @property
    def outlined(self) -> bool:
        """The largest object is outlined (the measured prompts name one object)."""
        return bool(self.regions) and self.object_outlined(0)

    @property
    def all_outlined(self) -> bool:
        return bool(self.regions) and all(self.object_outlined(i) for i in range(len(self.regions)))


def outline_score(image: Image.Image) -> OutlineReading:
    """Find the objects as the judge does (pixels far from the background colour) and read each one's rim.

    An object is outlined when most of its rim, the band RIM px inside its outer edge, is dark and
    something deeper inside is not (a solid black object is not an outlined one). The band skips the
    outermost pixel, a blend with the background. A plain object's rim is its own colour; an outlined
    one's is the outline. Whether the colour inside is the right one is not the detector's business:
    `content` reads that.
    """
    rgb = np.asarray(image.convert("RGB"))
    # A median filter removes the sampler's pixel noise without moving edges (as the judge does).
    lab = _lab(cv2.medianBlur(np.ascontiguousarray(rgb), 3))
    background, background_lab = _background(rgb)
    # Foreground as the judge draws it: farther from the background than 0.45 of its nearest named neighbour.
    others = [float(np.linalg.norm(_PALETTE[n] - _PALETTE[background])) for n in _PALETTE if n != background]
    threshold = float(np.clip(0.45 * min(others), 12.0, 25.0))
    far = np.linalg.norm(lab - background_lab, axis=-1) > threshold
    far = cv2.morphologyEx(far.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    dark = lab[..., 0] < DARK_L
    count, labels = cv2.connectedComponents(far, connectivity=8)
    regions = [ndimage.binary_fill_holes(labels == n) for n in range(1, count)]
    regions = sorted((r for r in regions if r.sum() >= MIN_AREA), key=lambda r: int(r.sum()), reverse=True)
    rim_dark, inside_light = [], []
    for region in regions:
        depth = ndimage.distance_transform_edt(region)
        rim = (depth >= RIM[0]) & (depth <= RIM[1])
        rim_dark.append(float(dark[rim].mean()) if rim.any() else 0.0)
        inside_light.append(int(((depth > RIM[1]) & ~dark).sum()))
    return OutlineReading(background, regions, rim_dark, inside_light)


def content(image: Image.Image, reading: OutlineReading | None = None) -> dict:
    """Colour and shape of the largest object and the background, read the same way with or without an outline.

    The judge's own colour reading is thrown off by an outline (its colour is the median of the pixels
    farthest from the background, which on a light background is the black ring), so this reads the
    detector's largest region: colour = the named colour (not black, not the background) nearest the
    median of its pixels that are not dark; shape = the judge's classification of the region, or of its
    part that is not dark when the region is outlined (an outline outside the object rounds its corners).
    """
    from studio.micro import judge

    reading = reading or outline_score(image)
    result = {"background": reading.background, "colour": None, "shape": None}
    if not reading.regions:
        return result
    region = reading.regions[0]
    rgb = np.asarray(image.convert("RGB"))
    lab = _lab(rgb)
    light = region & (lab[..., 0] >= DARK_L)
    if light.sum() >= MIN_AREA:
        median = np.median(lab[light], axis=0)
        candidates = [n for n in _PALETTE if n not in ("black", reading.background)]
        result["colour"] = min(candidates, key=lambda n: float(np.linalg.norm(_PALETTE[n] - median)))
    shape_mask = region
    if reading.outlined and light.sum() >= MIN_AREA:
        count, labels = cv2.connectedComponents(light.astype(np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel())[1:]
        shape_mask = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    result["shape"] = judge.classify_shape(judge.shape_features(shape_mask))
    return result


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


def invert(vae, images, start, masks, iterations: int, lr: float = INVERT_LR, pull: float = INVERT_PULL,
           batch: int = 8):
    """Latents the frozen decoder draws as these images: the encoder's means refined by Adam on the decoder's loss.

    The base VAE's encoder never saw an outline and maps one to a blotch (TRAINING.md), while its decoder
    can draw one from the right latents. The loss is the VAE phase's reconstruction loss (L1 + L2); only
    the latent cells near an object move (masks, 1 inside), and a pull towards the encoder's latents keeps
    them close to what the base UNet learned to draw: unconstrained, the inversion finds high-frequency
    latents that a UNet cannot learn to denoise.
    """
    import torch

    out = []
    for first in range(0, len(images), batch):
        x = images[first:first + batch]
        z0, mask = start[first:first + batch], masks[first:first + batch]
        z = z0.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        for _ in range(iterations):
            latents = z0 + (z - z0) * mask
            decoded = vae.decode(latents).sample
            loss = (decoded - x).abs().mean() + ((decoded - x) ** 2).mean() + pull * ((latents - z0) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        out.append((z0 + (z - z0) * mask).detach())
    return torch.cat(out) if out else start


def object_cells(scene: world.Scene, margin: int = 1):
    """1 on the latent cells (8 px) an object or its outline touches, grown by `margin` cells; shape 1 x 16 x 16."""
    import torch

    covered = np.logical_or.reduce([ndimage.distance_transform_edt(~s) <= OUTLINE_WIDTH
                                    for s in world.render_silhouettes(scene)])
    size = world.SIZE // 8
    cells = cv2.resize(covered.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0
    grown = cv2.dilate(cells.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return torch.from_numpy(grown.astype(np.float32))[None]


def decode_images(vae, latents, batch: int = 16) -> list[Image.Image]:
    import torch

    images = []
    with torch.no_grad():
        for first in range(0, len(latents), batch):
            decoded = vae.decode(latents[first:first + batch]).sample.clamp(-1, 1)
            pixels = ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
            images += [Image.fromarray(p) for p in pixels]
    return images


def build_pool(seeds: range, vae, tokenizer, log, iterations: int = INVERT_ITERATIONS) -> dict:
    """Styled scenes of these seeds with four world captions each: tokens, inverted latents and the encoder's std."""
    import torch

    from studio.micro.pools import encode_posterior, images_to_tensor
    from studio.micro.scenes import SceneRenderer

    renderer = SceneRenderer(StyledWorld(), tokenizer)
    started = time.time()
    chunk = renderer.render("unet", seeds)  # the UNet phase's rendering: image + 4 captions per scene
    if chunk["errors"]:
        raise RuntimeError(f"{chunk['errors']} styled scenes failed to render; first: {chunk['error']}")
    images = torch.from_numpy(chunk["images"])
    mean, std = encode_posterior(vae, images, "cpu", 32, False)
    encoded = time.time()
    masks = torch.stack([object_cells(world.scene_from_seed(int(seed))) for seed in chunk["seeds"]])
    latents = invert(vae, images_to_tensor(images, "cpu"), mean, masks, iterations) if iterations else mean
    # What the UNet is taught to draw: the first CHECK latents decoded, read by the detector (a decode costs
    # about 0.1 s an image, so not the whole pool).
    readings = [outline_score(image) for image in decode_images(vae, latents[:CHECK])]
    share = float(np.mean([r.all_outlined for r in readings]))
    log(f"pool: {len(chunk['seeds'])} styled scenes rendered and encoded in {encoded - started:.1f}s, "
        f"inverted ({iterations} iterations) in {time.time() - encoded:.1f}s; of the first {len(readings)} decoded, "
        f"{share:.0%} show every object outlined")
    return {"tokens": torch.from_numpy(chunk["tokens"]).long(), "mean": latents, "std": std,
            "outlined_share": share, "seeds": chunk["seeds"]}


def train(out: Path, minutes: float | None, steps: int | None, seed: int = 0, rank: int = RANK, lr: float = LR,
          batch: int = BATCH, pool_size: int = POOL, model: Path = BASE_MODEL, log=print,
          iterations: int = INVERT_ITERATIONS, pool_cache: Path | None = None) -> dict:
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
    if pool_cache is not None and Path(pool_cache).is_file():
        pool = torch.load(pool_cache, weights_only=False)
        log(f"pool: {len(pool['tokens'])} scenes from {pool_cache}")
    else:
        pool = build_pool(range(start_seed, start_seed + pool_size), vae, tokenizer, log, iterations)
        if pool_cache is not None:
            torch.save(pool, pool_cache)
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
        "style": "outlined",
        "steps": step,
        "batch": batch,
        "rank": rank,
        "lr": lr,
        "seed": seed,
        "pool": size,
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
    """(seed, prompt) of n held-out one-object scenes naming neither a black object nor a black background."""
    cases, seed = [], first_seed
    while len(cases) < n:
        scene = world.scene_from_seed(seed, n_objects=1)
        if scene.background != "black" and all(o.colour != "black" for o in scene.objects):
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
             grid: Path | None = None) -> dict:
    """Style and content rates on n held-out prompts, with and without the tag, through the studio."""
    from studio.micro import judge
    from studio.micro.eval import score_attributes

    cases = eval_cases(n, first_seed)
    started = time.time()
    rows = {"with": [], "without": []}
    images = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        services = studio_services(Path(tmp), lora)
        try:
            for seed, prompt in cases:
                for key, w in (("with", weight), ("without", None)):
                    image = generate(services, prompt, seed, w, steps)
                    reading = outline_score(image)
                    expected = world.parse_prompt(prompt)
                    seen = content(image, reading)
                    rows[key].append({
                        "outlined": reading.outlined,
                        "share": reading.rim_dark[0] if reading.regions else 0.0,
                        **{f: (seen[f] == expected[f]) for f in ("colour", "shape", "background")
                           if expected[f] is not None},
                    })
                    images[key].append(image)
        finally:
            services.close()
    result = {"lora": str(lora), "weight": weight, "n": n, "steps": steps, "sampler": "DPM++ 2M", "cfg": 7.0,
              "seeds": [cases[0][0], cases[-1][0]], "detector": {"dark_l": DARK_L, "rim_px": list(RIM),
                                                                  "outlined_share": OUTLINED_SHARE}}
    for key, found in rows.items():
        result[f"outlined_rate_{key}_tag"] = float(np.mean([r["outlined"] for r in found]))
        result[f"rim_dark_median_{key}_tag"] = float(np.median([r["share"] for r in found]))
        for f in ("colour", "shape", "background"):
            hits = [r[f] for r in found if f in r]
            result[f"{f}_accuracy_{key}_tag"] = float(np.mean(hits)) if hits else None
        # The judge's own scores for reference (its colour reading is not made for outlined objects).
        judged = score_attributes(images[key], [p for _, p in cases], judge, world)
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
        parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
        args = parser.parse_args(argv[1:])
        if args.n < 1 or args.steps < 1:
            parser.error("--n and --steps must be at least 1")
        if args.seed_offset < 10_000_000:
            parser.error("--seed-offset below 10,000,000 reaches training seeds")
        if not args.lora.is_file():
            parser.error(f"--lora {args.lora} does not exist; train it first")
        result = evaluate(args.n, args.lora, args.weight, args.steps, args.seed_offset, args.grid)
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
    parser.add_argument("--invert-iterations", type=int, default=INVERT_ITERATIONS,
                        help="decoder-inversion steps per scene (0: the encoder's latents, which lose the style)")
    parser.add_argument("--pool-cache", type=Path, help="save the pool here, or load it if there (experiments)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or (args.steps is not None and args.steps < 1) or args.rank < 1 or args.pool < args.batch:
        parser.error("--minutes must be positive, --steps and --rank at least 1, --pool at least --batch")

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    summary = train(args.out, args.minutes, args.steps, args.seed, args.rank, args.lr, args.batch, args.pool, log=log,
                    iterations=args.invert_iterations, pool_cache=args.pool_cache)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
