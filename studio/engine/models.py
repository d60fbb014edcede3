"""ModelManager: the registry of checkpoints, an LRU cache of loaded models, and per-mode pipelines.

Every tab asks this one manager for a pipeline; pipelines for other modes are derived with
`from_pipe(..., dtype=<the base dtype>)`, so they share the loaded weights instead of reloading
(without the explicit dtype, diffusers would up-cast the shared weights to fp32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from studio.engine.checkpoints import PICKLE_SUFFIXES, inspect_checkpoint, read_header, refuse_pickle
from studio.engine.devices import Placement, free_memory_bytes, use_channels_last
from studio.engine.model_configs import complete_config
from studio.errors import ModelError, NotFound
from studio.history.files import atomic_write
from studio.settings import ASSETS_DIR, Settings

log = logging.getLogger(__name__)

EMBEDDED_MODELS_DIR = ASSETS_DIR / "models"
EMBEDDED_MODEL = "micro-sd"
# The embedded ControlNets, by control type: the defaults for the embedded model.
EMBEDDED_CONTROLNETS = {"pose": "micro-controlnet-pose", "depth": "micro-controlnet-depth"}
# Words in a ControlNet's file name that tell its control type (A1111 names: control_v11p_sd15_openpose).
CONTROL_TYPE_WORDS = {"pose": ("openpose", "pose"), "depth": ("depth",)}
CONFIGS_DIR = ASSETS_DIR / "configs"
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"  # the CLIP BPE files our config folders share
PLACEHOLDER_MODEL = "placeholder-untrained"
WEIGHT_SUFFIXES = (".safetensors",)

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


@dataclass(frozen=True)
class ModelEntry:
    """A checkpoint the studio knows about; nothing is loaded until a run needs it."""

    name: str
    source: str  # "embedded" | "placeholder" | "diffusers" | "single_file" | "hub"
    location: str  # a path, or a hub id
    config_dir: str | None = None  # diffusers config folder for a single file
    description: str = ""
    example_prompts: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def label(self) -> str:
        notes = {"embedded": " (embedded)", "placeholder": " (untrained placeholder)", "hub": " (hub)"}
        return self.name + notes.get(self.source, "")


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


class HashCache:
    """sha256 of model weights, remembered by path + size + mtime so big files are hashed once."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            self._data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            self._data = {}

    @staticmethod
    def weight_files(location: Path) -> list[Path]:
        if location.is_file():
            return [location]
        return sorted(p for p in location.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())

    def sha256(self, location: Path) -> str:
        files = self.weight_files(location)
        if not files:
            raise ModelError(f"{location} holds no .safetensors weights", field="model")
        stamp = [[str(p.relative_to(location) if location.is_dir() else p.name), p.stat().st_size,
                  p.stat().st_mtime_ns] for p in files]
        key = str(location.resolve())
        with self._lock:
            cached = self._data.get(key)
            if cached and cached["stamp"] == stamp:
                return cached["sha256"]
        digest = hashlib.sha256()
        for path in files:
            with open(path, "rb") as handle:
                while chunk := handle.read(8 * 2**20):
                    digest.update(chunk)
        value = digest.hexdigest()
        with self._lock:
            self._data[key] = {"stamp": stamp, "sha256": value}
            atomic_write(self.path, json.dumps(self._data, indent=1).encode())
        return value


def _model_card(folder: Path) -> tuple[str, tuple[str, ...]]:
    try:
        card = json.loads((folder / "model_card.json").read_text())
        return card.get("description", ""), tuple(card.get("example_prompts", ()))
    except (OSError, json.JSONDecodeError):
        return "", ()


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not Path(text).exists()


