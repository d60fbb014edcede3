"""Hold a phase's training scenes on the device, filled as render chunks arrive.

Latent phases keep the frozen VAE's posterior of each scene rather than its image; the
encoding runs under the run's precision (`autocast`, shared with the training step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from studio.micro.train import RunContext


class GrowingTensor:
    """A device tensor that chunks are appended to (capacity doubles, no per-chunk concatenation)."""

    def __init__(self, device, dtype, shape_tail: tuple[int, ...]):
        self.data = torch.empty((0, *shape_tail), device=device, dtype=dtype)
        self.length = 0

    def append(self, values: torch.Tensor) -> None:
        needed = self.length + len(values)
        if needed > len(self.data):
            bigger = torch.empty(
                (max(needed, 2 * len(self.data)), *self.data.shape[1:]), device=self.data.device, dtype=self.data.dtype
            )
            bigger[: self.length] = self.data[: self.length]
            self.data = bigger
        self.data[self.length : needed] = values.to(self.data.device, self.data.dtype)
        self.length = needed

    def __getitem__(self, index):
        return self.data[: self.length][index]


class ScenePool:
    """A phase's training scenes on the device, filled as render chunks arrive.

    Image phases keep uint8 images; latent phases keep the frozen VAE's posterior mean and
    std per scene instead (encoded once, sampled every step like SD's latent_dist.sample()).
    """

    def __init__(self, phase: str, ctx: "RunContext", encoder=None):
        self.phase, self.queue, self.device = phase, ctx.queue, ctx.device
        self.encoder, self.encode_batch, self.mixed_precision = encoder, ctx.encode_batch, ctx.mixed_precision
        self.fields: dict[str, GrowingTensor] = {}
        self.size = 0
        self.errors, self.first_error = 0, None

    def _append(self, name: str, values: torch.Tensor) -> None:
        if name not in self.fields:
            self.fields[name] = GrowingTensor(self.device, values.dtype, tuple(values.shape[1:]))
        self.fields[name].append(values)

    def absorb(self, chunk: dict) -> None:
        if chunk.get("errors"):
            self.errors += chunk["errors"]
            self.first_error = self.first_error or chunk["error"]
        if len(chunk["seeds"]) == 0:
            return
        images = torch.from_numpy(chunk["images"])
        if self.encoder is None:
            self._append("images", images)
        else:
            mean, std = encode_posterior(self.encoder, images, self.device, self.encode_batch, self.mixed_precision)
            self._append("latent_mean", mean)
            self._append("latent_std", std)
        if "tokens" in chunk:
            self._append("tokens", torch.from_numpy(chunk["tokens"]))
        if "controls" in chunk:
            self._append("controls", torch.from_numpy(chunk["controls"]))
        self.size += len(chunk["seeds"])

    def refresh(self, minimum: int = 0) -> int:
        """Absorb finished chunks; wait for more while fewer than `minimum` scenes are in."""
        for chunk in self.queue.finished(self.phase, wait_for_one=False):
            self.absorb(chunk)
        while self.size < minimum and self.queue.remaining(self.phase):
            for chunk in self.queue.finished(self.phase, wait_for_one=True):
                self.absorb(chunk)
        if self.size == 0:
            raise RuntimeError(
                f"no {self.phase} scene could be rendered ({self.errors} failed; first: {self.first_error})"
            )
        return self.size

    @property
    def complete(self) -> bool:
        return self.queue.remaining(self.phase) == 0

    def __getitem__(self, name: str) -> GrowingTensor:
        return self.fields[name]


def images_to_tensor(images: torch.Tensor, device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1], SD's VAE input range."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_posterior(
    vae, images: torch.Tensor, device, batch: int, mixed_precision: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(images), batch):
        x = images_to_tensor(images[start : start + batch], device)
        with autocast(device, mixed_precision):
            posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.float())
        stds.append(posterior.std.float())
    return torch.cat(means), torch.cat(stds)


def autocast(device, mixed_precision: bool = True):
    """bf16 autocast on CUDA (unless turned off); plain fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and mixed_precision:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)
