"""Structured prompt templates: a prompt written as subject, style, lighting, camera, mood and composition.

compose() joins the filled fields into one prompt; TemplateBook keeps named templates in templates.json in
the data folder. A damaged file is reported, never overwritten: the artist's templates may be in it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Mapping

from studio.errors import InputError, NotFound, StudioError
from studio.fileio import atomic_write
from studio.requests import check_text, shown
from studio.styles import check_name, file_signature, read_limited

# (key, UI label), in the order compose() joins them: the subject first, as prompts are usually written
TEMPLATE_FIELDS: tuple[tuple[str, str], ...] = (
    ("subject", "Subject"),
    ("style", "Style"),
    ("lighting", "Lighting"),
    ("camera", "Camera / lens"),
    ("mood", "Mood"),
    ("composition", "Composition"),
)
TEMPLATE_FIELD_NAMES = tuple(key for key, _ in TEMPLATE_FIELDS)
TEMPLATES_FILENAME = "templates.json"
FORMAT_VERSION = 1
MAX_TEMPLATES_BYTES = 5 * 1024 * 1024
MAX_TEMPLATES = 10_000
# Trimmed from a field's edges: whitespace, and a dangling comma that would otherwise give ", ," in the prompt
_EDGES = " \t\r\n,"


def template_values(values: Mapping[str, Any] | None) -> dict[str, str]:
    """Every template field as text (a missing or None field is empty); unknown keys and non-text are refused."""
    if values is not None and not isinstance(values, Mapping):
        raise InputError(f"{shown(values)} is not a template (an object of {', '.join(TEMPLATE_FIELD_NAMES)})",
                         field="template")
    values = dict(values or {})
    unknown = sorted(set(values) - set(TEMPLATE_FIELD_NAMES), key=str)
    if unknown:
        raise InputError(f"unknown field(s) {', '.join(map(shown, unknown))}; use {', '.join(TEMPLATE_FIELD_NAMES)}",
                         field="template")
    result = {}
    for key in TEMPLATE_FIELD_NAMES:
        value = values.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise InputError(f"{shown(value)} is not text", field=f"template.{key}")
        result[key] = check_text(value, f"template.{key}")
    return result


def compose(values: Mapping[str, Any] | None) -> str:
    """The prompt a template makes: its non-empty fields, trimmed, joined with ", " in TEMPLATE_FIELDS order.

    A field may hold commas of its own ("oil painting, impasto"); only its edges are trimmed.
    """
    parts = [value.strip(_EDGES) for value in template_values(values).values()]
    return check_text(", ".join(part for part in parts if part), "prompt")


class TemplateBook:
    """Named templates in a JSON file, reread when it changed on disk and written atomically.

    A file that cannot be read (not JSON, a wrong shape, a newer format) leaves the book empty with `problem`
    saying why, and save/delete refuse until the file is fixed or moved aside.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.problem: str | None = None
        # the file's entries as read: other templates are written back as they were, unknown keys included
        self._raw: dict[str, dict] = {}
        self._signature: object = self  # what _raw was read from; self = never read
        self._lock = threading.RLock()  # the UI's worker threads share one book

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> TemplateBook:
        return cls(Path(data_dir) / TEMPLATES_FILENAME)

    def load(self) -> bool:
        """Reread the file when its mtime, size or inode changed since the last read; True when it was reread."""
        with self._lock:
            signature = file_signature(self.path)
            if signature == self._signature:
                return False
            raw, problem = {}, None
            if signature is not None:
                try:
                    raw = self._read()
                except InputError as error:
                    problem = (f"{error.message}. Fix the file or move it aside; until then templates cannot be saved "
                               "(the studio will not overwrite it)")
                    raw = {}
            self._raw, self.problem, self._signature = raw, problem, signature
            return True

    def names(self) -> list[str]:
        with self._lock:
            self.load()
            return list(self._raw)

    def get(self, name: str) -> dict[str, str]:
        """The template's fields, every one of TEMPLATE_FIELD_NAMES present."""
        with self._lock:
            self.load()
            if name not in self._raw:
                raise NotFound(self._unknown(name), field="template")
            entry = self._raw[name]
            return {key: entry.get(key, "") for key in TEMPLATE_FIELD_NAMES}

    def save(self, name: str, values: Mapping[str, Any]) -> dict[str, str]:
        """Add a template, or replace the one of that name in its place."""
        name = check_name(name, "template_name", noun="template")
        entry = template_values(values)
        with self._lock:
            self._writable()
            if name not in self._raw and len(self._raw) >= MAX_TEMPLATES:
                raise InputError(f"there are {MAX_TEMPLATES:,} templates, the most the file may hold; delete some "
                                 "first", field="template_name")
            raw = dict(self._raw)
            raw[name] = entry  # an existing key keeps its place in the dict, so in the file and the list
            self._write(raw, "template_name")
            return dict(entry)

    def delete(self, name: str) -> None:
        with self._lock:
            self._writable()
            if name not in self._raw:
                raise NotFound(self._unknown(name), field="template")
            self._write({key: entry for key, entry in self._raw.items() if key != name}, "template")

    def _read(self) -> dict[str, dict]:
        value = read_json_limited(self.path)
        where = str(self.path)
        if not isinstance(value, dict) or not isinstance(value.get("templates"), dict):
            raise InputError(f"{where} is not a templates file (no \"templates\" object)", field="templates_file")
        version = value.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InputError(f"{where} has no valid format version ({shown(version)})", field="templates_file")
        if version > FORMAT_VERSION:
            raise InputError(f"{where} was written by a newer studio (format {version}; this one reads "
                             f"{FORMAT_VERSION})", field="templates_file")
        templates = value["templates"]
        if len(templates) > MAX_TEMPLATES:
            raise InputError(f"{where} holds {len(templates):,} templates; at most {MAX_TEMPLATES:,}",
                             field="templates_file")
        for name, entry in templates.items():
            if not isinstance(entry, dict):
                raise InputError(f"{where}: template {shown(name)} is {shown(entry)}, not an object of fields",
                                 field="templates_file")
            for key in TEMPLATE_FIELD_NAMES:
                if not isinstance(entry.get(key, ""), str):
                    raise InputError(f"{where}: template {shown(name)} has {key} = {shown(entry[key])}, not text",
                                     field="templates_file")
                try:
                    check_text(entry.get(key, ""), key)
                except InputError as error:
                    raise InputError(f"{where}: template {shown(name)}, {key} {error.message}",
                                     field="templates_file") from None
        return dict(templates)

    def _unknown(self, name: str) -> str:
        if self.problem:
            return f"template {shown(name)} cannot be used: {self.problem}"
        known = list(self._raw)
        listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        return f"template {shown(name)} is unknown; " + (f"known templates: {listed}" if known else
                                                          "there are no templates yet")

    def _writable(self) -> None:
        """Reread (the file may have changed) and refuse a change while the file is damaged."""
        self.load()
        if self.problem:
            raise StudioError(self.problem, field="templates_file")

    def _write(self, raw: dict[str, dict], field: str) -> None:
        text = json.dumps({"version": FORMAT_VERSION, "templates": raw}, ensure_ascii=False, indent=2) + "\n"
        data = text.encode("utf-8")
        if len(data) > MAX_TEMPLATES_BYTES:
            raise InputError(f"the templates file would be {len(data) / 2**20:.1f} MB; it may be at most "
                             f"{MAX_TEMPLATES_BYTES // 2**20} MB (shorten or delete some templates)", field=field)
        try:
            atomic_write(self.path, data)
        except OSError as error:
            raise StudioError(f"cannot write {self.path}: {error.strerror or error}; nothing was changed",
                              field=field) from None
        self._raw, self._signature = raw, file_signature(self.path)


def read_json_limited(path: Path) -> Any:
    """A JSON file's value, refused (InputError) when it is larger than a templates file can be, or is not JSON.

    The bytes are read once, under the size bound, and parsed as fileio.read_json parses (RecursionError from a
    deeply nested file is a bad file, not a crash).
    """
    data = read_limited(path, MAX_TEMPLATES_BYTES, "templates_file", "a templates file")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text", field="templates_file") from None
    except RecursionError:
        raise InputError(f"{path} nests its JSON too deeply to read", field="templates_file") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})",
                         field="templates_file") from None