class ModelManager:
    def __init__(self, settings: Settings, placement: Placement):
        self.settings = settings
        self.placement = placement
        self.hashes = HashCache(settings.data_dir / "model_hashes.json")
        self._registry_path = settings.data_dir / "models.json"
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._vaes: dict[tuple[str, str], object] = {}
        self._controlnets: dict[str, object] = {}
        self._lock = threading.RLock()
        self.load_count = 0  # how many times weights were read from disk (the cache's effect)

    # -- registry --------------------------------------------------------------------------

    @property
    def checkpoints_dir(self) -> Path:
        return self.settings.models_dir / "Stable-diffusion"

    @property
    def vae_dir(self) -> Path:
        return self.settings.models_dir / "VAE"

    @property
    def controlnet_dir(self) -> Path:
        return self.settings.models_dir / "ControlNet"

    def _added(self) -> list[dict]:
        try:
            return json.loads(self._registry_path.read_text())
        except (OSError, json.JSONDecodeError):
            return []

    @staticmethod
    def _entry_for(path: Path, name: str | None = None, config_dir: str | None = None) -> ModelEntry:
        if path.is_dir():
            description, examples = _model_card(path)
            return ModelEntry(name or path.name, "diffusers", str(path), None, description, examples)
        return ModelEntry(name or path.stem, "single_file", str(path), config_dir)

    def entries(self) -> dict[str, ModelEntry]:
        """Every known model by name: embedded, placeholder, the models folder, and ones added by path."""
        found: dict[str, ModelEntry] = {}
        embedded = EMBEDDED_MODELS_DIR / EMBEDDED_MODEL
        if (embedded / "model_index.json").is_file():
            description, examples = _model_card(embedded)
            found[EMBEDDED_MODEL] = ModelEntry(EMBEDDED_MODEL, "embedded", str(embedded), None, description, examples)
        placeholder = self.settings.data_dir / "models" / PLACEHOLDER_MODEL
        if (placeholder / "model_index.json").is_file():
            found[PLACEHOLDER_MODEL] = ModelEntry(
                PLACEHOLDER_MODEL, "placeholder", str(placeholder), None,
                "Randomly initialised, untrained: it draws noise. Add a real checkpoint in the Models tab.")
        if self.checkpoints_dir.is_dir():
            for path in sorted(self.checkpoints_dir.iterdir()):
                if path.suffix == ".safetensors" or (path / "model_index.json").is_file():
                    found.setdefault(path.stem if path.is_file() else path.name, self._entry_for(path))
        for item in self._added():
            found[item["name"]] = ModelEntry(**{k: tuple(v) if k == "example_prompts" else v
                                                for k, v in item.items()})
        return found

    def add(self, location: str, name: str | None = None, config_dir: str | None = None) -> ModelEntry:
        """Register a model by path (single .safetensors file or diffusers folder) or hub id."""
        location = location.strip()
        if not location:
            raise ModelError("give a path to a .safetensors file or a diffusers folder", field="path")
        path = Path(location).expanduser()
        if path.exists():
            if path.is_file():
                refuse_pickle(path, "path")
                if path.suffix != ".safetensors":
                    raise ModelError(f"{path.name} is not a .safetensors file", field="path")
                info = inspect_checkpoint(path, "path")
                if info.kind != "model":
                    raise ModelError(f"{path.name} is a {info.kind}, not a checkpoint; put it in "
                                     f"{self.controlnet_dir if info.kind == 'controlnet' else self.vae_dir}",
                                     field="path")
            elif not (path / "model_index.json").is_file():
                raise ModelError(f"{path} is a folder without model_index.json; is it a diffusers model?",
                                 field="path")
            entry = self._entry_for(path.resolve(), name, config_dir)
        elif _looks_like_hub_id(location):
            if self.settings.offline:
                raise ModelError(f"{location!r} looks like a hub id, but the studio is offline "
                                 "(STUDIO_OFFLINE=1); download the model and add its folder or file instead",
                                 field="path")
            entry = ModelEntry(name or location.split("/")[-1], "hub", location)
        else:
            raise ModelError(f"{location} does not exist", field="path")
        existing = self.entries().get(entry.name)
        if existing is not None and existing.location != entry.location:
            raise ModelError(f"a model named {entry.name!r} already exists; choose another name", field="name")
        items = [i for i in self._added() if i["name"] != entry.name]
        items.append({**entry.__dict__, "example_prompts": list(entry.example_prompts)})
        atomic_write(self._registry_path, json.dumps(items, indent=1).encode())
        return entry

    def default_name(self) -> str:
        """The configured default, else the embedded model, else a generated placeholder."""
        entries = self.entries()
        if self.settings.default_model:
            if self.settings.default_model not in entries:
                raise NotFound(f"default model {self.settings.default_model!r} is not among the known models "
                               f"({', '.join(entries) or 'none'})", field="default_model")
            return self.settings.default_model
        if EMBEDDED_MODEL in entries:
            return EMBEDDED_MODEL
        if PLACEHOLDER_MODEL not in entries:
            self._make_placeholder()
        return PLACEHOLDER_MODEL

    def _make_placeholder(self) -> None:
        from studio.micro.tiny import save_tiny_model

        dest = self.settings.data_dir / "models" / PLACEHOLDER_MODEL
        log.warning("no embedded model in assets/; generating an untrained placeholder in %s", dest)
        save_tiny_model(dest, seed=0)

    def resolve(self, name: str | None) -> ModelEntry:
        name = name or self.default_name()
        entries = self.entries()
        if name not in entries:
            raise NotFound(f"unknown model {name!r}; known models: {', '.join(entries) or 'none'}", field="model")
        entry = entries[name]
        if entry.source != "hub" and not entry.path.exists():
            raise ModelError(f"the file of model {name!r} is missing: {entry.location}", field="model")
        return entry

    def native_size(self, entry: ModelEntry) -> int:
        """The model's training resolution, read from its configs without loading weights."""
        if entry.name in self._cache:
            return self._cache[entry.name].native_size
        if entry.source == "single_file":
            try:
                family = inspect_checkpoint(entry.path).family
            except ModelError:
                return 512
            return {"sd1": 512, "sd2": 768, "sdxl": 1024}[family]
        try:
            unet = json.loads((entry.path / "unet" / "config.json").read_text())
            vae = json.loads((entry.path / "vae" / "config.json").read_text())
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, KeyError, ValueError, json.JSONDecodeError):
            return 512

    def model_hash(self, entry: ModelEntry) -> str:
        if entry.source == "hub":
            return hashlib.sha256(entry.location.encode()).hexdigest()
        return self.hashes.sha256(entry.path)

    # -- ControlNets -------------------------------------------------------------------------

    def controlnet_entries(self) -> dict[str, ModelEntry]:
        """ControlNets by name: the embedded ones and those in models/ControlNet (file or folder)."""
        found: dict[str, ModelEntry] = {}
        for name in EMBEDDED_CONTROLNETS.values():
            folder = EMBEDDED_MODELS_DIR / name
            if (folder / "config.json").is_file():
                description, _ = _model_card(folder)
                found[name] = ModelEntry(name, "embedded", str(folder), None, description)
        if self.controlnet_dir.is_dir():
            for path in sorted(self.controlnet_dir.iterdir()):
                if path.suffix == ".safetensors":
                    found.setdefault(path.stem, ModelEntry(path.stem, "single_file", str(path)))
                elif (path / "config.json").is_file():
                    found.setdefault(path.name, ModelEntry(path.name, "diffusers", str(path)))
        return found

    def default_controlnet(self, control_type: str, model_name: str | None) -> str:
        """The ControlNet a unit uses when none is chosen: embedded for the embedded model, else by file name."""
        entries = self.controlnet_entries()
        model_name = model_name or self.default_name()
        embedded = EMBEDDED_CONTROLNETS[control_type]
        if model_name == EMBEDDED_MODEL and embedded in entries:
            return embedded
        for name, entry in entries.items():
            if entry.source != "embedded" and any(word in name.lower() for word in CONTROL_TYPE_WORDS[control_type]):
                return name
        hub = {"pose": "lllyasviel/control_v11p_sd15_openpose", "depth": "lllyasviel/control_v11f1p_sd15_depth"}
        raise ModelError(f"no {control_type} ControlNet for {model_name!r}: put one (e.g. the .safetensors of "
                         f"{hub[control_type]}) in {self.controlnet_dir}, with '{CONTROL_TYPE_WORDS[control_type][0]}' "
                         "in its file name, or choose one in the unit", field="model")

    def load_controlnet(self, name: str):
        """A ControlNetModel on the device in the base dtype, loaded once and cached."""
        import diffusers

        entries = self.controlnet_entries()
        if name not in entries:
            raise NotFound(f"unknown ControlNet {name!r}; put it in {self.controlnet_dir} (known: "
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
                    self._check_folder_weights(entry.path)
                    net = diffusers.ControlNetModel.from_pretrained(entry.location, local_files_only=True,
                                                                    dtype=self.placement.dtype)
            except ModelError:
                raise
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
                raise ModelError(f"could not load ControlNet {name!r}: {error}", field="model") from error
            self._controlnets[name] = net.to(self.placement.device)
            return self._controlnets[name]

    def controlnet_hash(self, name: str) -> str:
        return self.model_hash(self.controlnet_entries()[name])

    def vae_names(self) -> list[str]:
        if not self.vae_dir.is_dir():
            return []
        return sorted(p.name for p in self.vae_dir.iterdir()
                      if p.suffix == ".safetensors" or (p / "config.json").is_file())

    # -- loading ---------------------------------------------------------------------------

    def loaded_names(self) -> list[str]:
        return list(self._cache)

    def _estimate_bytes(self, entry: ModelEntry) -> int:
        if entry.source == "hub":
            return 0
        size = sum(p.stat().st_size for p in self.hashes.weight_files(entry.path))
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
        entry = self.resolve(name)
        with self._lock:
            if entry.name in self._cache:
                self._cache.move_to_end(entry.name)
                return self._cache[entry.name]
            self._make_room(self._estimate_bytes(entry))
            model = self._load_entry(entry)
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
                    index = json.loads((entry.path / "model_index.json").read_text())
                    self._check_folder_weights(entry.path)
                xl = index is not None and "XL" in index.get("_class_name", "")
                cls = getattr(diffusers, PIPELINE_CLASSES[("sdxl" if xl else "sd", "txt2img")])
                extra = {} if xl else _SD_ONLY_KWARGS
                pipe = cls.from_pretrained(location, local_files_only=entry.source != "hub", **common, **extra)
                family = "sdxl" if xl else ("sd2" if pipe.text_encoder.config.hidden_size == 1024 else "sd1")
        except ModelError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
            raise ModelError(f"could not load {entry.name!r}: {error}", field="model") from error
        pipe.set_progress_bar_config(disable=True)
        pipe.to(self.placement.device)
        if use_channels_last(self.placement.device):
            pipe.unet.to(memory_format=torch.channels_last)
        size = sum(p.numel() * p.element_size() for p in pipe.unet.parameters())
        size += sum(p.numel() * p.element_size() for p in pipe.vae.parameters())
        return LoadedModel(entry, pipe, family, self.model_hash(entry), size)

    @staticmethod
    def _check_folder_weights(folder: Path) -> None:
        for path in folder.rglob("*"):
            if path.suffix in PICKLE_SUFFIXES:
                raise ModelError(f"{path} is a pickle file; the studio loads only .safetensors weights",
                                 field="model")
            if path.suffix == ".safetensors":
                read_header(path)

    def load_vae(self, name: str, family: str):
        """A VAE override from models/VAE (single file or diffusers folder), cached per family."""
        import diffusers

        key = (name, family)
        if key not in self._vaes:
            path = self.vae_dir / name
            if not path.exists():
                raise NotFound(f"unknown VAE {name!r}; put it in {self.vae_dir}", field="vae")
            try:
                if path.is_dir():
                    vae = diffusers.AutoencoderKL.from_pretrained(str(path), dtype=self.placement.dtype,
                                                                  local_files_only=True)
                else:
                    refuse_pickle(path)
                    read_header(path)
                    vae = diffusers.AutoencoderKL.from_single_file(
                        str(path), config=str(CONFIGS_DIR / family / "vae"), local_files_only=True,
                        dtype=self.placement.dtype)
            except (OSError, ValueError, RuntimeError, KeyError) as error:
                raise ModelError(f"could not load VAE {name!r}: {error}", field="vae") from error
            self._vaes[key] = vae.to(self.placement.device)
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
        """Registry row for the Models tab and `studio models list`."""
        row = {"name": entry.name, "source": entry.source, "location": entry.location,
               "loaded": entry.name in self._cache, "description": entry.description}
        if entry.source == "single_file" and entry.path.exists():
            try:
                info = inspect_checkpoint(entry.path)
                row.update(family=info.family, inpaint=info.inpaint)
            except ModelError as error:
                row.update(error=str(error))
        elif entry.name in self._cache:
            loaded = self._cache[entry.name]
            row.update(family=loaded.family, inpaint=loaded.inpaint_unet, native_size=loaded.native_size)
        return row
