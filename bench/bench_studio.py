"""Benchmark of the studio path (not a test: numbers go to a JSON file).

Measures, on the tiny built-in-code pipeline (and on the embedded model when present):
- overhead: studio end-to-end time per image (validate, record, sample, PNG with parameters,
  atomic writes, history row) versus a plain diffusers call on the same pipeline and settings;
- cold start to first image: a fresh `python -m studio generate` process, wall clock;
- model switch: loading a model that is cached versus one that is not.

Usage: .venv/bin/python bench/bench_studio.py [--out bench/results/studio.json] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from studio.app import build
from studio.engine.devices import cpu_generator
from studio.engine.schedulers import make_scheduler
from studio.micro.tiny import save_tiny_model
from studio.requests import Txt2ImgRequest
from studio.settings import ASSETS_DIR, Settings


def paired_medians(first, second, repeats: int) -> tuple[float, float]:
    """Median seconds of two functions run alternately, so drift of a noisy machine hits both alike."""
    first(), second()  # warm-up: first calls pay one-off costs (allocations, kernel selection)
    times_first, times_second = [], []
    for _ in range(repeats):
        for function, times in ((first, times_first), (second, times_second)):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
    return statistics.median(times_first), statistics.median(times_second)


def overhead(services, model: str, size: int, steps: int, repeats: int) -> dict:
    """Median seconds per image through the studio versus a bare pipeline call."""
    request = Txt2ImgRequest(prompt="a red circle on the left, blue background", model=model, steps=steps,
                             width=size, height=size, seed=7, sampler="DPM++ 2M")
    pipe = services.models.pipeline("txt2img", model)

    def plain():
        pipe.scheduler = make_scheduler("DPM++ 2M", True, dict(pipe.scheduler.config))
        pipe(prompt=request.prompt, num_inference_steps=steps, guidance_scale=7.0, width=size, height=size,
             generator=[cpu_generator(7)], output_type="pil")

    def studio():
        services.runner.run(request)

    plain_s, studio_s = paired_medians(plain, studio, repeats)
    return {"model": model, "size": size, "steps": steps, "repeats": repeats, "plain_diffusers_s": round(plain_s, 4),
            "studio_s": round(studio_s, 4), "overhead_ms": round(1000 * (studio_s - plain_s), 1),
            "overhead_percent": round(100 * (studio_s - plain_s) / plain_s, 2)}


def cold_start(data_dir: Path, model_dir: Path) -> dict:
    """A new process: imports, history open, model load, one 2-step image, outputs written."""
    env = dict(os.environ, STUDIO_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "studio", "models", "add", str(model_dir), "--name", "cold"],
                   check=True, env=env, capture_output=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "studio", "generate", "--prompt", "a dot", "--steps", "2",
                    "--model", "cold", "--json"], check=True, env=env, capture_output=True)
    return {"cold_start_to_first_image_s": round(time.perf_counter() - start, 3)}


def switching(services, first: str, second: str) -> dict:
    models = services.models
    models.unload()
    loads_before = models.load_count
    start = time.perf_counter()
    models.load(first)
    uncached_first = time.perf_counter() - start
    models.load(second)
    times = []
    for name in (first, second) * 5:
        start = time.perf_counter()
        models.load(name)
        times.append(time.perf_counter() - start)
    return {"load_uncached_s": round(uncached_first, 4), "switch_cached_median_s": round(statistics.median(times), 6),
            "reloads_during_switching": models.load_count - loads_before - 2}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/studio.json"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny_a = save_tiny_model(tmp / "tiny-a", seed=0)
        tiny_b = save_tiny_model(tmp / "tiny-b", seed=1)
        services = build(Settings(data_dir=tmp / "data", models_dir=tmp / "models", preview_every=0))
        services.registry.add(str(tiny_a), name="tiny-a")
        services.registry.add(str(tiny_b), name="tiny-b")
        results = {
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "device": services.placement.description, "dtype": services.placement.dtype_name,
                        "torch": torch.__version__, "python": platform.python_version()},
            "overhead_tiny_64px_20_steps": overhead(services, "tiny-a", 64, 20, args.repeats),
            "model_switch": switching(services, "tiny-a", "tiny-b"),
        }
        if (ASSETS_DIR / "models" / "micro-sd" / "model_index.json").is_file():
            results["overhead_embedded_128px_20_steps"] = overhead(services, "micro-sd", 128, 20, args.repeats)
            start = time.perf_counter()
            services.models.unload()
            services.models.load("micro-sd")
            results["embedded_model_load_s"] = round(time.perf_counter() - start, 4)
        services.close()
        results.update(cold_start(tmp / "cold", tiny_a))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
