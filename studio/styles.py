"""Prompt styles in AUTOMATIC1111's styles.csv format: read, applied, saved and imported as A1111 does.

The file is the artist's, often shared with an A1111 install, so it is changed row by row: a save or a delete
rewrites only the row it means to and keeps every other row, its order, its extra columns and its comment lines.
"""

from __future__ import annotations

import codecs
import csv
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from studio.errors import InputError, NotFound, StudioError
from studio.fileio import atomic_write
from studio.requests import check_text, shown

STYLES_FILENAME = "styles.csv"
# Bounds on what is read: a real styles.csv is kilobytes; these keep a wrong file (a model, a photo library's
# export) from being parsed into memory, and the same bounds hold for what the studio writes.
MAX_STYLES_BYTES = 5 * 1024 * 1024
MAX_STYLE_ROWS = 10_000
MAX_NAME_CHARS = 100
IMPORTED = "imported"
# A1111's header; a file written by an old A1111 has "text" instead of "prompt" and no negative column.
HEADER = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


class ImportResult(NamedTuple):
    """What import_from did: styles added under their own name, identical ones skipped, clashes renamed."""

    added: int
    skipped: int
    renamed: int


def merge_prompt(style_text: str, prompt: str) -> str:
    """A1111's merge_prompts: fill the {prompt} placeholder, or append with ", " (edges trimmed)."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def check_name(name: object, field: str, noun: str = "style") -> str:
    """A name the artist picks: one line, 1 to MAX_NAME_CHARS characters; returned without edge spaces."""
    if not isinstance(name, str):
        raise InputError(f"{shown(name)} is not a {noun} name", field=field)
    name = name.strip()
    if not name:
        raise InputError(f"is empty; give the {noun} a name", field=field)
    # splitlines knows every line break (\u2028, \x85...): a name must stay one line in a list and a CSV row
    if name.splitlines() != [name]:
        raise InputError(f"{shown(name)} contains a line break; a {noun} name is one line", field=field)
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"is {len(name)} characters long; use at most {MAX_NAME_CHARS}", field=field)
    return check_text(name, field)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file from the one read before (an atomic replace changes the inode); None: no file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def read_limited(path: Path, limit: int, field: str, noun: str) -> bytes:
    """A file's bytes, refused (InputError) before reading when it is larger than a file of its kind can be."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise InputError(f"{path} is {size / 2**20:.1f} MB; {noun} is at most {limit // 2**20} MB, so this is "
                             "not one", field=field)
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # the file may grow between stat and read
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}", field=field) from None
    if len(data) > limit:
        raise InputError(f"{path} is over {limit // 2**20} MB; {noun} is at most that, so this is not one",
                         field=field)
    return data


def _csv_cell(value: str) -> str:
    """One CSV cell, quoted as the csv module would, and also when it starts or ends with whitespace.

    A1111 reads with skipinitialspace, which drops a leading space of an unquoted cell; quoting it keeps the
    artist's text exactly as typed, and any CSV reader (A1111's included) reads it back the same.
    """
    if value and (any(c in value for c in ',"\r\n') or value[0].isspace() or value[-1].isspace()):
        return '"' + value.replace('"', '""') + '"'
    return value


