"""Evaluate the embedded model on held-out scenes with the analytic judge; prints one JSON object.

    python -m studio.micro.eval --model assets/models/micro-sd --n 200 --json [--controlnets]

Prompts are the world's captions of single-object scenes drawn with seeds at or above
--seed-offset (training draws below it). Each image comes from a plain
StableDiffusionPipeline loaded offline from the folder, with DPM++ 2M, 20 steps, CFG 7 and a
CPU generator seeded by the scene's seed, so a number here is reproducible. The judge
names what it sees; an attribute is scored when the prompt names it.

With --controlnets (and the ControlNet folders beside the model): pose_limb_coverage is
the share of the OpenPose map's limb pixels that the generated figure covers, with and
without the pose ControlNet for the same prompts and seeds; depth_iou is the IoU between
the depth map's near region and the generated objects. `*_reference` values score the
world's own rendering of the scene, the best a model can do under these measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np

FIELDS = ("colour", "shape", "position", "size", "background")
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "assets" / "models" / "micro-sd"
POSE_SEED_SHIFT = 1_000_000  # pose and depth cases use their own held-out seeds
DEPTH_SEED_SHIFT = 2_000_000
FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as object, when the judge finds none


def load_pipeline(model: Path, device: str):
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    # Quiet diffusers' notice on casting models that keep no fp32-only modules (ours).
    diffusers_logging.set_verbosity_error()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
        dtype=dtype,
    )
    # DPM++ 2M, the studio's default sampler.
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(pipe, prompts: list[str], seeds: list[int], args, **extra) -> list:
    """Images for prompts in batches of args.batch, one CPU generator per image."""
    import torch

    images = []
    for start in range(0, len(prompts), args.batch):
        part = slice(start, start + args.batch)
        kwargs = {k: v[part] if isinstance(v, list) else v for k, v in extra.items()}
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds[part]]
        images += pipe(
            prompt=prompts[part],
            generator=generators,
            num_inference_steps=args.steps,
            guidance_scale=args.cfg,
            height=128,
            width=128,
            **kwargs,
        ).images
    return images


def score_attributes(images, prompts, judge, world) -> dict:
    """Per-attribute accuracy of the largest judged object against what the prompt names."""
    hits = {f: [] for f in FIELDS}
    single = []
    for image, prompt in zip(images, prompts):
        expected = world.parse_prompt(prompt)
        judgement = judge.judge_image(image)
        seen = judgement.objects[0] if judgement.objects else None
        single.append(len(judgement.objects) == 1)
        for f in FIELDS:
            if expected.get(f) is None:
                continue
            got = judgement.background if f == "background" else (getattr(seen, f) if seen else None)
            hits[f].append(got == expected[f])
    result = {f"{f}_accuracy": (float(np.mean(h)) if h else None) for f, h in hits.items()}
    result.update({f"{f}_scored": len(h) for f, h in hits.items()})
    result["one_object_accuracy"] = float(np.mean(single)) if single else None
    return result


def object_mask(image, judge) -> np.ndarray:
    """Pixels of the largest judged object, or pixels far from the border's colour if it finds none."""
    judgement = judge.judge_image(image)
    if judgement.objects:
        return judgement.objects[0].mask
    return foreground(image)


def foreground(image) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.linalg.norm(rgb - np.median(border, axis=0), axis=-1) > FOREGROUND_DISTANCE


def all_objects_mask(image, judge) -> np.ndarray:
    judgement = judge.judge_image(image)
    if not judgement.objects:
        return foreground(image)
    return np.logical_or.reduce([o.mask for o in judgement.objects])


def limb_coverage(pose_map, mask: np.ndarray) -> float:
    limbs = np.asarray(pose_map.convert("RGB")).max(axis=-1) > 0
    return float((limbs & mask).sum() / max(1, limbs.sum()))


