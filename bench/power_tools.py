"""Benchmark of #10's tools on the embedded model (not a test: numbers go to a JSON file).

- time per image with one LoRA versus none (the tag loads the file and unloads it after the run);
- a 2x Hires. fix (128 -> 256) with each kind of upscaler, versus the first pass alone;
- an Upscale run (Extras) of one 128 image to 512 with Lanczos and with the embedded upscaler.

Usage: OMP_NUM_THREADS=2 .venv/bin/python bench/power_tools.py [--out bench/results/power_tools.json] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from studio.app import build
from studio.micro.lora_files import random_factors, save_lora
from studio.requests import Txt2ImgRequest, UpscaleRequest
from studio.settings import Settings

PROMPT = "a large red circle on the left, on a blue background"


def timed(services, request, repeats: int) -> float:
    """Median seconds of a recorded run of `request` (first run discarded: it pays one-off costs)."""
    services.runner.run(request)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        services.runner.run(request)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench/results/power_tools.json")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="studio-bench-"))
    services = build(Settings(data_dir=folder / "data", models_dir=folder / "models", device="cpu",
                              preview_every=0))
    loras = services.registry.loras.names()
    if not loras:  # no trained LoRA shipped: a random one of the same rank measures the same cost
        model = services.models.load(None)
        save_lora(folder / "models" / "Lora" / "bench.safetensors", random_factors(model.pipe, rank=8, std=0.05))
        loras = ["bench"]
    base = dict(prompt=PROMPT, seed=7, steps=20, sampler="DPM++ 2M")
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
               "model": services.registry.default_name(), "steps": 20, "size": 128, "lora": loras[0]}
    results["per_image_s"] = {"none": timed(services, Txt2ImgRequest(**base), args.repeats),
                              "one_lora": timed(services, Txt2ImgRequest(**{**base, "prompt": f"{PROMPT} "
                                                                            f"<lora:{loras[0]}:1>"}), args.repeats)}
    upscalers = [name for name in services.registry.upscalers.names()
                 if name in ("Latent", "Lanczos") or services.registry.upscalers.kind(name) == "model"]
    results["hires_2x_s"] = {name: timed(services, Txt2ImgRequest(**base, enable_hr=True, hr_upscaler=name),
                                         args.repeats) for name in upscalers}
    picture = services.runner.run(Txt2ImgRequest(**base)).images[0]
    results["upscale_4x_s"] = {name: timed(services, UpscaleRequest(image=picture, upscaler=name, scale=4),
                                           args.repeats) for name in upscalers if name != "Latent"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
