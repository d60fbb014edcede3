"""The registry of models the studio knows: entries, adding by path, resolving names, hashes, health.

Nothing here loads weights. A model's files are checked (safetensors headers against the file,
a diffusers folder's index, configs and weights) when it is added and when it is listed; a bad file
marks only that model as unloadable, with the reason, and never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from studio.engine.checkpoints import PICKLE_SUFFIXES, inspect_checkpoint, read_header, refuse_pickle
from studio.engine.loras import LoraLibrary
from studio.engine.upscalers import UpscalerRegistry
from studio.errors import ModelError, NotFound
from studio.fileio import atomic_write, read_json
from studio.settings import ASSETS_DIR, Settings

log = logging.getLogger(__name__)

EMBEDDED_MODELS_DIR = ASSETS_DIR / "models"
EMBEDDED_MODEL = "micro-sd"
EMBEDDED_LORAS_DIR = ASSETS_DIR / "loras"  # LoRAs trained for the embedded model
EMBEDDED_UPSCALERS_DIR = ASSETS_DIR / "upscalers"  # the upscaler trained on the embedded model's world
# The embedded ControlNets, by control type: the defaults for the embedded model.
EMBEDDED_CONTROLNETS = {"pose": "micro-controlnet-pose", "depth": "micro-controlnet-depth"}
# Words in a ControlNet's file name that tell its control type (A1111 names: control_v11p_sd15_openpose).
CONTROL_TYPE_WORDS = {"pose": ("openpose", "pose"), "depth": ("depth",)}
PLACEHOLDER_MODEL = "placeholder-untrained"
WEIGHT_SUFFIXES = (".safetensors",)
# Components of a diffusers folder that carry weights (the others are configs, tokenizers, schedulers).
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "controlnet")


def embedded_upscalers() -> dict[str, Path]:
    if not EMBEDDED_UPSCALERS_DIR.is_dir():
        return {}
    return {path.stem: path for path in sorted(EMBEDDED_UPSCALERS_DIR.glob("*.safetensors"))}


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


def weight_files(location: Path) -> list[Path]:
    if location.is_file():
        return [location]
    return sorted(p for p in location.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def file_stamp(location: Path) -> list:
    """What changes when a model's files change: names, sizes and modification times."""
    files = [location] if location.is_file() else sorted(p for p in location.rglob("*") if p.is_file())
    return [[str(p.relative_to(location) if location.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
            for p in files]


class HashCache:
    """sha256 of model weights, remembered by path + size + mtime so big files are hashed once."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            data = read_json(path)
        except (OSError, ValueError):
            data = {}
        self._data = data if isinstance(data, dict) else {}

    def sha256(self, location: Path) -> str:
        files = weight_files(location)
        if not files:
            raise ModelError(f"{location} holds no .safetensors weights", field="model")
        stamp = [[str(p.relative_to(location) if location.is_dir() else p.name), p.stat().st_size,
                  p.stat().st_mtime_ns] for p in files]
        key = str(location.resolve())
        with self._lock:
            cached = self._data.get(key)
            if isinstance(cached, dict) and cached.get("stamp") == stamp and isinstance(cached.get("sha256"), str):
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


def model_card(folder: Path) -> tuple[str, tuple[str, ...]]:
    """Description and example prompts of a model folder; a missing or odd card is just no card."""
    try:
        card = read_json(folder / "model_card.json")
    except (OSError, ValueError):
        return "", ()
    if not isinstance(card, dict):
        return "", ()
    description = card.get("description") if isinstance(card.get("description"), str) else ""
    examples = card.get("example_prompts") if isinstance(card.get("example_prompts"), list) else []
    return description, tuple(p for p in examples if isinstance(p, str))


def check_diffusers_folder(folder: Path, field: str = "model") -> dict:
    """A diffusers folder's model_index.json, after checking what it names is there and loadable.

    Refuses pickle weights anywhere (a `unet/*.bin` would be unpickled by diffusers), checks every
    JSON file parses (a deeply nested one would crash the loader) and every weight-bearing component
    has a config and valid .safetensors weights.
    """
    try:
        index = read_json(folder / "model_index.json")
    except OSError as error:
        raise ModelError(f"{folder} has no readable model_index.json ({error.strerror}); is it a diffusers "
                         "model?", field=field) from error
    except ValueError as error:
        raise ModelError(f"{folder}/model_index.json is damaged: {error}", field=field) from error
    if not isinstance(index, dict):
        raise ModelError(f"{folder}/model_index.json is not a JSON object", field=field)
    check_folder_files(folder, field)
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or None in spec:
            continue
        if component in WEIGHTED_COMPONENTS:
            part = folder / component
            if not (part / "config.json").is_file():
                raise ModelError(f"{folder.name}: the {component} has no config.json in {part}", field=field)
            if not any(part.glob("*.safetensors")):
                raise ModelError(f"{folder.name}: the {component} has no .safetensors weights in {part}",
                                 field=field)
    return index


def check_folder_files(folder: Path, field: str) -> None:
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        where = path.relative_to(folder)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelError(f"{folder.name}/{where} is a pickle file; loading one can run arbitrary code, so the "
                             "studio loads only .safetensors weights: convert it and remove the pickle",
                             field=field)
        if path.suffix == ".safetensors":
            read_header(path, field)
        elif path.suffix == ".json":
            try:
                read_json(path)
            except (OSError, ValueError) as error:
                raise ModelError(f"{folder.name}/{where} is damaged: {error}", field=field) from error


def check_model_files(entry: ModelEntry, field: str = "model") -> None:
    """Raise ModelError saying why this model cannot load (bad header, pickle, missing part); else nothing."""
    if entry.source == "hub":
        return
    if not entry.path.exists():
        raise ModelError(f"the file of model {entry.name!r} is missing: {entry.location}", field=field)
    if entry.path.is_file():
        info = inspect_checkpoint(entry.path, field)
        if info.kind != "model":
            raise ModelError(f"{entry.path.name} is a {info.kind}, not a checkpoint", field=field)
    else:
        check_diffusers_folder(entry.path, field)


def looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~")) and not Path(text).exists()


class ModelRegistry:
    """Every model by name: the embedded ones, the A1111 models folder and those added by path."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.hashes = HashCache(settings.data_dir / "model_hashes.json")
        self._registry_path = settings.data_dir / "models.json"
        self._problems: dict[str, tuple[list, str | None]] = {}  # location -> (stamp, reason)
        self._lock = threading.Lock()
        self.loras = LoraLibrary(settings.models_dir / "Lora", EMBEDDED_LORAS_DIR)
        self.upscalers = UpscalerRegistry(settings.models_dir, extra=embedded_upscalers())

    @property
    def checkpoints_dir(self) -> Path:
        return self.settings.models_dir / "Stable-diffusion"

    @property
    def vae_dir(self) -> Path:
        return self.settings.models_dir / "VAE"

    @property
    def controlnet_dir(self) -> Path:
        return self.settings.models_dir / "ControlNet"

    @property
    def placeholder_dir(self) -> Path:
        return self.settings.data_dir / "models" / PLACEHOLDER_MODEL

    # -- the entries ------------------------------------------------------------------------

    def _added(self) -> list[ModelEntry]:
        """Models added by path (data/models.json); a damaged or hand-edited item is skipped, not fatal."""
        try:
            items = read_json(self._registry_path)
        except OSError:
            return []
        except ValueError as error:
            log.warning("ignoring %s: %s", self._registry_path, error)
            return []
        entries = []
        for item in items if isinstance(items, list) else []:
            try:
                entries.append(ModelEntry(**{k: tuple(v) if k == "example_prompts" else v for k, v in item.items()}))
            except (TypeError, AttributeError):
                log.warning("ignoring a malformed entry in %s: %.200r", self._registry_path, item)
        return entries

    @staticmethod
    def _entry_for(path: Path, name: str | None = None, config_dir: str | None = None) -> ModelEntry:
        if path.is_dir():
            description, examples = model_card(path)
            return ModelEntry(name or path.name, "diffusers", str(path), None, description, examples)
        return ModelEntry(name or path.stem, "single_file", str(path), config_dir)

    def entries(self) -> dict[str, ModelEntry]:
        """Every known model by name: embedded, placeholder, the models folder, and ones added by path."""
        found: dict[str, ModelEntry] = {}
        embedded = EMBEDDED_MODELS_DIR / EMBEDDED_MODEL
        if (embedded / "model_index.json").is_file():
            description, examples = model_card(embedded)
            found[EMBEDDED_MODEL] = ModelEntry(EMBEDDED_MODEL, "embedded", str(embedded), None, description, examples)
        if (self.placeholder_dir / "model_index.json").is_file():
            found[PLACEHOLDER_MODEL] = ModelEntry(
                PLACEHOLDER_MODEL, "placeholder", str(self.placeholder_dir), None,
                "Randomly initialised, untrained: it draws noise. Add a real checkpoint in the Models tab.")
        if self.checkpoints_dir.is_dir():
            for path in sorted(self.checkpoints_dir.iterdir()):
                if path.suffix == ".safetensors" or (path / "model_index.json").is_file():
                    found.setdefault(path.stem if path.is_file() else path.name, self._entry_for(path))
        for entry in self._added():
            found[entry.name] = entry
        return found

    def add(self, location: str, name: str | None = None, config_dir: str | None = None) -> ModelEntry:
        """Register a model by path (single .safetensors file or diffusers folder) or hub id, after checking it."""
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
            else:
                check_diffusers_folder(path, "path")
            entry = self._entry_for(path.resolve(), name, config_dir)
        elif looks_like_hub_id(location):
            if self.settings.offline:
                raise ModelError(f"{location!r} looks like a hub id, but the studio is offline "
                                 "(STUDIO_OFFLINE=1); download the model and add its folder or file instead",
                                 field="path")
            entry = ModelEntry(name or location.split("/")[-1], "hub", location)
        else:
            raise ModelError(f"{location} does not exist", field="path")
        with self._lock:
            existing = self.entries().get(entry.name)
            if existing is not None and existing.location != entry.location:
                raise ModelError(f"a model named {entry.name!r} already exists; choose another name", field="name")
            items = [{**e.__dict__, "example_prompts": list(e.example_prompts)}
                     for e in self._added() if e.name != entry.name]
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
            from studio.micro.tiny import save_tiny_model

            log.warning("no embedded model in assets/; generating an untrained placeholder in %s",
                        self.placeholder_dir)
            save_tiny_model(self.placeholder_dir, seed=0)
        return PLACEHOLDER_MODEL

    def resolve(self, name: str | None) -> ModelEntry:
        name = name or self.default_name()
        entries = self.entries()
        if name not in entries:
            raise NotFound(f"unknown model {name!r}; known models: {', '.join(entries) or 'none'}", field="model")
        entry = entries[name]
        if entry.source != "hub" and not entry.path.exists():
            raise ModelError(f"the file of model {name!r} is missing: {entry.location}", field="model")
        return entry

    def problem(self, entry: ModelEntry) -> str | None:
        """Why this model cannot load (checked once per version of its files), or None when it looks sound."""
        if entry.source == "hub":
            return None
        try:
            stamp = file_stamp(entry.path)
        except OSError as error:
            return f"its files cannot be read ({error.strerror})"
        with self._lock:
            cached = self._problems.get(entry.location)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            check_model_files(entry)
            reason = None
        except ModelError as error:
            reason = error.message
        with self._lock:
            self._problems[entry.location] = (stamp, reason)
        return reason

    def model_hash(self, entry: ModelEntry) -> str:
        if entry.source == "hub":
            return hashlib.sha256(entry.location.encode()).hexdigest()
        return self.hashes.sha256(entry.path)

    def native_size(self, entry: ModelEntry) -> int:
        """The model's training resolution, read from its files without loading weights (512 if unreadable)."""
        if entry.source == "single_file":
            try:
                family = inspect_checkpoint(entry.path).family
            except ModelError:
                return 512
            return {"sd1": 512, "sd2": 768, "sdxl": 1024}[family]
        try:
            unet = read_json(entry.path / "unet" / "config.json")
            vae = read_json(entry.path / "vae" / "config.json")
            return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        except (OSError, KeyError, ValueError, TypeError):
            return 512

    # -- ControlNets and VAEs -----------------------------------------------------------------

    def controlnet_entries(self) -> dict[str, ModelEntry]:
        """ControlNets by name: the embedded ones and those in models/ControlNet (file or folder)."""
        found: dict[str, ModelEntry] = {}
        for name in EMBEDDED_CONTROLNETS.values():
            folder = EMBEDDED_MODELS_DIR / name
            if (folder / "config.json").is_file():
                description, _ = model_card(folder)
                found[name] = ModelEntry(name, "embedded", str(folder), None, description)
        if self.controlnet_dir.is_dir():
            for path in sorted(self.controlnet_dir.iterdir()):
                if path.suffix == ".safetensors":
                    found.setdefault(path.stem, ModelEntry(path.stem, "single_file", str(path)))
                elif (path / "config.json").is_file():
                    found.setdefault(path.name, ModelEntry(path.name, "diffusers", str(path)))
        return found

    def controlnet_problem(self, entry: ModelEntry) -> str | None:
        """Why this ControlNet cannot load, or None."""
        try:
            if entry.path.is_file():
                info = inspect_checkpoint(entry.path)
                if info.kind != "controlnet":
                    return f"{entry.path.name} is a {info.kind}, not a ControlNet"
            else:
                check_folder_files(entry.path, "model")
        except ModelError as error:
            return error.message
        except OSError as error:
            return f"its files cannot be read ({error.strerror})"
        return None

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

    def vae_names(self) -> list[str]:
        if not self.vae_dir.is_dir():
            return []
        return sorted(p.name for p in self.vae_dir.iterdir()
                      if p.suffix == ".safetensors" or (p / "config.json").is_file())

    def describe(self, entry: ModelEntry) -> dict:
        """Registry row for the Models tab and `studio models list` (no weights loaded)."""
        row = {"name": entry.name, "source": entry.source, "location": entry.location,
               "description": entry.description}
        reason = self.problem(entry)
        if reason:
            row["error"] = reason
        elif entry.source == "single_file":
            info = inspect_checkpoint(entry.path)
            row.update(family=info.family, inpaint=info.inpaint)
        return row
