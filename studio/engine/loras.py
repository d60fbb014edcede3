"""LoRAs: A1111's `<lora:name:weight>` prompt tags, the models/Lora folder, and applying them to a pipeline.

A tag is removed from the text the encoder sees and names a file in `models/Lora/` (kohya or
diffusers/PEFT key layout, `.safetensors` only). diffusers' LoRA loader injects the adapters with
peft into the shared UNet and text encoder for one run; they are unloaded right after it, so the next
run without a tag gets the base model's exact pixels.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from studio.engine.checkpoints import PICKLE_SUFFIXES, read_header
from studio.errors import InputError, ModelError, StudioError

log = logging.getLogger(__name__)

# <lora:name> or <lora:name:weight>, as A1111 writes them; any other "<lora:" is a malformed tag.
TAG = re.compile(r"<lora:([^:<>]*)(?::([^<>]*))?>")
OPENING = "<lora:"
MAX_WEIGHT = 10.0  # A1111 sets no bound; beyond this a LoRA only produces noise
# Key words of the two layouts diffusers reads: kohya (lora_down/lora_up/alpha) and PEFT (lora_A/lora_B).
LORA_KEY_WORDS = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".alpha", "lora.down.", "lora.up.")


@dataclass(frozen=True)
class LoraTag:
    """One tag of a prompt: the LoRA's name and its weight."""

    name: str
    weight: float = 1.0

    @property
    def text(self) -> str:
        return f"<lora:{self.name}:{self.weight:g}>"


@dataclass(frozen=True)
class LoraUse:
    """A tag resolved to its file: what a run used and records (name, weight, A1111's short hash)."""

    name: str
    weight: float
    short_hash: str
    path: Path

    def record(self) -> dict:
        return {"name": self.name, "weight": self.weight, "hash": self.short_hash}


def parse_tags(prompt: str, field: str = "prompt") -> tuple[str, list[LoraTag]]:
    """The prompt without its LoRA tags (what the encoder sees) and the tags, in order."""
    tags: list[LoraTag] = []
    for match in TAG.finditer(prompt):
        name, weight_text = match.group(1).strip(), match.group(2)
        written = match.group(0)
        if not name:
            raise InputError(f"the LoRA tag {written} has no name; write <lora:name:weight>", field=field)
        weight = 1.0
        if weight_text is not None:
            try:
                weight = float(weight_text.strip())
            except ValueError:
                raise InputError(f"the weight of {written} is not a number; write <lora:{name}:0.8> (or a negative "
                                 "weight to push away from it)", field=field) from None
            if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
                raise InputError(f"the weight of {written} is out of range; use -{MAX_WEIGHT:g} to {MAX_WEIGHT:g}",
                                 field=field)
        if any(tag.name == name for tag in tags):
            raise InputError(f"LoRA {name!r} is tagged twice (<lora:{name}:...>); keep one tag with the weight you want",
                             field=field)
        tags.append(LoraTag(name, weight))
    text = TAG.sub("", prompt)
    if OPENING in text.lower():
        at = text.lower().index(OPENING)
        raise InputError(f"the LoRA tag at {text[at:at + 30]!r} is not closed; write <lora:name:weight>", field=field)
    return text, tags


def with_weights(prompt: str, weight: float, only: str | None = None) -> str:
    """The prompt with every LoRA tag's weight (or only one LoRA's) set to `weight` (X/Y/Z plots)."""

    def replace(match: re.Match) -> str:
        name = match.group(1).strip()
        return LoraTag(name, weight).text if only in (None, name) else match.group(0)

    return TAG.sub(replace, prompt)


def parse_hashes(text: str) -> dict[str, str]:
    """A1111's infotext field `Lora hashes: "name: abcdef123456, other: 0123456789ab"` as {name: hash}."""
    pairs = {}
    for item in (text or "").split(","):
        name, _, value = item.rpartition(":")
        if name.strip() and value.strip():
            pairs[name.strip()] = value.strip().lower()
    return pairs


def restore_tags(prompt: str, hashes_text: str | None, library: LoraLibrary) -> str:
    """An imported prompt whose tags name this studio's files: a LoRA named differently here is found by
    its hash, and one listed in `Lora hashes` but missing from the prompt gets its tag back."""
    hashes = parse_hashes(hashes_text or "")
    local = library.files()

    def rename(match: re.Match) -> str:
        name = match.group(1).strip()
        if name not in local and name in hashes:
            found = library.by_hash(hashes[name])
            if found:
                return f"<lora:{found}:{match.group(2) or 1}>"
        return match.group(0)

    prompt = TAG.sub(rename, prompt)
    tagged = {match.group(1).strip() for match in TAG.finditer(prompt)}
    for name, wanted in hashes.items():
        found = library.by_hash(wanted) or (name if name in local else None)
        if name not in tagged and found not in tagged:
            prompt += f" <lora:{found or name}:1>"
    return prompt


def short_hash(path: Path) -> str:
    """A1111's LoRA hash (the 'addnet' hash): sha256 of the tensor bytes after the safetensors header."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_size)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def check_lora_file(path: Path) -> str | None:
    """Why this file cannot be used as a LoRA, or None: pickles, bad headers and non-LoRA weights."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return f"{path.suffix} files are pickles that can run code when loaded; convert it to .safetensors"
    try:
        header = read_header(path)
    except StudioError as error:
        return str(error)
    keys = [key for key in header if key != "__metadata__"]
    if not keys:
        return "it holds no tensors"
    if not any(word in key for key in keys for word in LORA_KEY_WORDS):
        return "its tensors are not LoRA weights (no lora_down/lora_up or lora_A/lora_B keys); is it a checkpoint?"
    return None


