"""The embedded 4x upscaler: a small Real-ESRGAN Compact net trained on the micro world, and its evaluation.

    python -m studio.micro.upscaler train --steps 2600 --minutes 15 --out assets/upscalers/micro-upscaler-4x.safetensors
    python -m studio.micro.upscaler eval --n 100 --json

A pair is one scene rendered at the world's SIZE (128, what the embedded model draws) and at 4x that (512,
the same geometry rendered at 512), so the net learns what the world really looks like at 512 rather than
an inverse of some resampling filter. Inputs are also degraded a little (blur, noise, JPEG) the way a
diffusion model's output differs from a clean rendering; the target stays the clean 512 rendering.

The net is spandrel's SRVGGNetCompact built from `build_compact_upscaler`'s state dict, so the shipped file
has exactly the layout spandrel recognises and the studio loads like any Real-ESRGAN Compact download.
Training scene seeds start at TRAIN_SEEDS, evaluation seeds at EVAL_SEEDS; both are far from the seed
blocks the diffusion models and their evaluation use (below 20,000,000). Everything runs on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from studio.micro import world
from studio.settings import ASSETS_DIR

NAME = "micro-upscaler-4x"
DEFAULT_OUT = ASSETS_DIR / "upscalers" / f"{NAME}.safetensors"
SCALE = 4
HR_SIZE = world.SIZE * SCALE
TRAIN_SEEDS = 20_000_000  # training scenes: TRAIN_SEEDS, TRAIN_SEEDS + 1, ... (at most SEED_SPAN of them)
EVAL_SEEDS = 30_000_000  # held-out scenes for `eval` and the tests
VAL_SEEDS = 40_000_000  # a few scenes the training log measures itself on (never used to pick weights)
VAL_SCENES = 8
SEED_SPAN = 10_000_000
NUM_FEAT = 32
NUM_CONV = 12
CROP = 32  # input crop side; the target crop is CROP * SCALE
BATCH = 16
POOL = 192  # scenes held in memory; REFRESH of them are replaced by new seeds every step
REFRESH = 4
EDGE_SHARE = 0.85  # crops centred near an edge: flat background teaches nothing after the first few steps
# The loss is the mean squared error, not L1: in this world most target pixels are exactly flat colour,
# and L1's constant pull on each of them makes "add nothing to the nearest-neighbour copy" a sharp local
# minimum that every L1 run here fell into within 200 steps (and never left). MSE has no such kink at
# zero, and it is what PSNR measures.
LR_PEAK = 1e-3
LR_FLOOR = 0.02  # of LR_PEAK, where the cosine ends
WARMUP_STEPS = 100
CLEAN_SHARE = 0.3  # training inputs left as rendered
# Evaluation conditions: fixed, mild degradations of the 128 input (the target is always the clean 512).
CONDITIONS = {
    "clean": {},
    "blur": {"blur": 0.7},
    "noise": {"noise": 3.0},
    "jpeg": {"jpeg": 75},
    "mixed": {"blur": 0.5, "noise": 2.0, "jpeg": 85},
}
METHODS = ("model", "Lanczos", "bicubic")


# -- data ----------------------------------------------------------------------------------------------------


def render_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The scene of `seed` at SIZE and at HR_SIZE, as uint8 RGB arrays."""
    scene = world.scene_from_seed(seed)
    return np.asarray(world.render_image(scene)), np.asarray(world.render_image(scene, size=HR_SIZE))


def degrade(image: np.ndarray, blur: float = 0.0, noise: float = 0.0, jpeg: int | None = None,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """A uint8 RGB image blurred (Gaussian sigma in pixels), noised (sigma in levels), JPEG-compressed, in that
    order: the softness, grain and block artefacts a decoded diffusion image shows next to a clean rendering."""
    out = image
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=blur, sigmaY=blur, borderType=cv2.BORDER_REFLECT)
    if noise > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        out = np.clip(out.astype(np.float32) + rng.normal(0.0, noise, out.shape), 0, 255).round().astype(np.uint8)
    if jpeg is not None:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(jpeg)])
        if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB image
            raise RuntimeError("JPEG encoding failed")
        out = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)


def random_degradation(rng: np.random.Generator) -> dict:
    """Training degradations: CLEAN_SHARE untouched, the rest a random mild mix (each part independently)."""
    if rng.random() < CLEAN_SHARE:
        return {}
    options: dict = {}
    if rng.random() < 0.6:
        options["blur"] = float(rng.uniform(0.3, 1.0))
    if rng.random() < 0.6:
        options["noise"] = float(rng.uniform(0.5, 5.0))
    if rng.random() < 0.5:
        options["jpeg"] = int(rng.integers(55, 96))
    return options


