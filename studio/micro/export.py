"""Export the trained embedded model as offline diffusers folders: micro-sd and its ControlNets.

`python -m studio.micro.export --runs runs/embedded --dest assets/models` reads the latest
checkpoints a training run left (EMA weights where the phase kept them) and writes:

  micro-sd/                  StableDiffusionPipeline folder: vae, text_encoder, tokenizer,
                             unet, scheduler (SD1.5's PNDM config), model_index.json,
                             TRAINING.md and model_card.json
  micro-controlnet-pose/     ControlNetModel folder (OpenPose skeleton hint)
  micro-controlnet-depth/    ControlNetModel folder (MiDaS-style depth hint)

Weights are fp16 safetensors under the plain names (no `variant`), so
`StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, ...)` loads them
with no network. Each folder is written beside its destination and renamed into place,
so a run killed mid-export leaves the previous export whole.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizer"
DEFAULT_DEST = REPO_ROOT / "assets" / "models"

SD_FOLDER = "micro-sd"
CONTROLNET_FOLDERS = {"controlnet-pose": "micro-controlnet-pose", "controlnet-depth": "micro-controlnet-depth"}
CHECKPOINT = "checkpoint"  # runs/<phase>/checkpoint/<component>/ is where training saves

EXAMPLE_PROMPTS = [
    "a large red circle in the centre on a blue background",
    "a small yellow square in the top left, black background",
    "a green triangle at the bottom right against a white background",
    "a large purple figure on the left on an orange background",
    "a blue circle in the top right and a red square in the bottom left, yellow background",
    "a white person in the middle, green background",
]
CAN_DRAW = (
    "128x128 flat-colour scenes of one to three objects - circle, square, triangle or a "
    "person-like figure - in red, orange, yellow, green, blue, purple, white or black, small "
    "or large, in a cell of a 3x3 grid (top left ... bottom right, centre), on a plain "
    "background of one of those colours. Nothing else: it was trained only on that world."
)


def checkpoint_path(runs_dir: Path, phase: str) -> Path:
    return Path(runs_dir) / phase / CHECKPOINT


def model_index(diffusers_version: str) -> dict:
    """SD1.5's model_index.json without the safety checker and feature extractor."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers_version,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def save_fp16(module, folder: Path) -> None:
    """The module's weights as fp16 safetensors under the plain file name; the module is untouched."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    # diffusers warns on any .to(dtype) of a model that names no fp32-only modules; ours name none.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        half = copy.deepcopy(module).to(device="cpu", dtype=torch.float16)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    half.save_pretrained(str(folder), safe_serialization=True)


def load_as_fp32_by_default(config_file: Path) -> None:
    """Make transformers load the fp16 text encoder as fp32 unless asked otherwise.

    transformers 5 loads a model in the dtype its config names, diffusers in fp32: with
    "float16" there, a plain `StableDiffusionPipeline.from_pretrained(folder)` would pair an
    fp16 text encoder with an fp32 UNet and fail. SD1.5's own fp16 weights ship the same way.
    """
    config = json.loads(config_file.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _replace_folder(staging: Path, final: Path) -> None:
    """Swap a finished staging folder into place, keeping the old one until the new one is there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _staging(final: Path) -> Path:
    staging = final.with_name(final.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def export_sd(
    dest: Path, vae, text_encoder, unet, tokenizer_dir: Path = TOKENIZER_DIR, summary: dict | None = None
) -> Path:
    """Write a StableDiffusionPipeline folder at dest from in-memory components."""
    import diffusers
    from diffusers import PNDMScheduler

    from studio.micro.architecture import noise_scheduler_config

    dest = Path(dest)
    tokenizer_dir = Path(tokenizer_dir)
    if not any((tokenizer_dir / name).exists() for name in ("vocab.json", "tokenizer.json")):
        raise FileNotFoundError(f"no CLIP tokenizer at {tokenizer_dir} (neither vocab.json nor tokenizer.json)")
    staging = _staging(dest)
    save_fp16(vae, staging / "vae")
    save_fp16(text_encoder, staging / "text_encoder")
    load_as_fp32_by_default(staging / "text_encoder" / "config.json")
    save_fp16(unet, staging / "unet")
    shutil.copytree(tokenizer_dir, staging / "tokenizer")
    PNDMScheduler.from_config(noise_scheduler_config()).save_pretrained(str(staging / "scheduler"))
    (staging / "model_index.json").write_text(json.dumps(model_index(diffusers.__version__), indent=2) + "\n")
    (staging / "model_card.json").write_text(json.dumps(model_card(summary), indent=2) + "\n")
    (staging / "TRAINING.md").write_text(training_markdown(summary))
    _replace_folder(staging, dest)
    return dest


def export_controlnet(dest: Path, controlnet, kind: str, summary: dict | None = None) -> Path:
    """Write a ControlNetModel folder at dest; kind is 'pose' or 'depth'."""
    dest = Path(dest)
    staging = _staging(dest)
    save_fp16(controlnet, staging)
    card = {
        "name": dest.name,
        "description": f"ControlNet ({kind}) for micro-sd, trained on the same procedural world.",
        "hint": {
            "pose": "OpenPose body skeleton on black, 128x128 RGB",
            "depth": "MiDaS-style depth map, near = bright, 128x128 (grey as RGB)",
        }[kind],
        "base_model": SD_FOLDER,
        "example_prompts": [p for p in EXAMPLE_PROMPTS if ("figure" in p or "person" in p)]
        if kind == "pose"
        else EXAMPLE_PROMPTS[:3],
        "training": (summary or {}).get("phases", {}).get(f"controlnet-{kind}"),
    }
    (staging / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    _replace_folder(staging, dest)
    return dest


def load_component(runs_dir: Path, phase: str, name: str):
    """A trained component from a run's checkpoint, its EMA weights when the phase kept them."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    classes = {
        "vae": AutoencoderKL,
        "unet": UNet2DConditionModel,
        "text_encoder": CLIPTextModel,
        "controlnet": ControlNetModel,
    }
    root = checkpoint_path(runs_dir, phase)
    for folder in (root / f"{name}_ema", root / name):
        if folder.exists():
            return classes[name].from_pretrained(str(folder))
    raise FileNotFoundError(f"no {name} checkpoint under {root}")


def export_runs(
    runs_dir: Path,
    dest_root: Path = DEFAULT_DEST,
    summary: dict | None = None,
    phases: tuple[str, ...] | None = None,
    tokenizer_dir: Path = TOKENIZER_DIR,
) -> list[Path]:
    """Export every model whose checkpoints exist (or only those the given phases produce)."""
    runs_dir, dest_root = Path(runs_dir), Path(dest_root)
    if summary is None and (runs_dir / "train_summary.json").exists():
        summary = json.loads((runs_dir / "train_summary.json").read_text())
    written = []
    wanted = phases or ("unet", *CONTROLNET_FOLDERS)
    if "unet" in wanted and checkpoint_path(runs_dir, "vae").exists() and checkpoint_path(runs_dir, "unet").exists():
        written.append(
            export_sd(
                dest_root / SD_FOLDER,
                load_component(runs_dir, "vae", "vae"),
                load_component(runs_dir, "unet", "text_encoder"),
                load_component(runs_dir, "unet", "unet"),
                tokenizer_dir,
                summary,
            )
        )
    for phase, folder in CONTROLNET_FOLDERS.items():
        if phase in wanted and checkpoint_path(runs_dir, phase).exists():
            controlnet = load_component(runs_dir, phase, "controlnet")
            written.append(export_controlnet(dest_root / folder, controlnet, phase.split("-")[1], summary))
    return written


def folder_megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 1e6


# ---------------------------------------------------------------------------- documents


def model_card(summary: dict | None) -> dict:
    phases = (summary or {}).get("phases", {})
    return {
        "name": SD_FOLDER,
        "description": "The studio's embedded Stable-Diffusion-format model: tiny, trained from scratch "
        "on a procedural world of flat-coloured shapes. It proves every tab works on a "
        "fresh machine; it is not a general image model.",
        "resolution": 128,
        "what_it_can_draw": CAN_DRAW,
        "example_prompts": EXAMPLE_PROMPTS,
        "negative_prompts_work": True,
        "controlnets": list(CONTROLNET_FOLDERS.values()),
        "trained_steps": {name: info.get("step") for name, info in phases.items()},
    }


def training_markdown(summary: dict | None) -> str:
    """TRAINING.md: how the model was made, from train_summary.json."""
    if not summary:
        return "# Training\n\nNo training summary was available at export time.\n"
    lines = [
        "# How micro-sd was trained",
        "",
        "Trained from scratch by `studio.micro.train` on scenes rendered by `studio.micro.world`"
        " (scene seeds below the evaluation offset; `studio.micro.eval` uses seeds above it).",
        "",
        "Command:",
        "",
        "```",
        summary.get("command", "?"),
        "```",
        "",
        f"- Hardware: {summary.get('device_name', '?')} ({summary.get('device', '?')}), "
        f"{summary.get('cpu_count', '?')} CPU cores",
        f"- Software: torch {summary.get('torch', '?')}, diffusers {summary.get('diffusers', '?')}, "
        f"transformers {summary.get('transformers', '?')}, Python {summary.get('python', '?')}",
        f"- Wall time of the command: {summary.get('wall_seconds', 0) / 60:.1f} min; "
        f"precision: {summary.get('precision', '?')}",
        f"- Seed: {summary.get('seed', '?')}",
        "",
        "| phase | steps | batch | lr | pool (scenes) | minutes | samples/s | final loss (moving avg) | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, info in summary.get("phases", {}).items():
        lines.append(
            f"| {name} | {info.get('step', 0)} | {info.get('batch', '?')} | {info.get('lr', '?')} | "
            f"{info.get('pool', '?')} | {info.get('seconds', 0) / 60:.1f} | {info.get('samples_per_second', 0):.0f} | "
            f"{info.get('loss_avg', float('nan')):.4f} | {info.get('status', '?')} |"
        )
    lines += [
        "",
        "Losses: vae = L1 + L2 reconstruction + 1e-6 KL (SD's weighting); unet and controlnets ="
        " epsilon-prediction MSE with min-SNR (gamma 5) weighting, captions dropped for classifier-free"
        " guidance. The UNet, text encoder and ControlNets are exported as EMA weights.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.micro.export", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/embedded"), help="the training run's --out folder")
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help="folder that receives micro-sd/ and the ControlNets"
    )
    parser.add_argument("--tokenizer", type=Path, default=TOKENIZER_DIR, help="CLIP tokenizer folder to copy")
    args = parser.parse_args(argv)
    written = export_runs(args.runs, args.dest, tokenizer_dir=args.tokenizer)
    if not written:
        print(f"nothing to export: no vae+unet or controlnet checkpoints under {args.runs}", file=sys.stderr)
        return 1
    for folder in written:
        print(f"{folder}  {folder_megabytes(folder):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
