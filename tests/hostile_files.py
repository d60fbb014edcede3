"""Model files that lie, built in code: what a careless download or a hostile user puts in models/."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def safetensors_bytes(header: dict | str, data: bytes = b"") -> bytes:
    """A safetensors file with this header (a dict, or raw JSON text) followed by `data`."""
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data


def deeply_nested(path: Path, depth: int = 5000) -> Path:
    """A header whose JSON nests `depth` arrays: Python's parser hits its recursion limit."""
    path.write_bytes(safetensors_bytes('{"a": ' + "[" * depth + "]" * depth + "}"))
    return path


def huge_claim(path: Path) -> Path:
    """One tensor claiming 2**40 float32 values whose offsets still fit the (tiny) file."""
    header = {UNET_KEY: {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 16]}}
    path.write_bytes(safetensors_bytes(header, b"\0" * 16))
    return path


def nan_offsets(path: Path) -> Path:
    path.write_bytes(safetensors_bytes('{"%s": {"dtype": "F32", "shape": [4], "data_offsets": [0, NaN]}}' % UNET_KEY,
                                       b"\0" * 16))
    return path


def pickled_unet(source: Path, dest: Path) -> Path:
    """A copy of a diffusers folder whose UNet weights are a pickle (.bin) instead of safetensors."""
    shutil.copytree(source, dest)
    for weights in (dest / "unet").glob("*.safetensors"):
        weights.unlink()
    (dest / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return dest


def nested_config(source: Path, dest: Path, depth: int = 5000) -> Path:
    """A copy of a diffusers folder whose UNet config nests thousands of arrays."""
    shutil.copytree(source, dest)
    (dest / "unet" / "config.json").write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    return dest
