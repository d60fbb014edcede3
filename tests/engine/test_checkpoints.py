"""Single-file checkpoints: the family is read from the header alone (key names and shapes)."""

import pytest
import torch
from safetensors.torch import save_file

from studio.engine.checkpoints import inspect_checkpoint
from studio.errors import ModelError

UNET = "model.diffusion_model."


def write(path, keys: dict):
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    return path


@pytest.mark.parametrize(("keys", "family", "inpaint", "config"), [
    ({UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
      "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)},
     "sd1", False, "sd1"),
    ({UNET + "input_blocks.0.0.weight": (320, 9, 3, 3),
      "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)},
     "sd1", True, "sd1-inpaint"),
    ({UNET + "input_blocks.0.0.weight": (320, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (8, 1024)},
     "sd2", False, "sd2"),
    ({UNET + "input_blocks.0.0.weight": (320, 4, 3, 3),
      "conditioner.embedders.1.model.positional_embedding": (77, 1280)}, "sdxl", False, "sdxl"),
    ({UNET + "input_blocks.0.0.weight": (320, 9, 3, 3),
      "conditioner.embedders.1.model.positional_embedding": (77, 1280)}, "sdxl", True, "sdxl-inpaint"),
])
def test_family_and_inpaint_variant_from_the_header(tmp_path, keys, family, inpaint, config):
    info = inspect_checkpoint(write(tmp_path / "model.safetensors", keys))
    assert (info.family, info.inpaint, info.kind, info.config_name) == (family, inpaint, "model", config)


def test_controlnets_vaes_and_other_files_are_told_apart(tmp_path):
    controlnet = write(tmp_path / "cn.safetensors", {"control_model.time_embed.0.weight": (4, 4),
                                                     "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)})
    assert inspect_checkpoint(controlnet).kind == "controlnet"
    vae = write(tmp_path / "vae.safetensors", {"encoder.down.0.block.0.conv1.weight": (4, 4)})
    assert inspect_checkpoint(vae).kind == "vae"
    lora = write(tmp_path / "lora.safetensors", {"lora_unet_down_blocks_0.alpha": (1,)})
    with pytest.raises(ModelError, match="no Stable Diffusion UNet"):
        inspect_checkpoint(lora)
