"""LoRA files in the two layouts real ones come in (kohya and diffusers/PEFT), from low-rank matrices.

Used to export the embedded model's trained LoRA and by tests that need real LoRA files for the tiny
model. Text encoder keys are written as SD1.x files carry them (`text_model.` included), whatever
the installed transformers calls its modules.
"""

from __future__ import annotations

from pathlib import Path

# The attention projections LoRAs train (kohya's and diffusers' default targets).
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def target_layers(model, targets) -> list[tuple[str, object]]:
    """(module name, Linear) of every attention projection, names without transformers 5's missing prefix."""
    import torch

    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            found.append((name.removeprefix("text_model."), module))
    return found


def random_factors(pipe, rank: int = 4, seed: int = 0, std: float = 0.3, text_encoder: bool = True) -> dict:
    """{("unet"|"text_encoder", module name): (down, up)} random low-rank factors for every target layer."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    factors = {}
    parts = [("unet", pipe.unet, UNET_TARGETS)]
    if text_encoder:
        parts.append(("text_encoder", pipe.text_encoder, TEXT_TARGETS))
    for part, model, targets in parts:
        for name, layer in target_layers(model, targets):
            down = torch.randn(rank, layer.in_features, generator=generator) * std
            up = torch.randn(layer.out_features, rank, generator=generator) * std
            factors[(part, name)] = (down, up)
    return factors


def lora_state_dict(factors: dict, layout: str, alpha: float | None = None) -> dict:
    """The tensors of a LoRA file: layout "kohya" (lora_down/lora_up/alpha) or "peft" (lora_A/lora_B)."""
    import torch

    tensors = {}
    for (part, name), (down, up) in factors.items():
        down, up = down.contiguous().float(), up.contiguous().float()
        if layout == "peft":
            prefix = "unet." if part == "unet" else "text_encoder.text_model."
            tensors[f"{prefix}{name}.lora_A.weight"] = down
            tensors[f"{prefix}{name}.lora_B.weight"] = up
        elif layout == "kohya":
            key = ("lora_unet_" if part == "unet" else "lora_te_text_model_") + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha if alpha is not None else down.shape[0]))
        else:
            raise ValueError(f"unknown LoRA layout {layout!r}; use kohya or peft")
    return tensors


def save_lora(path: Path, factors: dict, layout: str = "kohya", metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(factors, layout), str(path), metadata=metadata)
    return path