@dataclass
class _Table:
    """A styles.csv as rows of cells, with enough of its form (BOM, line ends) to write it back alike."""

    header: list[str] = field(default_factory=lambda: list(HEADER))
    rows: list[list[str]] = field(default_factory=list)
    # A1111 writes with utf-8-sig and the csv module's \r\n: a new file gets the same form
    bom: bool = True
    newline: str = "\r\n"

    def copy(self) -> _Table:
        return _Table(list(self.header), [list(row) for row in self.rows], self.bom, self.newline)

    def column(self, *names: str) -> int | None:
        keys = [cell.strip().lower() for cell in self.header]
        return next((keys.index(name) for name in names if name in keys), None)

    def cell(self, row: list[str], index: int | None) -> str:
        return row[index] if index is not None and index < len(row) else ""

    def row_name(self, row: list[str]) -> str | None:
        """The style a row defines; None for a comment row ("#...", as A1111) or a row without a name."""
        name = self.cell(row, self.column("name"))
        return None if not name or name.startswith("#") else name

    def styles(self) -> dict[str, Style]:
        # A1111 fills a dict row by row: a repeated name keeps its first place and takes the later row's text
        found: dict[str, Style] = {}
        prompt, negative = self.column("prompt", "text"), self.column("negative_prompt")
        for row in self.rows:
            name = self.row_name(row)
            if name is not None:
                found[name] = Style(name, self.cell(row, prompt), self.cell(row, negative))
        return found

    def put(self, style: Style) -> None:
        """Set a style's row: the first row of that name is rewritten in place, later duplicates go."""
        negative = self.column("negative_prompt")
        if negative is None and style.negative_prompt:
            # an old two-column file gets the negative column; extra cells past the old header stay past it
            width = len(self.header)
            self.header.append(HEADER[2])
            for row in self.rows:
                if len(row) > width:
                    row.insert(width, "")
            negative = width
        values = {self.column("name"): style.name, self.column("prompt", "text"): style.prompt}
        if negative is not None:
            values[negative] = style.negative_prompt
        places = [i for i, row in enumerate(self.rows) if self.row_name(row) == style.name]
        if places:
            row = self.rows[places[0]]
            for later in reversed(places[1:]):
                del self.rows[later]
        else:
            row = []
            self.rows.append(row)
        row.extend([""] * (max(values) + 1 - len(row)))
        for index, value in values.items():
            row[index] = value

    def remove(self, name: str) -> None:
        self.rows = [row for row in self.rows if self.row_name(row) != name]

    def to_bytes(self) -> bytes:
        lines = [",".join(_csv_cell(cell) for cell in row) for row in [self.header, *self.rows]]
        text = "".join(line + self.newline for line in lines)
        return (codecs.BOM_UTF8 if self.bom else b"") + text.encode("utf-8")


def _parse(data: bytes, where: str, field: str, strict_names: bool = False) -> _Table | None:
    """A styles.csv's table, or None for an empty file; InputError(field) says what is wrong with `where`.

    strict_names (imports): every style name must be one the studio could save, since it becomes one of ours.
    """
    if b"\0" in data:
        raise InputError(f"{where} is a binary file, not a styles CSV (name,prompt,negative_prompt)", field=field)
    try:
        text = data.decode("utf-8-sig")  # A1111 reads and writes utf-8-sig: with or without a BOM
    except UnicodeDecodeError as error:
        raise InputError(f"{where} is not UTF-8 text (byte 0x{data[error.start]:02X} at position {error.start}); "
                         "save it as UTF-8 CSV", field=field) from None
    if not text.strip():
        return None
    table = _Table(bom=data.startswith(codecs.BOM_UTF8), newline="\r\n" if "\r\n" in text or "\n" not in text
                   else "\n")
    # newline="" hands \r\n to the csv module, which keeps line breaks inside quoted cells as written
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        table.header = next(reader)
        if table.column("name") is None or table.column("prompt", "text") is None:
            raise InputError(f"{where} has no name and prompt columns (its first line is "
                             f"{shown(','.join(table.header))}); an A1111 styles.csv starts with "
                             "name,prompt,negative_prompt", field=field)
        prompt, negative = table.column("prompt", "text"), table.column("negative_prompt")
        for row in reader:
            if not row:
                continue  # a blank line (the csv module yields [] for it; A1111's DictReader skips it)
            if len(table.rows) >= MAX_STYLE_ROWS:
                raise InputError(f"{where} has more than {MAX_STYLE_ROWS:,} rows; a styles file holds at most that",
                                 field=field)
            table.rows.append(row)
            name = table.row_name(row)
            if name is None:
                continue
            try:
                if strict_names:
                    check_name(name, field)
                check_text(name, field)
                check_text(table.cell(row, prompt), field)
                check_text(table.cell(row, negative), field)
            except InputError as error:
                raise InputError(f"{where}, line {reader.line_num}, style {shown(name)}: {error.message}",
                                 field=field) from None
    except csv.Error as error:
        raise InputError(f"{where} is not a readable CSV file (line {reader.line_num}: {error})", field=field) from None
    return table