class LoraLibrary:
    """The LoRA files the studio knows: models/Lora (A1111's folder) and the embedded ones, by file stem."""

    def __init__(self, folder: Path, embedded: Path | None = None):
        self.folder = folder
        self.embedded = embedded
        self._hashes: dict[tuple, str] = {}
        self._problems: dict[tuple, str | None] = {}
        self._lock = threading.Lock()

    def files(self) -> dict[str, Path]:
        """name -> file; a file in models/Lora shadows an embedded one of the same name."""
        found: dict[str, Path] = {}
        for folder in (self.embedded, self.folder):
            if folder is None or not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.is_file() and (path.suffix == ".safetensors" or path.suffix.lower() in PICKLE_SUFFIXES):
                    found[path.stem] = path
        return found

    @staticmethod
    def _stamp(path: Path) -> tuple:
        stat = path.stat()
        return (str(path), stat.st_size, stat.st_mtime_ns)

    def problem(self, path: Path) -> str | None:
        stamp = self._stamp(path)
        with self._lock:
            if stamp not in self._problems:
                self._problems[stamp] = check_lora_file(path)
            return self._problems[stamp]

    def hash_of(self, path: Path) -> str:
        stamp = self._stamp(path)
        with self._lock:
            if stamp not in self._hashes:
                self._hashes[stamp] = short_hash(path)
            return self._hashes[stamp]

    def names(self) -> list[str]:
        return [name for name, path in self.files().items() if self.problem(path) is None]

    def describe(self) -> list[dict]:
        """Rows of the Models tab: name, short hash, size and the problem of an unusable file."""
        rows = []
        for name, path in self.files().items():
            problem = self.problem(path)
            rows.append({"name": name, "hash": None if problem else self.hash_of(path),
                         "size_bytes": path.stat().st_size, "path": str(path), "problem": problem,
                         "embedded": self.embedded is not None and path.is_relative_to(self.embedded)})
        return rows

    def by_hash(self, wanted: str) -> str | None:
        """The local name of the LoRA with this short hash (an A1111 PNG may name it differently)."""
        wanted = wanted.strip().lower()
        for name, path in self.files().items():
            if self.problem(path) is None and wanted and self.hash_of(path).startswith(wanted):
                return name
        return None

    def resolve(self, tags: list[LoraTag], field: str = "prompt") -> list[LoraUse]:
        """Every tag's file, or an InputError naming the unknown or unusable LoRA and where LoRAs go."""
        files = self.files()
        uses = []
        for tag in tags:
            path = files.get(tag.name)
            if path is None:
                known = ", ".join(self.names()) or "none"
                raise InputError(f"unknown LoRA {tag.name!r} in <lora:{tag.name}:...>; put {tag.name}.safetensors "
                                 f"in {self.folder} or pick one of: {known}", field=field)
            problem = self.problem(path)
            if problem:
                raise InputError(f"LoRA {tag.name!r} cannot be used: {problem}", field=field)
            uses.append(LoraUse(tag.name, tag.weight, self.hash_of(path), path))
        return uses

    def check_recorded(self, recorded: list[dict], run_id: int) -> None:
        """A re-run needs the very files its run used: say which LoRA is gone or changed, by name and hash."""
        files = self.files()
        for item in recorded or []:
            name, old = item.get("name"), item.get("hash")
            path = files.get(name)
            if path is None or self.problem(path):
                raise InputError(f"LoRA {name!r} (hash {old}) that run #{run_id} used is no longer in {self.folder}; "
                                 "put the file back to re-run it", field="prompt")
            now = self.hash_of(path)
            if old and now != old:
                raise InputError(f"LoRA {name!r} changed since run #{run_id} (hash {old} then, {now} now), so a "
                                 "re-run would not repeat it; put the old file back, or Restore the run and "
                                 "Generate it as a new run", field="prompt")


@contextmanager
def applied(pipe, uses: list[LoraUse]):
    """The pipeline with these LoRAs loaded at their weights for the block; unloaded after, whatever happens.

    Loading per run keeps the shared weights clean: unload_lora_weights puts back the original layers,
    which is what makes a run without a tag repeat the base model's pixels exactly.
    """
    if not uses:
        yield pipe
        return
    try:
        names = []
        for index, use in enumerate(uses):
            adapter = f"lora_{index}"
            try:
                with warnings.catch_warnings():
                    # a second LoRA is a second adapter on purpose; peft warns about exactly that
                    warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                    pipe.load_lora_weights(str(use.path), adapter_name=adapter)
            except (ValueError, KeyError, RuntimeError, OSError, TypeError, AttributeError) as error:
                log.warning("LoRA %s did not load: %s", use.name, error)
                raise ModelError(f"LoRA {use.name!r} does not fit this model ({_reason(error)}); LoRAs only work on "
                                 "the model family they were trained for", field="prompt") from error
            names.append(adapter)
        pipe.set_adapters(names, adapter_weights=[use.weight for use in uses])
        yield pipe
    finally:
        pipe.unload_lora_weights()


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else "its layers do not match"
    return text[:160]
