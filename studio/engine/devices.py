"""Device and dtype policy as small named functions; nothing is probed at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Keep this much device memory free for activations when sizing the model cache.
VRAM_HEADROOM_MB = 1536
# The CPU build's RAM probe: leave this much for the OS, Gradio and the browser.
RAM_HEADROOM_MB = 2048


@dataclass(frozen=True)
class Placement:
    """Where and in which precision models run."""

    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def description(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return self.device.type


def pick_device(setting: str = "auto") -> torch.device:
    """CUDA if present, then Apple MPS, then the CPU; an explicit setting wins."""
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def pick_dtype(device: torch.device, setting: str = "auto") -> torch.dtype:
    """fp16 on CUDA/MPS, bf16 only when chosen and supported, fp32 on the CPU (fp16 matmuls are slow there)."""
    if setting == "fp32" or device.type == "cpu":
        return torch.float32
    if setting == "bf16" and bf16_supported(device):
        return torch.bfloat16
    return torch.float16


def placement(device_setting: str = "auto", precision_setting: str = "auto") -> Placement:
    device = pick_device(device_setting)
    return Placement(device, pick_dtype(device, precision_setting))


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new model could use on this device, after the headroom."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(0, free - VRAM_HEADROOM_MB * 2**20)
    return max(0, available_ram_bytes() - RAM_HEADROOM_MB * 2**20)


def available_ram_bytes(meminfo: str = "/proc/meminfo") -> int:
    """RAM a new allocation can get, page cache included.

    The kernel's MemAvailable counts the file cache it would drop for us. Free pages alone
    (SC_AVPHYS_PAGES) miss it: after a big pip install most RAM is cache, "free" looks like
    almost nothing and the model cache would evict every model on each switch.
    """
    try:
        with open(meminfo) as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # macOS and old kernels: free pages are the best we can read
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def use_channels_last(device: torch.device) -> bool:
    """channels_last helps convolutions on CUDA tensor cores; elsewhere it only costs copies."""
    return device.type == "cuda"


def cpu_generator(seed: int) -> torch.Generator:
    """Seeds go through a CPU generator so a seed means the same image on every device."""
    return torch.Generator("cpu").manual_seed(int(seed))