def _name_list(names: Iterable[str], most: int = 20) -> str:
    names = list(names)
    if not names:
        return "there are no styles yet (save one, or import an A1111 styles.csv)"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return "known styles: " + ", ".join(names[:most]) + more


class StyleBook:
    """The studio's styles.csv (in the data folder): reread when it changed on disk, written atomically.

    A file that cannot be read (not UTF-8, not a CSV, too large) leaves the book empty with `problem` saying why,
    and every change is refused until the file is fixed or moved: the studio never overwrites it.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.problem: str | None = None
        self._table = _Table()
        self._styles: dict[str, Style] = {}
        self._signature: object = self  # what the cache was read from; self = never read
        # one book is shared by the UI's worker threads: a save must not interleave with another's reread
        self._lock = threading.RLock()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> StyleBook:
        return cls(Path(data_dir) / STYLES_FILENAME)

    def load(self) -> bool:
        """Reread the file when its mtime, size or inode changed since the last read; True when it was reread."""
        with self._lock:
            signature = file_signature(self.path)
            if signature == self._signature:
                return False
            table, problem = _Table(), None
            if signature is not None:
                try:
                    table = _parse(read_limited(self.path, MAX_STYLES_BYTES, "styles", "a styles file"),
                                   str(self.path), "styles") or _Table()
                except InputError as error:
                    problem = (f"{error.message}. Fix the file or move it aside; until then styles cannot be "
                               "changed (the studio will not overwrite it)")
                    table = _Table()
            self._table, self._styles, self.problem, self._signature = table, table.styles(), problem, signature
            return True

    def names(self) -> list[str]:
        with self._lock:
            self.load()
            return list(self._styles)

    def styles(self) -> list[Style]:
        with self._lock:
            self.load()
            return list(self._styles.values())

    def get(self, name: str) -> Style:
        with self._lock:
            self.load()
            if name not in self._styles:
                raise NotFound(self._unknown(name), field="styles")
            return self._styles[name]

    def apply(self, prompt: str | None, negative: str | None, names: Iterable[str] | str | None) -> tuple[str, str]:
        """The prompts with the named styles applied in order, exactly as A1111 applies them.

        An empty name (a cleared dropdown) is no style; an unknown name is refused rather than ignored (A1111
        ignores it), so a run never silently misses a style the artist picked.
        """
        names = [names] if isinstance(names, str) else list(names or ())
        prompt, negative = prompt or "", negative or ""
        with self._lock:
            self.load()
            for name in names:
                if name and name not in self._styles:
                    raise InputError(self._unknown(name), field="styles")
            chosen = [self._styles[name] for name in names if name]
        for style in chosen:
            prompt = merge_prompt(style.prompt, prompt)
            negative = merge_prompt(style.negative_prompt, negative)
        return prompt, negative

    def save(self, name: str, prompt: str | None, negative: str | None = "") -> Style:
        """Add a style, or replace the one of that name in its place; every other row is kept as it was."""
        name = check_name(name, "style_name")
        if name.startswith("#"):
            raise InputError(f"{shown(name)} starts with #, which A1111 reads as a comment line; rename it",
                             field="style_name")
        style = Style(name, check_text(_text(prompt, "style_prompt"), "style_prompt"),
                      check_text(_text(negative, "style_negative_prompt"), "style_negative_prompt"))
        with self._lock:
            self._writable()
            if name not in self._styles and len(self._table.rows) >= MAX_STYLE_ROWS:
                raise InputError(f"the styles file holds {MAX_STYLE_ROWS:,} rows, the most it may; delete some "
                                 "styles first", field="style_name")
            table = self._table.copy()
            table.put(style)
            self._write(table, "style_name")
            return style

    def delete(self, name: str) -> None:
        with self._lock:
            self._writable()
            if name not in self._styles:
                raise NotFound(self._unknown(name), field="styles")
            table = self._table.copy()
            table.remove(name)
            self._write(table, "styles")

    def import_from(self, path: Path) -> ImportResult:
        """Merge an A1111 install's styles.csv (the file, or the A1111 folder holding it) into this book.

        New names are added; a name with the same texts is skipped; a name with other texts comes in as
        "name (imported)" (then "(imported 2)"...): the artist's own style is never overwritten, and importing
        the same file again adds nothing. A file that cannot be read is refused and nothing is written.
        """
        source = Path(path).expanduser()
        if source.is_dir():
            source = source / STYLES_FILENAME
            if not source.is_file():
                raise InputError(f"{source.parent} holds no {STYLES_FILENAME}; give the file itself or the A1111 "
                                 "folder that holds it", field="styles_file")
        elif not source.exists():
            raise InputError(f"{source} does not exist", field="styles_file")
        added = skipped = renamed = 0
        with self._lock:
            self._writable()  # before reading the other file: a merge into an unreadable one is refused anyway
            table = _parse(read_limited(source, MAX_STYLES_BYTES, "styles_file", "a styles file"), str(source),
                           "styles_file", strict_names=True)
            if table is None:
                raise InputError(f"{source} is empty; an A1111 styles.csv starts with name,prompt,negative_prompt",
                                 field="styles_file")
            mine = self._table.copy()
            current = dict(self._styles)
            for style in table.styles().values():
                name = style.name.strip()
                for number in range(1, MAX_STYLE_ROWS + 2):
                    if number > 1:
                        suffix = f" ({IMPORTED})" if number == 2 else f" ({IMPORTED} {number - 1})"
                        name = style.name.strip()[:MAX_NAME_CHARS - len(suffix)].rstrip() + suffix
                    held = current.get(name)
                    if held is None:
                        added, renamed = (added + 1, renamed) if number == 1 else (added, renamed + 1)
                        current[name] = Style(name, style.prompt, style.negative_prompt)
                        mine.put(current[name])
                        break
                    if (held.prompt, held.negative_prompt) == (style.prompt, style.negative_prompt):
                        skipped += 1
                        break
            if len(mine.rows) > MAX_STYLE_ROWS:
                raise InputError(f"importing {source} would make {len(mine.rows):,} rows; a styles file holds at "
                                 f"most {MAX_STYLE_ROWS:,}", field="styles_file")
            if added or renamed:
                self._write(mine, "styles_file")
        return ImportResult(added, skipped, renamed)

    def _unknown(self, name: str) -> str:
        if self.problem:
            return f"style {shown(name)} cannot be used: {self.problem}"
        return f"style {shown(name)} is unknown; {_name_list(self._styles)}"

    def _writable(self) -> None:
        """Reread (another program may have changed the file) and refuse a change while the file is unreadable."""
        self.load()
        if self.problem:
            raise StudioError(self.problem, field="styles")

    def _write(self, table: _Table, field: str) -> None:
        data = table.to_bytes()
        if len(data) > MAX_STYLES_BYTES:
            raise InputError(f"the styles file would be {len(data) / 2**20:.1f} MB; it may be at most "
                             f"{MAX_STYLES_BYTES // 2**20} MB (shorten or delete some styles)", field=field)
        try:
            atomic_write(self.path, data)
        except OSError as error:
            raise StudioError(f"cannot write {self.path}: {error.strerror or error}; nothing was changed",
                              field=field) from None
        self._table, self._styles, self._signature = table, table.styles(), file_signature(self.path)


def _text(value: object, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{shown(value)} is not text", field=field)
    return value

