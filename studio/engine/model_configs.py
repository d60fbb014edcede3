"""The diffusers config folders that single-file checkpoints need offline, as data, and their writer.

`from_single_file(path, config=<folder>, local_files_only=True)` builds each pipeline component
from a diffusers-format folder: `model_index.json` names the components, `unet/`, `vae/` and
`text_encoder*/` give the shapes the LDM weights are converted into, `scheduler/` the noise
schedule, and `tokenizer*/` are loaded with `CLIPTokenizer.from_pretrained` (the single file holds
no tokenizer, so the folder must). The values copy the public diffusers repos each family comes
from (see FAMILY_SOURCES); the tests check every architecture against its published parameter
count. Write the folders with `python -m studio.engine.model_configs --out assets/configs`.

assets/configs holds the JSON only: the CLIP BPE files (1.5 MB, the same for every family) live
once in assets/tokenizer, and `complete_config` assembles a full folder in a cache on first use
rather than the repo carrying eight copies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

FAMILY_SOURCES = {
    "sd1": "runwayml/stable-diffusion-v1-5",
    "sd1-inpaint": "runwayml/stable-diffusion-inpainting",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sd2-inpaint": "stabilityai/stable-diffusion-2-inpainting",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sdxl-inpaint": "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
}
FAMILIES = tuple(FAMILY_SOURCES)

# The CLIP BPE files every tokenizer folder copies; vocab and merges are the same for CLIP ViT-L,
# OpenCLIP ViT-H and bigG, only the pad token differs (see _tokenizer).
TOKENIZER_FILES = ("vocab.json", "merges.txt")

# -- UNets -------------------------------------------------------------------------------------

_SD_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

# SD2.x: OpenCLIP-H context (1024), per-level head counts of 64 channels, linear projections.
_SD2_UNET = {
    **_SD_UNET,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "use_linear_projection": True,
}

_SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    # 2816 = 1280 (pooled bigG embedding) + 6 micro-conditioning numbers x 256
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# -- VAEs --------------------------------------------------------------------------------------

_SD_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
# SDXL's VAE overflows in fp16, hence force_upcast (the pipelines decode in fp32).
_SDXL_VAE = {**_SD_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025}

# -- text encoders -----------------------------------------------------------------------------

_CLIP_TEXT = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    # 2, not 49407: transformers then pools at the argmax token id, the EOT token (the
    # behaviour the SD text encoders were trained and shipped with).
    "eos_token_id": 2,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}
# OpenCLIP ViT-H/14 has 24 layers; SD2 conditions on the penultimate one, so diffusers ships 23.
_OPENCLIP_H_TEXT = {
    **_CLIP_TEXT,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}
_OPENCLIP_BIGG_TEXT = {
    **_CLIP_TEXT,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "torch_dtype": "float16",
}

# -- schedulers --------------------------------------------------------------------------------

_SD_SCHEDULE = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
_PNDM = {"_class_name": "PNDMScheduler", **_SD_SCHEDULE}
_DDIM = {"_class_name": "DDIMScheduler", **_SD_SCHEDULE}
_SDXL_EULER = {
    "_class_name": "EulerDiscreteScheduler",
    **_SD_SCHEDULE,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}

# -- tokenizers --------------------------------------------------------------------------------


def _special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def _tokenizer(pad_token: str) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json; CLIP pads with EOT, OpenCLIP with '!'."""
    special = {"bos_token": _special("<|startoftext|>"), "eos_token": _special("<|endoftext|>"),
               "unk_token": _special("<|endoftext|>")}
    config = {
        "add_prefix_space": False,
        **special,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": {**special, "pad_token": pad_token}}


_CLIP_TOKENIZER = _tokenizer("<|endoftext|>")
_OPENCLIP_TOKENIZER = _tokenizer("!")

# -- pipelines ---------------------------------------------------------------------------------

_COMMON_COMPONENTS = {
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _sd_index(class_name: str, scheduler: dict) -> dict:
    # No safety checker: the studio never loads one, and [null, null] keeps from_single_file
    # from looking for it.
    return {"_class_name": class_name, **_COMMON_COMPONENTS, "feature_extractor": [None, None],
            "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler["_class_name"]]}


def _sdxl_index(class_name: str, extra: dict) -> dict:
    return {"_class_name": class_name, **_COMMON_COMPONENTS, "feature_extractor": [None, None],
            "force_zeros_for_empty_prompt": True, "image_encoder": [None, None],
            "scheduler": ["diffusers", _SDXL_EULER["_class_name"]],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"], **extra}


def _folder(index: dict, unet: dict, vae: dict, text: dict, tokenizer: dict, scheduler: dict,
            text_2: dict | None = None, tokenizer_2: dict | None = None) -> dict[str, dict]:
    files = {"model_index.json": index, "unet/config.json": unet, "vae/config.json": vae,
             "text_encoder/config.json": text, "scheduler/scheduler_config.json": scheduler}
    files.update({f"tokenizer/{name}": data for name, data in tokenizer.items()})
    if text_2 is not None:
        files["text_encoder_2/config.json"] = text_2
        files.update({f"tokenizer_2/{name}": data for name, data in tokenizer_2.items()})
    return files


def _v_prediction(scheduler: dict) -> dict:
    return {**scheduler, "prediction_type": "v_prediction"}


def _epsilon(scheduler: dict) -> dict:
    return {**scheduler, "prediction_type": "epsilon"}


# family -> {path inside the folder: JSON content}. Vocabulary files are not here: see TOKENIZER_FILES.
CONFIGS: dict[str, dict[str, dict]] = {
    "sd1": _folder(_sd_index("StableDiffusionPipeline", _PNDM), _SD_UNET, _SD_VAE, _CLIP_TEXT,
                   _CLIP_TOKENIZER, _PNDM),
    "sd1-inpaint": _folder(_sd_index("StableDiffusionInpaintPipeline", _DDIM), {**_SD_UNET, "in_channels": 9},
                           _SD_VAE, _CLIP_TEXT, _CLIP_TOKENIZER, _DDIM),
    # SD2.1: 768 px, v-prediction; fp16 attention overflows without upcasting.
    "sd2": _folder(_sd_index("StableDiffusionPipeline", _DDIM),
                   {**_SD2_UNET, "sample_size": 96, "upcast_attention": True},
                   {**_SD_VAE, "sample_size": 768}, _OPENCLIP_H_TEXT, _OPENCLIP_TOKENIZER, _v_prediction(_DDIM)),
    # SD2 inpainting is finetuned from SD2-base: 512 px, epsilon.
    "sd2-inpaint": _folder(_sd_index("StableDiffusionInpaintPipeline", _PNDM),
                           {**_SD2_UNET, "in_channels": 9, "sample_size": 64, "upcast_attention": False},
                           _SD_VAE, _OPENCLIP_H_TEXT, _OPENCLIP_TOKENIZER, _epsilon(_PNDM)),
    "sdxl": _folder(_sdxl_index("StableDiffusionXLPipeline", {}), _SDXL_UNET, _SDXL_VAE, _CLIP_TEXT,
                    _CLIP_TOKENIZER, _SDXL_EULER, _OPENCLIP_BIGG_TEXT, _OPENCLIP_TOKENIZER),
    "sdxl-inpaint": _folder(_sdxl_index("StableDiffusionXLInpaintPipeline", {"requires_aesthetics_score": False}),
                            {**_SDXL_UNET, "in_channels": 9}, _SDXL_VAE, _CLIP_TEXT, _CLIP_TOKENIZER,
                            _SDXL_EULER, _OPENCLIP_BIGG_TEXT, _OPENCLIP_TOKENIZER),
}


# A ControlNet is a copy of its base UNet's encoder: the same architecture keys, plus the
# hint encoder (a 3-channel image downscaled 8x by 16/32/96/256-channel convolutions).
_CONTROLNET_SHARED_KEYS = (
    "act_fn", "addition_embed_type", "addition_time_embed_dim", "attention_head_dim", "block_out_channels",
    "cross_attention_dim", "down_block_types", "downsample_padding", "flip_sin_to_cos", "freq_shift", "in_channels",
    "layers_per_block", "mid_block_scale_factor", "norm_eps", "norm_num_groups", "projection_class_embeddings_input_dim",
    "transformer_layers_per_block", "upcast_attention", "use_linear_projection",
)


def _controlnet(unet: dict) -> dict[str, dict]:
    config = {key: unet[key] for key in _CONTROLNET_SHARED_KEYS if key in unet}
    config.update({"_class_name": "ControlNetModel", "conditioning_channels": 3,
                   "conditioning_embedding_out_channels": [16, 32, 96, 256],
                   "controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False})
    return {"config.json": config}


# Single-file ControlNets (models/ControlNet/*.safetensors) load with these, by base family.
CONTROLNET_CONFIGS: dict[str, dict[str, dict]] = {
    "controlnet-sd1": _controlnet(_SD_UNET),
    "controlnet-sd2": _controlnet({**_SD2_UNET, "upcast_attention": False}),
    "controlnet-sdxl": _controlnet(_SDXL_UNET),
}


def tokenizer_folders(family: str) -> list[str]:
    return sorted({path.split("/")[0] for path in CONFIGS[family] if path.startswith("tokenizer")})


def _check_tokenizer_source(tokenizer_source: Path) -> None:
    missing = [name for name in TOKENIZER_FILES if not (tokenizer_source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{tokenizer_source} lacks {', '.join(missing)}; the tokenizer folders need the "
                                "CLIP BPE files (build assets/tokenizer first, or pass --tokenizer)")


def write_configs(out: Path, tokenizer_source: Path | None = None) -> list[Path]:
    """Write every family's folder under `out`; with `tokenizer_source`, copy the BPE files in too."""
    if tokenizer_source is not None:
        _check_tokenizer_source(tokenizer_source)
    written = []
    for family, files in {**CONFIGS, **CONTROLNET_CONFIGS}.items():
        folder = out / family
        if folder.exists():
            shutil.rmtree(folder)  # drop files a previous version wrote and this one no longer does
        for relative, data in files.items():
            path = folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            written.append(path)
        for sub in tokenizer_folders(family) if family in CONFIGS and tokenizer_source is not None else ():
            for name in TOKENIZER_FILES:
                written.append(Path(shutil.copyfile(tokenizer_source / name, folder / sub / name)))
    return written


def complete_config(folder: Path, tokenizer_source: Path, cache: Path) -> Path:
    """A copy of a JSON-only config folder with the BPE files in its tokenizer folders, in `cache`.

    Keyed by a hash of the folder's and the BPE files' contents, so an edited config or a new
    vocabulary makes a new folder instead of reusing a stale one. Built in a temporary folder
    and renamed into place, so a crash never leaves a half-written folder that looks complete.
    """
    folder = Path(folder)
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("tokenizer"))
    if not subs:
        return folder  # nothing to add (a ControlNet or VAE config)
    _check_tokenizer_source(tokenizer_source)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    for name in TOKENIZER_FILES:
        digest.update((tokenizer_source / name).read_bytes())
    target = Path(cache) / f"{folder.name}-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=target.parent))
    try:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        for sub in subs:
            for name in TOKENIZER_FILES:
                shutil.copyfile(tokenizer_source / name, staging / sub / name)
        try:
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():  # another process won the race: theirs is the same content
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    from studio.settings import ASSETS_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS_DIR / "configs", help="folder to write the families into")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="also copy the CLIP vocab.json and merges.txt from this folder into the tokenizer "
                        "folders (assets/configs does not: complete_config adds them at load time)")
    args = parser.parse_args(argv)
    written = write_configs(args.out, args.tokenizer)
    size = sum(path.stat().st_size for path in written)
    print(f"wrote {len(written)} files, {size / 2**20:.2f} MiB, under {args.out}")


if __name__ == "__main__":
    main()
