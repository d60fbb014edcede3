"""ModelManager: an LRU cache of loaded models and per-mode pipelines over the registry's entries.

Every tab asks this one manager for a pipeline; pipelines for other modes are derived with
`from_pipe(..., dtype=<the base dtype>)`, so they share the loaded weights instead of reloading
(without the explicit dtype, diffusers would up-cast the shared weights to fp32). What models
exist, their names, hashes and health live in `registry`; nothing there loads weights.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from studio.engine.checkpoints import inspect_checkpoint, read_header, refuse_pickle
from studio.engine.devices import Placement, free_memory_bytes, use_channels_last
from studio.engine.model_configs import complete_config
from studio.engine.registry import ModelEntry, ModelRegistry, check_diffusers_folder, check_folder_files, weight_files
from studio.errors import ModelError, NotFound
from studio.settings import ASSETS_DIR, Settings

log = logging.getLogger(__name__)

CONFIGS_DIR = ASSETS_DIR / "configs"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"  # the CLIP BPE files our config folders share

# (family, mode) -> diffusers pipeline class. Families: "sd" covers SD1.x and SD2.x.
PIPELINE_CLASSES = {
    ("sd", "txt2img"): "StableDiffusionPipeline",
    ("sd", "img2img"): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sd", "controlnet"): "StableDiffusionControlNetPipeline",
    ("sd", "controlnet-img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    ("sdxl", "txt2img"): "StableDiffusionXLPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline",
    ("sdxl", "controlnet"): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "controlnet-img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
}
_SD_ONLY_KWARGS = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
# What a loader may raise on a bad or half-readable model (RecursionError is a RuntimeError).
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError, MemoryError)


def out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's 'not enough memory'."""
    import torch

    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "not enough memory" in str(error))


def load_failure(error: BaseException, what: str, field: str = "model") -> ModelError:
    """The message for a load that failed part-way (the cache is left as it was before it)."""
    if out_of_memory(error):
        return ModelError(f"not enough memory to load {what}; unload other models (Models tab) or use a smaller "
                          "model", field=field)
    return ModelError(f"could not load {what}: {error}", field=field)


@dataclass
class LoadedModel:
    entry: ModelEntry
    pipe: object  # the base text-to-image pipeline
    family: str  # "sd1" | "sd2" | "sdxl"
    model_hash: str
    size_bytes: int
    derived: dict = field(default_factory=dict)

    @property
    def pipeline_family(self) -> str:
        return "sdxl" if self.family == "sdxl" else "sd"

    @property
    def inpaint_unet(self) -> bool:
        return self.pipe.unet.config.in_channels == 9

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor)