def _edge_pixels(image: np.ndarray) -> np.ndarray:
    """(y, x) of pixels whose 3x3 neighbourhood is not one flat colour: where an upscaler has work to do."""
    kernel = np.ones((3, 3), np.uint8)
    spread = (cv2.dilate(image, kernel).astype(np.int16) - cv2.erode(image, kernel)).max(axis=2)
    return np.argwhere(spread > 0)


class PairSampler:
    """Random (input crop, target crop) batches from a rolling pool of rendered scenes, reproducible by seed."""

    def __init__(self, seed: int = 0, pool: int = POOL, crop: int = CROP, first_seed: int = TRAIN_SEEDS):
        self.rng = np.random.default_rng(seed)
        self.crop = crop
        self.next_seed = first_seed
        self.entries = [self._render() for _ in range(pool)]

    def _render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.next_seed >= TRAIN_SEEDS + SEED_SPAN:
            raise RuntimeError("training ran out of its scene seed block; start a new block or train shorter")
        low, high = render_pair(self.next_seed)
        self.next_seed += 1
        return low, high, _edge_pixels(low)

    def refresh(self, count: int = REFRESH) -> None:
        for _ in range(count):
            self.entries[int(self.rng.integers(len(self.entries)))] = self._render()

    def batch(self, size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
        lows, highs = [], []
        c, n = self.crop, world.SIZE
        for _ in range(size):
            low, high, edges = self.entries[int(self.rng.integers(len(self.entries)))]
            # the whole 128 image is degraded before cropping, so JPEG blocks and blur borders sit where they
            # would in a real generated image rather than at the crop's edges
            low = degrade(low, rng=self.rng, **random_degradation(self.rng))
            if len(edges) and self.rng.random() < EDGE_SHARE:
                y, x = edges[int(self.rng.integers(len(edges)))] - c // 2 + self.rng.integers(-c // 4, c // 4 + 1, 2)
            else:
                y, x = self.rng.integers(0, n - c + 1, 2)
            y, x = int(np.clip(y, 0, n - c)), int(np.clip(x, 0, n - c))
            pair = [low[y:y + c, x:x + c], high[y * SCALE:(y + c) * SCALE, x * SCALE:(x + c) * SCALE]]
            # the dihedral group: the world has no preferred orientation at the scale of an edge
            turns, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            pair = [np.rot90(p, turns) for p in pair]
            if flip:
                pair = [p[:, ::-1] for p in pair]
            lows.append(np.ascontiguousarray(pair[0]))
            highs.append(np.ascontiguousarray(pair[1]))
        return _to_tensor(np.stack(lows)), _to_tensor(np.stack(highs))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (batch, h, w, 3) -> float (batch, 3, h, w) in 0..1."""
    images = images if images.flags.writeable else images.copy()  # torch refuses to share read-only memory
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)


# -- the net -------------------------------------------------------------------------------------------------


def build_net(seed: int = 0, num_feat: int = NUM_FEAT, num_conv: int = NUM_CONV) -> torch.nn.Module:
    """The trainable SRVGGNetCompact, built by spandrel from `build_compact_upscaler`'s state dict.

    Going through spandrel (rather than a copy of the class) means the weights trained here are, key for key,
    what spandrel detects as a 4x RealESRGAN Compact when the studio loads the file.
    """
    from spandrel import ModelLoader

    from studio.engine.upscalers import build_compact_upscaler

    state = build_compact_upscaler(scale=SCALE, num_feat=num_feat, num_conv=num_conv, seed=seed)
    # build_compact_upscaler draws torch's default conv initialisation, which shrinks the signal about
    # threefold per layer: through 14 layers nothing reaches the output and the net stays at its nearest-
    # neighbour shortcut. He initialisation for PReLU keeps the signal's scale from layer to layer.
    generator = torch.Generator().manual_seed(seed)
    last = max(int(key.split(".")[1]) for key in state)
    for index in range(0, last + 1, 2):
        weight = state[f"body.{index}.weight"]
        fan_in = weight.shape[1] * 9
        std = math.sqrt(2 / ((1 + 0.25 ** 2) * fan_in))
        state[f"body.{index}.weight"] = torch.randn(weight.shape, generator=generator) * std
        state[f"body.{index}.bias"] = torch.zeros_like(state[f"body.{index}.bias"])
    # The net adds a nearest-upscaled copy of its input; a small last layer starts it at that copy rather
    # than at copy + random texture, which the first hundred steps would only spend removing.
    state[f"body.{last}.weight"] = state[f"body.{last}.weight"] * 0.1
    net = ModelLoader(device="cpu").load_from_state_dict(state).model
    return net.float().train()


def _learning_rate(progress: float, step: int) -> float:
    """Linear warm-up, then a cosine from LR_PEAK to LR_FLOOR * LR_PEAK over the run's progress (0..1)."""
    warm = min(1.0, (step + 1) / WARMUP_STEPS)
    cosine = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return LR_PEAK * warm * cosine


def train(minutes: float, out: Path, steps: int | None = None, seed: int = 0, log_every: float = 60.0) -> dict:
    """Train for `minutes` of wall time, or exactly `steps` steps if given, and save the net to `out`.

    Without `steps` the learning-rate schedule follows the clock, so the run ends at the floor whatever the
    machine's speed, but its bytes depend on that speed. With `steps` the schedule follows the step count
    alone and the clock is only a cap: a run that ends on its steps is the same bytes every time on one
    thread of the same kind of CPU (one the cap cuts short says so in "stopped_by").
    """
    from studio.engine.upscalers import load_upscaler_file, save_upscaler

    torch.manual_seed(seed)
    started = time.monotonic()
    sampler = PairSampler(seed=seed)
    net = build_net(seed=seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=LR_PEAK, betas=(0.9, 0.99))
    budget = minutes * 60.0
    step, losses, last_log = 0, [], time.monotonic()
    validation = [render_pair(VAL_SEEDS + i) for i in range(VAL_SCENES)]
    lanczos = float(np.mean([psnr(_lanczos(low), high) for low, high in validation]))
    print(f"pool of {len(sampler.entries)} scenes rendered in {time.monotonic() - started:.1f}s", file=sys.stderr)
    while True:
        elapsed = time.monotonic() - started
        progress = step / steps if steps else elapsed / budget
        if progress >= 1 or elapsed >= budget:
            stopped_by = "steps" if steps and step >= steps else "time"
            break
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(progress, step)
        low, high = sampler.batch()
        loss = torch.nn.functional.mse_loss(net(low), high)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        sampler.refresh()
        losses.append(loss.item())
        step += 1
        if time.monotonic() - last_log >= log_every:
            print(f"step {step:5d}  {elapsed / 60:5.1f} min  RMSE {_rmse(losses):.2f} levels  "
                  f"lr {optimiser.param_groups[0]['lr']:.2e}  val PSNR {_validate(net, validation):.2f} dB "
                  f"(Lanczos {lanczos:.2f})", file=sys.stderr)
            last_log = time.monotonic()
    state = {key: value.detach().clone() for key, value in net.state_dict().items()}
    save_upscaler(state, out)
    model = load_upscaler_file(out)  # the file must be what the studio recognises, or the run has failed
    if model.architecture.id != "Compact" or model.scale != SCALE:
        raise RuntimeError(f"{out} loads as {model.architecture.name} x{model.scale}, not a 4x Compact net")
    return {"out": str(out), "steps": step, "minutes": round((time.monotonic() - started) / 60, 2),
            "scenes": sampler.next_seed - TRAIN_SEEDS, "seeds": [TRAIN_SEEDS, sampler.next_seed],
            "stopped_by": stopped_by, "final_rmse_levels": round(_rmse(losses), 3) if losses else None,
            "num_feat": NUM_FEAT, "num_conv": NUM_CONV, "crop": CROP, "batch": BATCH, "seed": seed,
            "size_bytes": Path(out).stat().st_size, "architecture": model.architecture.name}


def _rmse(losses: list[float]) -> float:
    """Root mean squared error in 0..255 levels over the last 100 steps' training losses (mean squares)."""
    return math.sqrt(float(np.mean(losses[-100:]))) * 255


def _lanczos(low: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(low).resize((HR_SIZE, HR_SIZE), Image.Resampling.LANCZOS))


def _validate(net: torch.nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean PSNR of the net on clean validation pairs, for the training log."""
    net.eval()
    with torch.inference_mode():
        scores = []
        for low, high in pairs:
            out = net(_to_tensor(low[None]))[0].permute(1, 2, 0).mul(255).round().clamp(0, 255)
            scores.append(psnr(out.to(torch.uint8).numpy(), high))
    net.train()
    return float(np.mean(scores))


# -- evaluation ----------------------------------------------------------------------------------------------


def psnr(image: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((image.astype(np.float64) - target.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def evaluate(n: int = 100, model: Path = DEFAULT_OUT, first_seed: int = EVAL_SEEDS,
             conditions: dict[str, dict] | None = None) -> dict:
    """Mean PSNR (dB) and mean absolute error (levels) against the 512 rendering, per condition and method.

    The model runs through the studio's own path (UpscalerRegistry + upscale_image), as Hires. fix runs it.
    Degradations are seeded by the scene seed, so every number is reproducible.
    """
    from studio.engine.upscalers import UpscalerRegistry, upscale_image

    conditions = CONDITIONS if conditions is None else conditions
    registry = UpscalerRegistry(Path(model).parent / "no-models-folder", extra={NAME: Path(model)})
    scores = {c: {m: {"psnr": [], "mae": []} for m in METHODS} for c in conditions}
    started = time.monotonic()
    for seed in range(first_seed, first_seed + n):
        low, high = render_pair(seed)
        for condition, options in conditions.items():
            image = Image.fromarray(degrade(low, rng=np.random.default_rng([seed, 1]), **options))
            outputs = {
                "model": upscale_image(image, NAME, SCALE, registry),
                "Lanczos": image.resize((HR_SIZE, HR_SIZE), Image.Resampling.LANCZOS),
                "bicubic": image.resize((HR_SIZE, HR_SIZE), Image.Resampling.BICUBIC),
            }
            for method, output in outputs.items():
                pixels = np.asarray(output.convert("RGB"))
                scores[condition][method]["psnr"].append(psnr(pixels, high))
                scores[condition][method]["mae"].append(float(np.abs(pixels.astype(np.int16) - high).mean()))
    table = {c: {m: {k: round(float(np.mean(v)), 3) for k, v in s.items()} for m, s in methods.items()}
             for c, methods in scores.items()}
    return {"model": str(model), "n": n, "seeds": [first_seed, first_seed + n], "conditions": conditions,
            "scores": table, "seconds": round(time.monotonic() - started, 1)}


def _print_table(result: dict) -> None:
    print(f"{result['n']} held-out scenes, seeds {result['seeds'][0]}..{result['seeds'][1] - 1}; "
          "PSNR dB / mean abs error (levels) against the 512 rendering")
    print(f"{'input':8s}" + "".join(f"{m:>20s}" for m in METHODS))
    for condition, methods in result["scores"].items():
        print(f"{condition:8s}" + "".join(f"{methods[m]['psnr']:>12.2f} / {methods[m]['mae']:5.2f}" for m in METHODS))


def main(argv: list[str] | None = None) -> int:
    # One thread: the studio's training machines are shared, and one thread makes `--steps` runs repeatable.
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(prog="python -m studio.micro.upscaler", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="train the net and save it as .safetensors")
    training.add_argument("--minutes", type=float, default=12.0, help="wall-time budget, rendering included")
    training.add_argument("--steps", type=int, help="train exactly this many steps (still capped by --minutes)")
    training.add_argument("--out", type=Path, default=DEFAULT_OUT)
    training.add_argument("--seed", type=int, default=0, help="seeds the net's initialisation and the crops")
    evaluation = commands.add_parser("eval", help="PSNR of the net, Lanczos and bicubic on held-out scenes")
    evaluation.add_argument("--n", type=int, default=100, help="held-out scenes")
    evaluation.add_argument("--model", type=Path, default=DEFAULT_OUT)
    evaluation.add_argument("--seed-offset", type=int, default=EVAL_SEEDS, help="first held-out scene seed")
    evaluation.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if args.command == "train":
        if args.minutes <= 0 or (args.steps is not None and args.steps < 1):
            parser.error("--minutes must be positive and --steps at least 1")
        print(json.dumps(train(args.minutes, args.out, steps=args.steps, seed=args.seed)))
        return 0
    if args.n < 1:
        parser.error("--n must be at least 1")
    if TRAIN_SEEDS <= args.seed_offset + args.n and args.seed_offset < TRAIN_SEEDS + SEED_SPAN:
        parser.error(f"--seed-offset {args.seed_offset} reaches the training seeds "
                     f"({TRAIN_SEEDS:,}..{TRAIN_SEEDS + SEED_SPAN - 1:,})")
    if not args.model.is_file():
        parser.error(f"--model {args.model} does not exist; train one first")
    result = evaluate(args.n, args.model, args.seed_offset)
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
