"""A1111-style single-file checkpoints: safety checks, family detection from the state dict, export.

Detection reads only the safetensors header (key names and shapes), so it is instant and loads
no tensor. Export writes the original Stable Diffusion (LDM) key layout, which A1111, Forge,
ComfyUI and diffusers' from_single_file all read.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from studio.errors import ModelError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."


@dataclass(frozen=True)
class CheckpointInfo:
    """What a single file holds, read from its header."""

    family: str  # "sd1" | "sd2" | "sdxl"
    inpaint: bool  # 9-channel UNet input
    kind: str  # "model" | "controlnet" | "vae"
    tensors: int

    @property
    def config_name(self) -> str:
        """The folder under assets/configs holding the diffusers config this file needs."""
        return f"{self.family}-inpaint" if self.inpaint else self.family


def refuse_pickle(path: Path, field: str = "model") -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(
            f"{path.name} is a pickle checkpoint ({path.suffix}); loading one can run arbitrary code, so the "
            "studio refuses it. Convert it to .safetensors (for example with A1111's checkpoint merger or "
            "diffusers' conversion scripts) and add that file instead.",
            field=field,
        )


# Bytes per element of every dtype a safetensors header may name.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                      "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tensor(name: str, entry) -> tuple[int, int]:
    """(begin, end) of one tensor's bytes, after checking its dtype, shape and offsets agree."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r} is not described by dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {name!r} has an unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(_whole(n) and n >= 0 for n in shape):
        raise ValueError(f"tensor {name!r} has a shape that is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_whole(n) and n >= 0 for n in offsets)):
        raise ValueError(f"tensor {name!r} has data_offsets that are not two byte positions")
    count = 1
    for n in shape:
        count *= n
    begin, end = offsets
    if end - begin != count * SAFETENSORS_DTYPES[dtype]:
        raise ValueError(f"tensor {name!r} claims {count:,} {dtype} values but {end - begin:,} bytes")
    return begin, end


def read_header(path: Path, field: str = "model") -> dict:
    """The safetensors JSON header: {tensor name: {dtype, shape, data_offsets}}; raises ModelError if corrupt.

    Everything a loader would trust is checked against the file: each tensor's byte count matches
    its dtype and shape, the tensors tile the data section exactly (no gaps, overlaps or bytes past
    the end), so a file that lies fails here, at `models add`, not half-way through a load.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                raise ValueError("file is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if length <= 0 or length > min(size - 8, MAX_HEADER_BYTES):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(handle.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not (isinstance(metadata, dict) and
                                         all(isinstance(v, str) for v in metadata.values())):
            raise ValueError("__metadata__ is not a table of text values")
        spans = sorted(_check_tensor(name, entry) for name, entry in header.items())
        data_size = size - 8 - length
        position = 0
        for begin, end in spans:
            if begin != position:
                raise ValueError("tensor data overlaps or leaves gaps (offsets do not follow each other)")
            position = end
        if position > data_size:
            raise ValueError("the file is truncated (tensor data ends past the end of the file)")
        if position < data_size:
            raise ValueError(f"{data_size - position:,} bytes follow the last tensor")
        return header
    except RecursionError as error:  # a header nested thousands deep: bad data, not a crash
        raise ModelError(f"{path.name} is not a valid .safetensors file (its header nests too deeply); "
                         "re-download or re-export it", field=field) from error
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ModelError(f"{path.name} is not a valid .safetensors file ({error}); re-download or "
                         "re-export it", field=field) from error


def inspect_checkpoint(path: Path, field: str = "model") -> CheckpointInfo:
    """Family (SD1.x / SD2.x / SDXL), inpaint variant and kind of a single-file checkpoint."""
    refuse_pickle(path, field)
    header = read_header(path, field)
    keys = header.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("control_model.") or has("controlnet_cond_embedding."):
        family = "sdxl" if "add_embedding.linear_1.weight" in keys or has("control_model.label_emb") else "sd1"
        context = next((header[k]["shape"][-1] for k in keys if k.endswith("attn2.to_k.weight")), 768)
        family = "sd2" if context == 1024 else family
        return CheckpointInfo(family, False, "controlnet", len(header))
    if has("encoder.down.") and not has(UNET_PREFIX):
        return CheckpointInfo("sd1", False, "vae", len(header))
    if not has(UNET_PREFIX):
        raise ModelError(f"{path.name} holds no Stable Diffusion UNet (no '{UNET_PREFIX}*' tensors); is it a "
                         "LoRA, an embedding or a diffusers-format file?", field=field)
    if has("conditioner.embedders."):
        family = "sdxl"
    elif has("cond_stage_model.model."):
        family = "sd2"
    else:
        family = "sd1"
    first_conv = header.get(UNET_PREFIX + "input_blocks.0.0.weight", {}).get("shape", [0, 4])
    return CheckpointInfo(family, first_conv[1] == 9, "model", len(header))


# -- export to the LDM layout --------------------------------------------------------------

_UNET_TOP = {
    "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out",
}
_UNET_RESNET = {
    "in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
    "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut",
}


def _unet_prefix_map(config) -> dict[str, str]:
    """diffusers module prefix -> LDM prefix, for any number of levels and layers per block."""
    per = config.layers_per_block
    levels = len(config.block_out_channels)
    mapping = {"mid_block.attentions.0.": "middle_block.1."}
    for j in range(2):
        mapping[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
    for i in range(levels):
        down_attn = config.down_block_types[i].startswith("CrossAttn")
        for j in range(per):
            mapping[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{(per + 1) * i + j + 1}.0."
            if down_attn:
                mapping[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{(per + 1) * i + j + 1}.1."
        if i < levels - 1:
            mapping[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(per + 1) * (i + 1)}.0.op."
        up_attn = config.up_block_types[i].startswith("CrossAttn")
        for j in range(per + 1):
            mapping[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{(per + 1) * i + j}.0."
            if up_attn:
                mapping[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{(per + 1) * i + j}.1."
        if i < levels - 1:
            mapping[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(per + 1) * i + per}.{2 if up_attn else 1}."
    return mapping


def unet_to_ldm(state: dict, config) -> dict:
    prefixes = _unet_prefix_map(config)
    out = {}
    for key, tensor in state.items():
        new = key
        for ldm, hf in _UNET_TOP.items():
            if key.startswith(hf + "."):
                new = ldm + key[len(hf):]
        for hf, ldm in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf or hf.startswith("mid_block.resnets"):
                    for ldm_name, hf_name in _UNET_RESNET.items():
                        if rest.startswith(hf_name + "."):
                            rest = ldm_name + rest[len(hf_name):]
                new = ldm + rest
                break
        out[UNET_PREFIX + new] = tensor
    return out


_VAE_ATTENTION = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def vae_to_ldm(state: dict, config) -> dict:
    levels = len(config.block_out_channels)
    per = config.layers_per_block
    prefixes = {"encoder.mid_block.attentions.0.": "encoder.mid.attn_1.",
                "decoder.mid_block.attentions.0.": "decoder.mid.attn_1."}
    for part in ("encoder", "decoder"):
        for j in range(2):
            prefixes[f"{part}.mid_block.resnets.{j}."] = f"{part}.mid.block_{j + 1}."
    for i in range(levels):
        for j in range(per):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        for j in range(per + 1):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{levels - 1 - i}.block.{j}."
        if i < levels - 1:
            prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
            prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    out = {}
    for key, tensor in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        for hf, ldm in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(hf):
                rest = key[len(hf):].replace("conv_shortcut", "nin_shortcut")
                if ".attn_1." in ldm:
                    for hf_name, ldm_name in _VAE_ATTENTION.items():
                        if rest.startswith(hf_name):
                            rest = ldm_name + rest[len(hf_name):]
                    if rest.endswith("weight") and tensor.ndim == 2:
                        # LDM's VAE attention uses 1x1 convolutions where diffusers uses linear layers
                        tensor = tensor[:, :, None, None]
                new = ldm + rest
                break
        out[VAE_PREFIX + new] = tensor
    return out


def export_single_file(pipe, path: Path, dtype=None) -> Path:
    """Write an SD1-family diffusers pipeline as one A1111-style .safetensors file (fp16 unless dtype)."""
    import torch
    from safetensors.torch import save_file

    state = {}
    state.update(unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    # A1111 files name the CLIP weights "...transformer.text_model.*"; recent transformers
    # versions drop the "text_model." level from the state dict, so put it back.
    state.update({CLIP_PREFIX + (k if k.startswith("text_model.") else f"text_model.{k}"): v
                  for k, v in pipe.text_encoder.state_dict().items()})
    tensors = {k: v.detach().to("cpu", dtype or torch.float16).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "exported_by": "studio"})
    return path
