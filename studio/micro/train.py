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

The parts, one job each: `studio.micro.scenes` renders the scenes, `studio.micro.pools`
holds them on the device, `studio.micro.phases` says what each phase trains and its loss,
`studio.micro.loop` steps a phase and checkpoints it; this module is the command that runs
them (options, validation, preflight, phase order and time budgets, the summary).

Imports only torch, numpy, PIL, diffusers, transformers, safetensors, tqdm, cv2 and
studio.micro / studio.engine.openpose (the world's pose maps need controlnet_aux).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch

from studio.micro import export as exporting
from studio.micro.architecture import CLIP_MAX_LENGTH, IMAGE_SIZE, Architecture
from studio.micro.loop import GRAD_CLIP, read_checkpoint_state, train_phase
from studio.micro.phases import (
    ControlNetPhase,
    DiffusionNoise,
    Phase,
    PhaseSettings,
    UnetPhase,
    load_or_build,
    make_phase,
    phase_settings,
)
from studio.micro.pools import autocast
from studio.micro.scenes import (
    CONTROL_KINDS,
    PHASES,
    RenderQueue,
    SceneRenderer,
    load_tokenizer,
    measure_figure_share,
    multi_object_keep,
    scene_seeds,
    tokenize,
)
from studio.micro.scenes import EVAL_SEED_OFFSET as EVAL_SEED_OFFSET  # re-exported: the held-out seed boundary


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
    single_object_share: float | None = None  # UNet pool: share of one-object scenes (None: the world's 1/3)


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
    parser.add_argument(
        "--single-object-share",
        type=float,
        help="UNet phase: make one-object scenes this share of the pool by skipping some multi-object "
        "scenes (default: the world's own 1/3)",
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
        single_object_share=args.single_object_share,
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
    if options.single_object_share is not None:
        try:
            multi_object_keep(options.single_object_share)
        except ValueError as error:
            problems.append(str(error))
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
    renderer = SceneRenderer(world, tokenizer, options.single_object_share)
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
        share = figure_share if name == "controlnet-pose" else ctx.queue.renderer.kept_share(name)
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