class ModelManager:
    def __init__(self, settings: Settings, placement: Placement, registry: ModelRegistry | None = None):
        self.settings = settings
        self.placement = placement
        self.registry = registry or ModelRegistry(settings)
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._vaes: dict[tuple[str, str], object] = {}
        self._controlnets: dict[str, object] = {}
        self._lock = threading.RLock()
        self.load_count = 0  # how many times weights were read from disk (the cache's effect)

    def native_size(self, entry: ModelEntry) -> int:
        """The model's training resolution: from the loaded model, else from its configs."""
        if entry.name in self._cache:
            return self._cache[entry.name].native_size
        return self.registry.native_size(entry)

    # -- ControlNets -------------------------------------------------------------------------

    def load_controlnet(self, name: str):
        """A ControlNetModel on the device in the base dtype, loaded once and cached."""
        import diffusers

        entries = self.registry.controlnet_entries()
        if name not in entries:
            raise NotFound(f"unknown ControlNet {name!r}; put it in {self.registry.controlnet_dir} (known: "
                           f"{', '.join(entries) or 'none'})", field="model")
        with self._lock:
            if name in self._controlnets:
                return self._controlnets[name]
            entry = entries[name]
            try:
                if entry.source == "single_file":
                    info = inspect_checkpoint(entry.path)
                    config = CONFIGS_DIR / f"controlnet-{info.family}"
                    if not config.is_dir():
                        raise ModelError(f"no offline config for a {info.family} ControlNet in {config}",
                                         field="model")
                    net = diffusers.ControlNetModel.from_single_file(str(entry.path), config=str(config),
                                                                     local_files_only=True,
                                                                     dtype=self.placement.dtype)
                else:
                    problem = self.registry.controlnet_problem(entry)
                    if problem:
                        raise ModelError(f"ControlNet {name!r} cannot be loaded: {problem}", field="model")
                    net = diffusers.ControlNetModel.from_pretrained(entry.location, local_files_only=True,
                                                                    dtype=self.placement.dtype)
                net = net.to(self.placement.device)
            except ModelError:
                raise
            except LOAD_ERRORS as error:
                self._release()
                raise load_failure(error, f"ControlNet {name!r}") from error
            self._controlnets[name] = net
            return self._controlnets[name]

    # -- loading ---------------------------------------------------------------------------

    def loaded_names(self) -> list[str]:
        return list(self._cache)

    def _estimate_bytes(self, entry: ModelEntry) -> int:
        if entry.source == "hub":
            return 0
        size = sum(p.stat().st_size for p in weight_files(entry.path))
        # fp16 files grow to fp32 on the CPU
        return size * (2 if self.placement.dtype.itemsize == 4 else 1)

    def _make_room(self, needed: int) -> None:
        budget = free_memory_bytes(self.placement.device) * self.settings.model_cache_memory_fraction
        while self._cache and (len(self._cache) >= self.settings.model_cache_size or needed > budget):
            name, _ = self._cache.popitem(last=False)
            log.info("unloading %s to make room", name)
            self._release()
            budget = free_memory_bytes(self.placement.device) * self.settings.model_cache_memory_fraction

    def release_memory(self) -> None:
        """Give cached allocator memory back after a failure (out of memory) without unloading."""
        self._release()

    def _release(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()

    def load(self, name: str | None) -> LoadedModel:
        """The loaded model, from the cache when it is there (most recently used moves to the end)."""
        entry = self.registry.resolve(name)
        with self._lock:
            if entry.name in self._cache:
                self._cache.move_to_end(entry.name)
                return self._cache[entry.name]
            problem = self.registry.problem(entry)
            if problem:
                raise ModelError(f"model {entry.name!r} cannot be loaded: {problem}", field="model")
            self._make_room(self._estimate_bytes(entry))
            try:
                model = self._load_entry(entry)
            except BaseException:
                # whatever a half-done load allocated goes now; the cache only ever holds finished models
                self._release()
                raise
            self._cache[entry.name] = model
            self.load_count += 1
            return model

    def _load_entry(self, entry: ModelEntry) -> LoadedModel:
        import diffusers
        import torch
        import transformers

        # Loading bars would interleave with the studio's own progress on the console, and
        # diffusers' cast warnings concern its own loading, not anything an artist can act on.
        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        dtype = self.placement.dtype
        common = dict(dtype=dtype)
        try:
            if entry.source == "single_file":
                info = inspect_checkpoint(entry.path)
                family = info.family
                config = entry.config_dir or str(CONFIGS_DIR / info.config_name)
                if not Path(config).is_dir():
                    raise ModelError(f"no offline config for a {info.config_name} checkpoint in {config}",
                                     field="model")
                if entry.config_dir is None:  # ours ship without the BPE files: add them (once, cached)
                    config = str(complete_config(Path(config), TOKENIZER_DIR, self.settings.data_dir / "configs"))
                cls = getattr(diffusers, PIPELINE_CLASSES[("sdxl" if family == "sdxl" else "sd", "txt2img")])
                extra = {} if family == "sdxl" else _SD_ONLY_KWARGS
                pipe = cls.from_single_file(str(entry.path), config=config, local_files_only=True,
                                            **common, **extra)
            else:
                location = entry.location
                if entry.source == "hub":
                    if self.settings.offline:
                        raise ModelError(f"{location!r} is a hub id and the studio is offline", field="model")
                    index = None
                else:
                    index = check_diffusers_folder(entry.path)
                xl = index is not None and "XL" in index.get("_class_name", "")
                cls = getattr(diffusers, PIPELINE_CLASSES[("sdxl" if xl else "sd", "txt2img")])
                extra = {} if xl else _SD_ONLY_KWARGS
                pipe = cls.from_pretrained(location, local_files_only=entry.source != "hub", **common, **extra)
                family = "sdxl" if xl else ("sd2" if pipe.text_encoder.config.hidden_size == 1024 else "sd1")
            pipe.set_progress_bar_config(disable=True)
            pipe.to(self.placement.device)
            if use_channels_last(self.placement.device):
                pipe.unet.to(memory_format=torch.channels_last)
        except ModelError:
            raise
        except LOAD_ERRORS as error:
            raise load_failure(error, repr(entry.name)) from error
        size = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
        size += sum(p.numel() * p.element_size() for p in pipe.vae.parameters())
        return LoadedModel(entry, pipe, family, self.registry.model_hash(entry), size)

    def load_vae(self, name: str, family: str):
        """A VAE override from models/VAE (single file or diffusers folder), cached per family."""
        import diffusers

        key = (name, family)
        if key not in self._vaes:
            path = self.registry.vae_dir / name
            if name not in self.registry.vae_names():
                raise NotFound(f"unknown VAE {name!r}; put it in {self.registry.vae_dir}", field="vae")
            try:
                if path.is_dir():
                    check_folder_files(path, "vae")
                    vae = diffusers.AutoencoderKL.from_pretrained(str(path), dtype=self.placement.dtype,
                                                                  local_files_only=True)
                else:
                    refuse_pickle(path)
                    read_header(path)
                    vae = diffusers.AutoencoderKL.from_single_file(
                        str(path), config=str(CONFIGS_DIR / family / "vae"), local_files_only=True,
                        dtype=self.placement.dtype)
                vae = vae.to(self.placement.device)
            except ModelError:
                raise
            except LOAD_ERRORS as error:
                self._release()
                raise load_failure(error, f"VAE {name!r}", field="vae") from error
            self._vaes[key] = vae
        return self._vaes[key]

    def pipeline(self, mode: str, name: str | None = None, vae: str | None = None, **components):
        """A pipeline for `mode` sharing the cached weights; extra components (controlnet=...) override."""
        import diffusers

        model = self.load(name)
        key = (mode, vae, tuple(sorted((k, id(v)) for k, v in components.items())))
        if key in model.derived:
            return model.derived[key]
        class_name = PIPELINE_CLASSES.get((model.pipeline_family, mode))
        if class_name is None:
            raise ModelError(f"mode {mode!r} is not available for {model.family} models", field="mode")
        overrides = dict(components)
        if vae:
            overrides["vae"] = self.load_vae(vae, model.family)
        if mode == "txt2img" and not overrides:
            pipe = model.pipe
        else:
            pipe = getattr(diffusers, class_name).from_pipe(model.pipe, dtype=self.placement.dtype, **overrides)
            pipe.set_progress_bar_config(disable=True)
        # Derived pipelines for control units change with every unit choice; keep only stable ones.
        if not components:
            model.derived[key] = pipe
        return pipe

    def unload(self, name: str | None = None) -> list[str]:
        """Drop one model (or all) from memory; returns what was unloaded."""
        with self._lock:
            names = [name] if name else list(self._cache)
            gone = [n for n in names if self._cache.pop(n, None) is not None]
            if not name:
                self._vaes.clear()
                self._controlnets.clear()
        self._release()
        return gone

    def describe(self, entry: ModelEntry) -> dict:
        """Registry row for the Models tab and `studio models list`, with what the cache knows."""
        row = {**self.registry.describe(entry), "loaded": entry.name in self._cache}
        if entry.name in self._cache:
            loaded = self._cache[entry.name]
            row.update(family=loaded.family, inpaint=loaded.inpaint_unet, native_size=loaded.native_size)
        return row
