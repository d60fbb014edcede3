"""Upscalers for Hires. fix and the Upscale action, by A1111's names: PIL filters, latent interpolation, model files.

Model upscalers are ESRGAN-family files (`.pth` / `.safetensors`) in the models folder, run through spandrel.
A `.pth` is a pickle, so it is read only with torch's weights-only unpickler: spandrel's own loader uses a
hand-written allowlist unpickler for `.pth` and TorchScript (which is code) for `.pt`, so the studio reads the
state dict itself and hands spandrel tensors only.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image

from studio.engine.checkpoints import read_header
from studio.errors import InputError, ModelError, NotFound
from studio.fileio import atomic_write

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

FIELD = "upscaler"
PIXEL_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
# A1111's latent upscalers: (torch interpolate mode, antialias).
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
BUILTINS = (*PIXEL_UPSCALERS, *LATENT_UPSCALERS)
# The A1111 (ESRGAN, RealESRGAN, SwinIR, DAT) and ComfyUI (upscale_models) folders, in this order of precedence.
MODEL_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "upscale_models")
MODEL_SUFFIXES = (".safetensors", ".pth")  # safetensors first: the safer copy wins a shared name
CACHE_SIZE = 2  # loaded nets; real ones are 5-150 MB each and Hires. fix uses one at a time
MAX_PASSES = 4  # a 2x net reaches 16x in 4 passes; Lanczos covers whatever is still missing
MIN_TILE = 16
# spandrel's purposes other than "SR", in words for the refusal
PURPOSES = {"FaceSR": "face restoration", "Restoration": "restoration (1x: denoising, deblurring, JPEG)",
            "Inpainting": "inpainting"}


class UpscalerRegistry:
    """The upscalers by name: built-ins, then the embedded ones (`extra`), then files in the models folder.

    The folders are listed on every call, so a file dropped in shows up without a restart. Loaded nets are
    cached by path, mtime and size, so a replaced file is read again. Device work is serialised by the
    caller (the runner's lock): `upscale_image` moves a cached net to the device and back.
    """

    def __init__(self, models_dir: Path, extra: dict[str, Path] | None = None):
        self.models_dir = Path(models_dir)
        self.extra = {name: Path(path) for name, path in (extra or {}).items()}
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple, ImageModelDescriptor] = OrderedDict()
        self._facts: dict[tuple, dict] = {}  # (path, mtime, size) -> architecture, scale, problem: tiny, kept

    def model_files(self) -> dict[str, Path]:
        """Model upscaler name -> file; a name already taken gets its folder and file name appended."""
        found: dict[str, Path] = {}

        def put(name: str, path: Path, where: str) -> None:
            if name in found or name in BUILTINS:
                name = f"{name} ({where})"
            found.setdefault(name, path)

        for name, path in self.extra.items():
            put(name, path, path.name)
        for folder in MODEL_FOLDERS:
            directory = self.models_dir / folder
            if not directory.is_dir():
                continue
            files = [p for p in directory.iterdir()
                     if p.suffix.lower() in MODEL_SUFFIXES and p.is_file() and not p.name.startswith(".")]
            for path in sorted(files, key=lambda p: (p.stem.lower(), MODEL_SUFFIXES.index(p.suffix.lower()))):
                put(path.stem, path, f"{folder}/{path.name}")
        return found

    def names(self) -> list[str]:
        return [*BUILTINS, *self.model_files()]

    def is_latent(self, name: str) -> bool:
        return name in LATENT_UPSCALERS

    def kind(self, name: str) -> str:
        """"pixel", "latent" or "model"; an unknown name is a NotFound that lists the known ones."""
        if name in PIXEL_UPSCALERS:
            return "pixel"
        if name in LATENT_UPSCALERS:
            return "latent"
        if name in self.model_files():
            return "model"
        raise NotFound(f"there is no upscaler called {name!r}; pick one of: {', '.join(self.names())}", field=FIELD)

    def describe(self, probe: bool = True) -> list[dict]:
        """One row per upscaler for the models tab; `probe` reads each model file once to learn its scale."""
        rows = [{"name": name, "kind": self.kind(name), "path": None, "size_bytes": None, "scale": None,
                 "architecture": None, "problem": None} for name in BUILTINS]
        for name, path in self.model_files().items():
            row = {"name": name, "kind": "model", "path": str(path), "size_bytes": None, "scale": None,
                   "architecture": None, "problem": None}
            try:
                row["size_bytes"] = path.stat().st_size
                if probe:
                    row.update(self._probe(path))
            except OSError:
                row["problem"] = f"{path.name} is missing or unreadable; put the file back or remove the entry"
            rows.append(row)
        return rows

    def load(self, name: str) -> ImageModelDescriptor:
        """The spandrel descriptor of a model upscaler, on the CPU in float32 (cached)."""
        if self.kind(name) != "model":
            raise InputError(f"{name} is a built-in upscaler and has no model file to load", field=FIELD)
        path = self.model_files()[name]
        with self._lock:
            key = _file_key(path)
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = load_upscaler_file(path)
            self._facts[key] = _facts(model)
            self._models[key] = model
            while len(self._models) > CACHE_SIZE:
                self._models.popitem(last=False)
            return model

    def _probe(self, path: Path) -> dict:
        with self._lock:
            key = _file_key(path)
            if key not in self._facts:
                try:
                    self._facts[key] = _facts(self._models.get(key) or load_upscaler_file(path))
                except ModelError as error:
                    self._facts[key] = {"problem": error.message}
            return self._facts[key]


def _file_key(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError as error:
        raise ModelError(f"upscaler file {path.name} is missing or unreadable; put it back in the models folder",
                         field=FIELD) from error
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _facts(model) -> dict:
    return {"architecture": model.architecture.name, "scale": model.scale, "problem": None}


# -- reading files safely ------------------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file, read without running any code the file carries."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        read_header(path, field=FIELD)  # offsets and sizes checked against the file before any tensor is read
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as error:  # the header passed, so this is damage safetensors found in the data
            raise ModelError(f"{path.name} is not a readable .safetensors file; re-download it",
                             field=FIELD) from error
    elif suffix == ".pth":
        try:
            # weights_only is the point: tensors, dicts and numbers only, never a class or a callable
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            wanted = re.search(r"GLOBAL ([\w.]+)", str(error))
            if wanted:
                raise ModelError(f"{path.name} asks to run code when loaded ({wanted.group(1)}), so the studio "
                                 "refuses it; get a .safetensors copy of this upscaler from a source you trust",
                                 field=FIELD) from error
            raise ModelError(f"{path.name} is not a readable .pth weights file; re-download it or use a "
                             ".safetensors copy", field=FIELD) from error
    else:
        raise ModelError(f"{path.name} is not an upscaler file; use a .pth or .safetensors file", field=FIELD)

    from spandrel import canonicalize_state_dict

    if not isinstance(state, dict):
        raise ModelError(f"{path.name} holds no table of weights, so it is not an upscaler", field=FIELD)
    state = canonicalize_state_dict(state)  # unwraps "params_ema", "state_dict", "module." as spandrel does
    # training scripts store counters and options beside the weights; detection reads tensors only
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{path.name} holds no weights, so it is not an upscaler", field=FIELD)
    return tensors


def load_upscaler_file(path: Path) -> ImageModelDescriptor:
    """A spandrel descriptor for a super-resolution file (CPU, float32); anything else is a ModelError."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state = read_state_dict(path)
    try:
        model = ModelLoader(device="cpu").load_from_state_dict(state)
    except UnsupportedModelError as error:
        raise ModelError(f"{path.name} is not an upscaler architecture spandrel knows; use an ESRGAN, "
                         "Real-ESRGAN, SwinIR, DAT or similar super-resolution model", field=FIELD) from error
    except Exception as error:  # detected an architecture, but the tensors do not fit it
        raise ModelError(f"{path.name} is not an upscaler architecture spandrel knows (its weights do not fit "
                         "the architecture they resemble); re-download it", field=FIELD) from error
    if not isinstance(model, ImageModelDescriptor) or model.purpose != "SR":
        purpose = PURPOSES.get(model.purpose, str(model.purpose))
        raise ModelError(f"{path.name} is a {model.architecture.name} model for {purpose}, not a "
                         "super-resolution upscaler; pick an upscaler model instead", field=FIELD)
    if not (isinstance(model.scale, int) and model.scale >= 1):
        raise ModelError(f"{path.name} has no whole upscaling factor, so it cannot upscale", field=FIELD)
    if model.input_channels != 3 or model.output_channels != 3:
        raise ModelError(f"{path.name} works on {model.input_channels}-channel images, not RGB; pick an RGB "
                         "upscaler model", field=FIELD)
    return model.float().eval()


# -- running them --------------------------------------------------------------------------------------------


def target_size(image: Image.Image, scale: float) -> tuple[int, int]:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise InputError(f"upscale factor {scale!r} is not a positive number; give one such as 2", field="scale")
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def upscale_image(image: Image.Image, name: str, scale: float, registry: UpscalerRegistry,
                  device: str | torch.device = "cpu", tile: int = 512, overlap: int = 32) -> Image.Image:
    """`image` resized by `scale` (round(w*scale) x round(h*scale)) with a pixel or model upscaler.

    A net whose factor is smaller than asked runs again on its own output (at most MAX_PASSES times), then
    Lanczos makes the exact size. Sides over `tile` pixels run in overlapping tiles (tile=0: never). A model
    returns RGB, or RGBA with the alpha Lanczos-resized when the input has one; a built-in keeps the mode.
    """
    size = target_size(image, scale)
    kind = registry.kind(name)
    if kind == "latent":
        raise InputError(f"{name} works on latents, so it serves only Hires. fix; pick Lanczos or a model "
                         "upscaler for images", field=FIELD)
    if kind == "pixel":
        return image.resize(size, PIXEL_UPSCALERS[name])
    if tile and tile < MIN_TILE:
        raise InputError(f"tile size {tile} is too small; use 0 (no tiling) or at least {MIN_TILE}", field="tile")
    model = registry.load(name)
    alpha = image.getchannel("A").resize(size, Image.Resampling.LANCZOS) if "A" in image.getbands() else None
    pixels = torch.from_numpy(_rgb_array(image)).permute(2, 0, 1)[None].float().div_(255)
    passes = 0
    width, height = image.size
    while (width < size[0] or height < size[1]) and passes < MAX_PASSES and (passes == 0 or model.scale > 1):
        width, height, passes = width * model.scale, height * model.scale, passes + 1
    if passes:
        device = torch.device(device)
        try:
            model.to(device)
            with torch.inference_mode():
                for _ in range(passes):
                    pixels = _run_tiled(model, pixels, device, tile, max(0, min(overlap, tile // 2)))
        finally:
            model.to(torch.device("cpu"))  # the cache must not hold device memory the diffusion models need
    array = pixels[0].permute(1, 2, 0).mul(255).round_().clamp_(0, 255).to(torch.uint8).numpy()
    result = Image.fromarray(array, "RGB")
    if result.size != size:
        result = result.resize(size, Image.Resampling.LANCZOS)
    if alpha is not None:
        result.putalpha(alpha)
    return result


def _rgb_array(image: Image.Image):
    import numpy as np

    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy: torch shares its memory


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced starts of equal tiles covering `length`, neighbours sharing at least ~`overlap` pixels."""
    if not tile or length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _axis_weights(starts: list[int], tile: int, length: int, scale: int) -> list[torch.Tensor]:
    """Per tile, its blend weight along one axis in output pixels; the weights sum to 1 at every pixel.

    Each seam sits mid-way through two neighbours' overlap and is feathered over at most half that overlap,
    so both tiles are a quarter overlap away from their own (zero-padded) borders where they mix: a net whose
    receptive field is smaller than that gives the untiled result, and a larger one blends without a seam.
    """
    span = min(tile, length) if tile else length
    centres = [(starts[i + 1] + starts[i] + span) / 2 for i in range(len(starts) - 1)]
    seams = []  # (centre, half width) in output pixels
    for i, centre in enumerate(centres):
        half = (starts[i] + span - starts[i + 1]) / 4
        if i > 0:  # feather zones of neighbouring seams must not overlap, or three tiles would mix
            half = min(half, (centre - centres[i - 1]) / 2)
        if i + 1 < len(centres):
            half = min(half, (centres[i + 1] - centre) / 2)
        seams.append((centre * scale, half * scale))

    def past(x: torch.Tensor, seam: tuple[float, float]) -> torch.Tensor:  # 0 before the seam, 1 after
        centre, half = seam
        if half <= 0:
            return (x >= centre).to(x.dtype)
        return ((x - (centre - half)) / (2 * half)).clamp_(0, 1)

    weights = []
    for i, start in enumerate(starts):
        x = torch.arange(span * scale, dtype=torch.float64) + start * scale + 0.5  # pixel centres
        weight = torch.ones_like(x)
        if i > 0:
            weight *= past(x, seams[i - 1])
        if i < len(starts) - 1:
            weight *= 1 - past(x, seams[i])
        weights.append(weight.float())
    return weights


def _run_tiled(model, pixels: torch.Tensor, device: torch.device, tile: int, overlap: int) -> torch.Tensor:
    from spandrel import ModelTiling

    if model.tiling == ModelTiling.INTERNAL:  # the net needs the whole picture (it tiles itself if at all)
        tile = 0
    _, _, height, width = pixels.shape
    s = model.scale
    rows, cols = _tile_starts(height, tile, overlap), _tile_starts(width, tile, overlap)
    tile_h, tile_w = (min(tile, height), min(tile, width)) if tile else (height, width)
    weights_y = _axis_weights(rows, tile_h, height, s)
    weights_x = _axis_weights(cols, tile_w, width, s)
    out = torch.zeros(1, 3, height * s, width * s)
    for y, wy in zip(rows, weights_y):
        for x, wx in zip(cols, weights_x):
            piece = model(pixels[:, :, y:y + tile_h, x:x + tile_w].to(device)).float().cpu()
            if piece.shape[-2:] != (tile_h * s, tile_w * s):
                raise ModelError(f"the upscaler returned a {piece.shape[-1]}x{piece.shape[-2]} image where "
                                 f"{tile_w * s}x{tile_h * s} was expected; pick another upscaler", field=FIELD)
            out[:, :, y * s:(y + tile_h) * s, x * s:(x + tile_w) * s] += piece * (wy[:, None] * wx[None, :])
    return out


def upscale_latents(latents: torch.Tensor, name: str, size: tuple[int, int]) -> torch.Tensor:
    """Latents (batch, channels, h, w) interpolated to `size` = (h, w) latent pixels, A1111's latent modes."""
    if name not in LATENT_UPSCALERS:
        raise InputError(f"{name!r} is not a latent upscaler; pick one of: {', '.join(LATENT_UPSCALERS)}",
                         field=FIELD)
    if latents.ndim != 4:
        raise InputError(f"latents must be (batch, channels, height, width), not {tuple(latents.shape)}",
                         field=FIELD)
    if len(size) != 2 or not all(isinstance(n, int) and n > 0 for n in size):
        raise InputError(f"latent size {size!r} is not two positive whole numbers (height, width)", field=FIELD)
    mode, antialias = LATENT_UPSCALERS[name]
    options = {"align_corners": False, "antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    # float32 for the arithmetic: half-precision CPU kernels are missing for some modes and antialiasing
    result = F.interpolate(latents.float(), size=tuple(size), mode=mode, **options)
    return result.to(latents.dtype)


# -- tiny nets for tests and the embedded placeholder --------------------------------------------------------


def build_compact_upscaler(scale: int = 4, num_feat: int = 16, num_conv: int = 4, seed: int = 0
                           ) -> dict[str, torch.Tensor]:
    """A random Real-ESRGAN SRVGGNetCompact state dict (spandrel: "RealESRGAN Compact"), same seed same bytes.

    Layout: body.0 conv 3->feat, body.1 PReLU, num_conv x (conv feat->feat, PReLU), last conv feat->3*scale^2
    (pixel-shuffled); the net adds a nearest-upscaled copy of its input, so a random one stays near the image.
    """
    generator = torch.Generator().manual_seed(seed)

    def conv(cin: int, cout: int) -> tuple[torch.Tensor, torch.Tensor]:
        bound = 1 / math.sqrt(cin * 9)  # torch's default Conv2d initialisation range
        weight = (torch.rand(cout, cin, 3, 3, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(cout, generator=generator) * 2 - 1) * bound
        return weight, bias

    state: dict[str, torch.Tensor] = {}
    layer = 0
    for cin in (3, *[num_feat] * num_conv):
        state[f"body.{layer}.weight"], state[f"body.{layer}.bias"] = conv(cin, num_feat)
        state[f"body.{layer + 1}.weight"] = torch.full((num_feat,), 0.25)  # PReLU's default slope
        layer += 2
    state[f"body.{layer}.weight"], state[f"body.{layer}.bias"] = conv(num_feat, 3 * scale * scale)
    return {k: v.contiguous() for k, v in state.items()}


def save_upscaler(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Write a state dict as .safetensors or .pth (by suffix), atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save

        data = save(tensors, metadata={"format": "pt"})
    elif path.suffix.lower() == ".pth":
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        data = buffer.getvalue()
    else:
        raise InputError(f"{path.name} needs a .safetensors or .pth suffix to be saved as an upscaler", field=FIELD)
    atomic_write(path, data)
    return path
