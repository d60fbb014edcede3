"""Benchmark of farm mode (#13) on this machine: real redis-server and PostgreSQL, `studio worker` processes.

- throughput: JOBS jobs of the tiny model through N workers versus one in-process runner (same history server);
- scheduling overhead per job: submit-to-result wall time of a lone job on a warm worker, minus the run's own
  duration as the worker recorded it (median);
- model-aware routing: MIXED jobs of two models in a shuffled order through 2 workers that keep one model loaded
  each (cache size 1, as A1111's default), with routing off (the shared queue) and on: model loads and wall time.

Usage: .venv/bin/python bench/farm.py [--workers 2] [--jobs 40] [--mixed 40] [--out bench/results/farm.json]
(each worker and the in-process runner use one thread: OMP_NUM_THREADS=1)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
from servers import Farm, PostgresServer, RedisServer  # noqa: E402
from tests_support import fast_request, wait_for  # noqa: E402

from studio.micro.tiny import save_tiny_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lone", type=int, default=10, help="lone jobs timed for the overhead")
    parser.add_argument("--mixed", type=int, default=40, help="jobs of two models for the routing measure (0: skip)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/farm.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    postgres, redis = PostgresServer().start(), RedisServer().start()
    root = Path(tempfile.mkdtemp(prefix="studio-farm-bench-"))
    farm = None
    try:
        model = save_tiny_model(root / "tiny-sd", seed=0)
        farm = Farm(root, redis.url(), postgres.url(postgres.create_database()), model)
        queue, history = farm.services.queue, farm.services.history
        requests = [fast_request(model="tiny", seed=5000 + i, steps=args.steps) for i in range(args.jobs)]

        # one in-process runner, the studio without --farm (its own runner on the same history)
        runner = farm.services.runner
        runner.run(requests[0])  # load the model once
        started = time.perf_counter()
        for request in requests:
            runner.run(request)
        in_process_s = time.perf_counter() - started

        for n in range(args.workers):
            farm.start_worker(f"w{n + 1}")
        warm = [queue.submit(fast_request(model="tiny", seed=1, steps=2)) for _ in range(args.workers * 2)]
        for job in warm:
            queue.wait(job)
        wait_for(lambda: len(queue.workers()) >= args.workers, timeout=60)

        overheads = []
        for i in range(args.lone):
            began = time.perf_counter()
            result = queue.run(fast_request(model="tiny", seed=9000 + i, steps=args.steps))
            overheads.append(time.perf_counter() - began - history.get(result.run_id).duration_s)

        started = time.perf_counter()
        jobs = [queue.submit(request) for request in requests]
        results = [queue.wait(job) for job in jobs]
        farm_s = time.perf_counter() - started
        per_worker = {}
        for job in jobs:
            per_worker[job.worker] = per_worker.get(job.worker, 0) + 1
        out = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": 1},
            "jobs": args.jobs, "steps": args.steps, "size": "64x64 tiny model",
            "in_process_s": round(in_process_s, 3),
            "farm_workers": args.workers, "farm_s": round(farm_s, 3),
            "speedup": round(in_process_s / farm_s, 3),
            "jobs_per_worker": per_worker,
            "all_done": all(r.status == "done" for r in results),
            "scheduling_overhead_ms_median": round(1000 * statistics.median(overheads), 1),
            "scheduling_overhead_ms_max": round(1000 * max(overheads), 1),
            "lone_jobs": args.lone,
        }
        if args.mixed:
            farm.stop()
            farm = Farm(root / "mixed", redis.url(), postgres.url(postgres.create_database()), model)
            out["routing"] = mixed_queue(farm, root, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(json.dumps(out, indent=1))
        return 0
    finally:
        if farm is not None:
            farm.stop()
        redis.stop()
        postgres.stop()


def mixed_queue(farm: Farm, root: Path, args) -> dict:
    """Model loads of a shuffled two-model queue over two workers holding one model each, routing off and on.

    Each pass starts two fresh workers (nothing loaded, load counters at 0), so both pay the same first loads."""
    import random

    farm.add_model(save_tiny_model(root / "tiny-sd-b", seed=1), "tiny-b")
    queue = farm.services.queue
    models = ["tiny", "tiny-b"] * (args.mixed // 2)
    random.Random(7).shuffle(models)
    measured = {}
    for routing in (False, True):
        label = "on" if routing else "off"
        names = [f"{label}{n + 1}" for n in range(2)]
        for name in names:
            farm.start_worker(name, model_cache_size="1")
        wait_for(lambda: {r["name"] for r in queue.workers()} >= set(names), timeout=120)
        queue.routing = routing
        started = time.perf_counter()
        jobs = [queue.submit(fast_request(model=m, seed=7000 + i, steps=args.steps)) for i, m in enumerate(models)]
        results = [queue.wait(job) for job in jobs]
        wall = time.perf_counter() - started
        wait_for(lambda: all(r["job"] is None for r in queue.workers() if r["name"] in names), timeout=60)
        time.sleep(0.5)
        loads = sum(r["model_loads"] for r in queue.workers() if r["name"] in names)
        per_worker: dict = {}
        for job, m in zip(jobs, models):
            per_worker.setdefault(job.worker, {}).setdefault(m, 0)
            per_worker[job.worker][m] += 1
        measured[label] = {"model_loads": loads, "wall_s": round(wall, 3), "jobs_per_worker_and_model": per_worker,
                           "all_done": all(r.status == "done" for r in results)}
        for name in names:
            farm.kill_worker(name)
        wait_for(lambda: not any(r["name"] in names for r in queue.workers()), timeout=60)
    measured.update(jobs=len(models), models=2, workers=2, model_cache_size=1,
                    note="model loads: weights read from disk by the pass's two fresh workers (2 at least)")
    return measured


if __name__ == "__main__":
    sys.exit(main())
