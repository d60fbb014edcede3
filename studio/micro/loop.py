"""Train one phase until its step cap or deadline, with atomic checkpoints it resumes from.

Every step's randomness comes from the phase's step generator, and a checkpoint holds the
weights, EMA, optimiser and RNG state, so a resumed phase continues where it stopped.
"""

from __future__ import annotations

import collections
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from studio.micro import export as exporting
from studio.micro.phases import Phase, PhaseSettings
from studio.micro.pools import autocast

GRAD_CLIP = 1.0
LOSS_WINDOW = 5  # log intervals in the reported moving average of the loss


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