def near_region(depth_map) -> np.ndarray:
    depth = np.asarray(depth_map.convert("L"), dtype=np.float32)
    border = np.concatenate([depth[0], depth[-1], depth[:, 0], depth[:, -1]])
    return depth > np.median(border) + 10


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def evaluate_controlnets(pipe, args, judge, world) -> dict:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    result = {}
    root = args.model.parent
    count = args.n_control
    folders = {"pose": root / "micro-controlnet-pose", "depth": root / "micro-controlnet-depth"}
    for kind, folder in folders.items():
        if not folder.exists():
            result[f"{kind}_controlnet"] = f"missing: {folder}"
            continue
        controlnet = ControlNetModel.from_pretrained(str(folder), dtype=pipe.unet.dtype).to(pipe.device)
        control_pipe = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=controlnet, dtype=pipe.unet.dtype)
        control_pipe.set_progress_bar_config(disable=True)
        shift = POSE_SEED_SHIFT if kind == "pose" else DEPTH_SEED_SHIFT
        seeds = [args.seed_offset + shift + i for i in range(count)]
        if kind == "pose":
            scenes = [world.scene_from_seed(s, n_objects=1, shapes=("figure",)) for s in seeds]
            hints = [world.render_pose(scene) for scene in scenes]
        else:
            scenes = [world.scene_from_seed(s) for s in seeds]
            hints = [world.render_depth(scene).convert("RGB") for scene in scenes]
        prompts = [world.caption(scene, np.random.default_rng([s, 2])) for scene, s in zip(scenes, seeds)]
        controlled = generate(control_pipe, prompts, seeds, args, image=hints,
                              controlnet_conditioning_scale=args.control_scale)
        plain = generate(pipe, prompts, seeds, args)
        truth = [world.render_image(scene) for scene in scenes]
        if kind == "pose":
            measure = lambda image, hint: limb_coverage(hint, object_mask(image, judge))  # noqa: E731
            key = "pose_limb_coverage"
        else:
            measure = lambda image, hint: iou(near_region(hint), all_objects_mask(image, judge))  # noqa: E731
            key = "depth_iou"
        result[key] = float(np.mean([measure(i, h) for i, h in zip(controlled, hints)]))
        result[f"{key}_without_control"] = float(np.mean([measure(i, h) for i, h in zip(plain, hints)]))
        result[f"{key}_reference"] = float(np.mean([measure(i, h) for i, h in zip(truth, hints)]))
        result[f"{kind}_n"] = count
    return result


def judge_proof(judge, n: int) -> dict | None:
    prove = getattr(judge, "prove_judge", None)
    if prove is None or n <= 0:
        return None
    return prove(n=n, multi_n=0)


def save_grid(images, path: Path, columns: int = 8) -> None:
    from PIL import Image

    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * 128, rows * 128))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * 128, (i // columns) * 128))
    grid.save(path)


def evaluate(args) -> dict:
    import torch

    from studio.micro import judge, world

    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    pipe = load_pipeline(args.model, args.device)
    seeds = [args.seed_offset + i for i in range(args.n)]
    scenes = [world.scene_from_seed(s, n_objects=1) for s in seeds]
    prompts = [world.caption(scene, np.random.default_rng([s, 2])) for scene, s in zip(scenes, seeds)]
    start = time.perf_counter()
    images = generate(pipe, prompts, seeds, args)
    seconds = time.perf_counter() - start
    result = {
        "model": str(args.model),
        "n": args.n,
        "device": args.device,
        "seed_offset": args.seed_offset,
        "steps": args.steps,
        "cfg": args.cfg,
        "sampler": "DPM++ 2M",
        "seconds_per_image": seconds / max(1, args.n),
    }
    result.update(score_attributes(images, prompts, judge, world))
    if args.save_grid:
        save_grid(images[:64], args.save_grid)
    if args.controlnets:
        result["control_scale"] = args.control_scale
        result.update(evaluate_controlnets(pipe, args, judge, world))
    result["judge_accuracy"] = judge_proof(judge, args.judge_n)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.micro.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the exported micro-sd folder")
    parser.add_argument("--n", type=int, default=200, help="held-out single-object prompts")
    parser.add_argument("--seed-offset", type=int, default=10_000_000, help="first held-out scene seed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--controlnets", action="store_true", help="also score the pose and depth ControlNets")
    parser.add_argument("--control-scale", type=float, default=1.0, help="ControlNet weight (A1111's Weight)")
    parser.add_argument("--n-control", type=int, help="scenes per ControlNet (default n/4, at least 8)")
    parser.add_argument("--judge-n", type=int, default=200, help="scenes for the judge's own proof (0: skip)")
    parser.add_argument("--save-grid", type=Path, help="write the first 64 images as one PNG grid")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1 or args.steps < 1:
        parser.error("--n, --batch and --steps must be at least 1")
    if args.seed_offset < 10_000_000:
        parser.error(f"--seed-offset {args.seed_offset} reaches training seeds (below 10,000,000)")
    if not (args.model / "model_index.json").exists():
        parser.error(f"--model {args.model} is not a diffusers folder (no model_index.json)")
    args.n_control = args.n_control or max(8, args.n // 4)
    result = evaluate(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:36s} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
