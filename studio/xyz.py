"""AUTOMATIC1111's "X/Y/Z plot" without UI or pipelines: parse the axes, plan one request per cell, draw the grid.

The vocabulary is A1111's (axis names, the range syntax of scripts/xyz_grid.py, "Steps: 20" labels, z grids side
by side), so a plot described for A1111 means the same here. Everything is pure: plan_cells() turns a request and
up to three axes into validated requests, draw_grid() turns finished images into one labelled picture; running the
cells is the job runner's business.

Range syntax, for number axes (A1111's, with its rough edges made explicit):
    1, 2, 3          a comma list; CSV quoting works ("a, b", c) and spaces around items are ignored
    1-5              inclusive, step 1; 5-1 counts down (A1111 would give nothing)
    1-10 (+3)        step 3: 1, 4, 7, 10; 10-1 (-3): 10, 7, 4, 1 (A1111 stops at 4); an unsigned (3) follows
                     the range's direction, a sign against it is refused
    1-10 [5]         5 values evenly spaced, both ends included: 1, 3, 5, 7, 10 (whole numbers are truncated, as A1111)
    0.5-1 [3], 1-2 (+0.25)   the same for decimal axes, computed exactly: 0.1 steps give 0.3, not 0.30000000000000004
"""

from __future__ import annotations

import csv
import dataclasses
import io
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from studio.engine import loras
from studio.engine.schedulers import ALIASES, SAMPLER_NAMES
from studio.errors import InputError
from studio.requests import MAX_SEED, REQUEST_TYPES, check_text, field_spec, number, resolve_seed, shown, validate

AXIS_NAMES = ("X", "Y", "Z")
# The fields errors name: A1111's component names (x_type is the axis-type dropdown, x_values its text box).
TYPE_FIELDS = ("x_type", "y_type", "z_type")
VALUE_FIELDS = ("x_values", "y_values", "z_values")
SCHEDULE_TYPES = {"automatic": False, "karras": True}


@dataclass(frozen=True)
class AxisKind:
    """One entry of the axis menu: what it writes in the request and how its values read and show."""

    name: str
    fields: tuple[str, ...]  # request fields the axis writes: a validation error on one is the axis's
    value_type: type | None  # int/float: numbers with ranges; str: a comma list; None: Nothing (no values)
    example: str  # what to write, for error messages
    labelled: bool = True  # label "Steps: 20" (A1111's format_value_add_label) or the bare value
    cost: float = 0.0  # A1111's: a costly axis (a model load) is looped outermost so each value is set once


AXIS_KINDS: dict[str, AxisKind] = {k.name: k for k in (
    AxisKind("Nothing", (), None, ""),
    AxisKind("Seed", ("seed",), int, "1, 2, 3 or 100-104"),
    AxisKind("Steps", ("steps",), int, "10, 20, 30 or 10-40 (+10)"),
    AxisKind("CFG Scale", ("cfg_scale",), float, "5, 7.5, 10 or 4-12 [5]"),
    AxisKind("Sampler", ("sampler",), str, "Euler a, DPM++ 2M, DDIM", labelled=False),
    AxisKind("Schedule type", ("karras",), str, "Automatic, Karras"),
    AxisKind("Checkpoint name", ("model",), str, "the model names from the Models tab", labelled=False, cost=1.0),
    AxisKind("Denoising", ("denoise_strength",), float, "0.3, 0.5, 0.7 or 0.3-0.9 [4]"),
    AxisKind("Prompt S/R", ("prompt", "negative_prompt"), str, "cat, dog, fox (with 'cat' in the prompt)",
             labelled=False),
    AxisKind("LoRA weight", ("prompt",), float, "0, 0.5, 1 or 0-1 [5]"),
)}


@dataclass(frozen=True)
class PlotAxis:
    """What the user chose for one axis: its type (an AXIS_KINDS name, any case) and the text of its values."""

    kind: str
    values_text: str = ""


@dataclass(frozen=True)
class PlannedAxis:
    """An axis after parsing: concrete values (seeds resolved) and the label of each, in the user's order."""

    kind: str
    values_text: str
    values: tuple
    labels: tuple[str, ...]

    @property
    def used(self) -> bool:
        return self.kind != "Nothing"


@dataclass(frozen=True)
class Cell:
    """One picture of the plot: its place on the grid (x, y, z indices) and the validated request to run."""

    x: int
    y: int
    z: int
    request: Any
    labels: tuple[str, str, str]  # the x, y and z labels ("" for an unused axis)


@dataclass(frozen=True)
class Plan:
    """The parsed axes (always three: unused ones are Nothing with one value) and the cells in the order to run."""

    axes: tuple[PlannedAxis, PlannedAxis, PlannedAxis]
    cells: tuple[Cell, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(axis.values) for axis in self.axes)

    def cell(self, x: int, y: int, z: int) -> Cell:
        return next(c for c in self.cells if (c.x, c.y, c.z) == (x, y, z))

    def arrange(self, results: Mapping[tuple[int, int, int], Image.Image | None]) -> list[list[Image.Image | None]]:
        """The finished images ({(x, y, z): image}) as draw_grid takes them; cells not in results stay None."""
        nx, ny, nz = self.shape
        return [[results.get((x, y, z)) for y in range(ny) for x in range(nx)] for z in range(nz)]

    def draw(self, results: Mapping[tuple[int, int, int], Image.Image | None],
             cell_size: tuple[int, int] | None = None) -> Image.Image:
        """The plot's picture so far: finished cells, grey where a cell is missing (interrupted or failed)."""
        x, y, z = self.axes
        return draw_grid(self.arrange(results), x.labels, y.labels, z.labels,
                         x_title=x.kind if x.used else None, y_title=y.kind if y.used else None, cell_size=cell_size)

    def infotext_params(self) -> dict[str, str]:
        """A1111's parameters for the grid's record: "X Type", "X Values", and the seeds drawn for -1."""
        params = {"Script": "X/Y/Z plot"}
        for name, axis in zip(AXIS_NAMES, self.axes):
            if axis.used:
                params[f"{name} Type"] = axis.kind
                params[f"{name} Values"] = axis.values_text
                if axis.kind == "Seed":
                    params[f"Fixed {name} Values"] = ", ".join(map(str, axis.values))
        return params


# --- parsing ---------------------------------------------------------------------------------------------------

_UNSIGNED = {int: r"\d+", float: r"(?:\d+(?:\.\d*)?|\.\d+)"}
_PLAIN = {int: re.compile(r"[+-]?\d+"), float: re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")}
# start - end, then an optional (step) or [count]; whitespace anywhere between the parts
_RANGE = {t: re.compile(rf"\s*([+-]?{u})\s*-\s*([+-]?{u})\s*(?:\(\s*([+-]?)\s*({u})\s*\)|\[\s*(\d+)\s*\])?\s*")
          for t, u in _UNSIGNED.items()}
_RANGE_FORMS = {int: "1-5, 1-10 (+2), 1-10 [5]", float: "0.5-1 [3], 1-2 (+0.25)"}


def split_values(text: str, field: str) -> list[str]:
    """A1111's reading of a values box: CSV (quotes protect commas), every line joined, each value stripped."""
    # spaces after a closing quote ("a, b" , c) are as harmless as those before an opening one; strict CSV
    # would call them a stray quote
    text = re.sub(r'"[ \t]+(?=,|$)', '"', text, flags=re.MULTILINE)
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True, strict=True))
    except csv.Error as error:
        # strict CSV: a stray quote is a mistake to point at, not text to guess around
        where = "an unclosed quote" if "end of data" in str(error) else "a quote in the middle of a value"
        raise InputError(f'has {where}; quote whole values that contain commas: "a, b", c', field=field) from None
    return [value.strip() for row in rows for value in row]


def _check_count(item: str, count: int, room: int, limit: int, field: str) -> None:
    # checked before a range is expanded: 1-4294967295 on the Seed axis must not build a list first
    if count > room:
        raise InputError(f"{shown(item)} gives {count:,} values, over the plot's limit of {limit} cells; "
                         "use a larger step or a shorter range", field=field)


def _expand(item: str, kind: AxisKind, room: int, limit: int, field: str) -> list:
    """One comma-separated item of a number axis: a number, or a range in A1111's syntax (at most `room` values)."""
    number_type = kind.value_type
    if len(item) > 60:
        # no field takes a number this long, and int() refuses over 4300 digits with a ValueError, not our message
        raise InputError(f"{shown(item)} is too long for a number or a range; write {kind.name} values like "
                         f"{kind.example}", field=field)
    if _PLAIN[number_type].fullmatch(item):
        return [number_type(item)]
    match = _RANGE[number_type].fullmatch(item)
    if match is None:
        if number_type is int and _PLAIN[float].fullmatch(item):
            raise InputError(f"{shown(item)} is not a whole number; {kind.name} takes values like {kind.example}",
                             field=field)
        if any(c in item[1:] for c in "-([])"):
            raise InputError(f"{shown(item)} is not a range; write {_RANGE_FORMS[number_type]} or a comma list",
                             field=field)
        raise InputError(f"{shown(item)} is not a number; write {kind.name} values like {kind.example}", field=field)
    # exact arithmetic: Fraction/Decimal keep 0.1 steps and evenly spaced counts free of float drift
    convert = int if number_type is int else Decimal
    start, end = convert(match[1]), convert(match[2])
    direction = 1 if end >= start else -1
    if match[5] is not None:  # [count]
        count = int(match[5])
        if count < 1:
            raise InputError(f"{shown(item)} asks for no values; write a count of 1 or more, e.g. 1-10 [5]",
                             field=field)
        _check_count(item, count, room, limit, field)
        if number_type is int and count > abs(end - start) + 1:
            raise InputError(f"{shown(item)} would repeat values: only {abs(end - start) + 1} whole numbers lie "
                             f"from {start} to {end}; write {start}-{end} [{abs(end - start) + 1}] or fewer",
                             field=field)
        if count == 1:
            return [number_type(start)]
        span = Fraction(end - start) if number_type is int else end - start
        # int() truncates toward zero: A1111's int(np.linspace(...)), so 1-10 [5] is 1, 3, 5, 7, 10 as there
        return [number_type(start + span * i / (count - 1)) for i in range(count)]
    size = convert(match[4]) if match[4] is not None else convert(1)
    if size == 0:
        raise InputError(f"{shown(item)} has a step of 0; write a step like (+1) or (-1)", field=field)
    if match[3] and start != end and (1 if match[3] == "+" else -1) != direction:
        raise InputError(f"{shown(item)} steps away from {number(end)}; write {number(start)}-{number(end)} "
                         f"({'+' if direction > 0 else '-'}{number(size)})", field=field)
    step = size * direction
    count = int((end - start) // step) + 1  # both have the same sign, so // is the floor of a positive quotient
    _check_count(item, count, room, limit, field)
    if count == 1 and start != end:
        raise InputError(f"{shown(item)} gives only {number(start)}: the step is larger than the range; write a "
                         f"smaller step, e.g. {number(start)}-{number(end)} [3]", field=field)
    return [number_type(start + step * i) for i in range(count)]


def _number_bounds(kind: AxisKind, request_type: type) -> tuple[float, float]:
    if kind.name == "LoRA weight":
        return -loras.MAX_WEIGHT, loras.MAX_WEIGHT  # what a run's tag parsing accepts
    meta = field_spec(request_type, kind.fields[0])
    return meta["min"], meta["max"]


def _match_model(value: str, known: Sequence[str], field: str) -> str:
    """A1111's closest-match lookup, made strict: exact, any case, then a unique part of a name."""
    if value in known:
        return value
    folded = value.casefold()
    same = [name for name in known if name.casefold() == folded]
    if len(same) == 1:
        return same[0]
    partial = same or [name for name in known if folded in name.casefold()]
    if len(partial) == 1:
        return partial[0]
    if partial:
        raise InputError(f"{shown(value)} matches several models ({', '.join(partial[:5])}); write the full name",
                         field=field)
    listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
    raise InputError(f"{shown(value)} is not a model here; choose from {listed or 'the Models tab (none yet)'}",
                     field=field)


def _sampler(value: str, field: str) -> str:
    folded = {name.casefold(): name for name in SAMPLER_NAMES}
    folded.update({alias.casefold(): name for alias, name in ALIASES.items()})
    if value.casefold() in folded:
        return folded[value.casefold()]
    if value.casefold().endswith(" karras") and value[: -len(" karras")].casefold() in folded:
        # old A1111 names fold the schedule in; here it is a field of its own, so it gets an axis of its own
        base = folded[value[: -len(" karras")].casefold()]
        raise InputError(f"{shown(value)}: the schedule is separate here; write {base} and use a Schedule type "
                         "axis (Automatic, Karras)", field=field)
    raise InputError(f"{shown(value)} is not a sampler; choose from {', '.join(SAMPLER_NAMES)}", field=field)


def parse_values(kind: str, values_text: str, request_type: type, *, field: str = "x_values", limit: int = 100,
                 known_models: Sequence[str] | None = None) -> tuple:
    """The values of one axis, checked against the request type's field ranges; InputError naming `field` if bad.

    Seeds may still be -1 here (plan_cells draws them); Prompt S/R values are returned as written (whether the
    search text is in the prompt is plan_cells' check, it needs the request). A UI can call this as the user types.
    """
    axis_kind = _kind(kind, field.replace("_values", "_type"))
    if axis_kind.value_type is None:
        return (None,)  # A1111: Nothing has one value whatever the box says
    if not isinstance(values_text, str):
        raise InputError(f"{shown(values_text)} is not text; write {axis_kind.name} values like {axis_kind.example}",
                         field=field)
    check_text(values_text, field)
    items = split_values(values_text, field)
    if not items or items == [""]:
        raise InputError(f"is empty; write the {axis_kind.name} values, e.g. {axis_kind.example}", field=field)
    if axis_kind.name == "Prompt S/R" and not items[0]:
        raise InputError("starts with an empty value; the first value is the text to replace, e.g. "
                         f"{axis_kind.example}", field=field)
    for position, item in enumerate(items, 1):
        # an empty replacement is how Prompt S/R deletes a phrase (A1111 keeps it); elsewhere it is a stray comma
        if not item and not (axis_kind.name == "Prompt S/R" and position > 1):
            raise InputError(f"value {position} is empty (a stray comma?); remove it or write "
                             f"{axis_kind.name} values like {axis_kind.example}", field=field)
    name = axis_kind.name
    if axis_kind.value_type in (int, float):
        values = []
        for item in items:
            values += _expand(item, axis_kind, limit - len(values), limit, field)
        low, high = _number_bounds(axis_kind, request_type)
        for value in values:
            if not low <= value <= high:
                raise InputError(f"{number(value)} is out of range for {name}; use {number(low)} to {number(high)}",
                                 field=field)
        return tuple(float(v) if axis_kind.value_type is float else v for v in values)
    if name == "Sampler":
        return tuple(_sampler(item, field) for item in items)
    if name == "Schedule type":
        for item in items:
            if item.casefold() not in SCHEDULE_TYPES:
                raise InputError(f"{shown(item)} is not a schedule type here; choose Automatic or Karras", field=field)
        return tuple(SCHEDULE_TYPES[item.casefold()] for item in items)
    if name == "Checkpoint name":
        if known_models is None:
            # a caller's mistake, not the user's: without the list no name can be checked
            raise ValueError("parse_values needs known_models for a Checkpoint name axis")
        return tuple(_match_model(item, list(known_models), field) for item in items)
    return tuple(items)


def _kind(kind: Any, field: str) -> AxisKind:
    folded = {name.casefold(): item for name, item in AXIS_KINDS.items()}
    if isinstance(kind, str) and kind.strip().casefold() in folded:
        return folded[kind.strip().casefold()]
    raise InputError(f"{shown(kind)} is not an axis type; choose one of {', '.join(AXIS_KINDS)}", field=field)


def _label(kind: AxisKind, value: Any) -> str:
    if kind.name == "Nothing":
        return ""
    if kind.name == "Schedule type":
        shown_value = "Karras" if value else "Automatic"
    elif kind.name == "Checkpoint name":
        shown_value = re.split(r"[\\/]", value)[-1]  # A1111's format_remove_path: the name, not its folder
    elif kind.name == "Prompt S/R" and value == "":
        shown_value = "(removed)"
    elif isinstance(value, (int, float)):
        shown_value = number(value)
    else:
        shown_value = str(value)
    return f"{kind.name}: {shown_value}" if kind.labelled else shown_value


def _apply(kind: AxisKind, request: Any, value: Any, values: tuple) -> Any:
    if kind.name == "Nothing":
        return request
    if kind.name == "Prompt S/R":
        # A1111: every occurrence, in both prompts; the first value replaces itself, so its cell is the unchanged prompt
        return dataclasses.replace(request, prompt=request.prompt.replace(values[0], value),
                                   negative_prompt=request.negative_prompt.replace(values[0], value))
    if kind.name == "LoRA weight":
        return dataclasses.replace(request, prompt=loras.with_weights(request.prompt, value))
    return dataclasses.replace(request, **{kind.fields[0]: value})


def _limit_message(counts: list[tuple[int, AxisKind, int]], max_cells: int) -> str:
    total = 1
    for _, _, count in counts:
        total *= count
    product = " x ".join(str(count) for _, _, count in counts)
    sizes = f"{product} = {total}" if len(counts) > 1 else str(total)
    names = [f"{AXIS_NAMES[i]} ({kind.name})" for i, kind, _ in counts]
    which = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"{sizes} cells is over the limit of {max_cells}; shorten the {which} values"


def plan_cells(base_request: Any, axes: Sequence[PlotAxis], max_cells: int = 100,
               known_models: Sequence[str] | None = None, rng: random.Random | None = None) -> Plan:
    """Every cell of an X/Y/Z plot as a validated request derived from base_request (dataclasses.replace).

    axes: X, Y, Z in that order; fewer than three means the rest are Nothing. Seeds are A1111's: a base seed of -1
    is drawn once (from rng) and shared by every cell, so the axes are the only difference between cells; a -1 on
    the Seed axis draws a seed for that value. Batch size and count are left as they are: each cell runs the whole
    batch and the grid shows its first image, as A1111. Raises InputError naming the axis at fault (x_type/x_values,
    ...), "axes" for too many cells, or the request's own field when the base request is invalid.
    """
    if len(axes) > 3:
        raise InputError(f"has {len(axes)} axes; a plot has at most three (X, Y, Z)", field="axes")
    axes = list(axes) + [PlotAxis("Nothing")] * (3 - len(axes))
    request_type = type(base_request)
    names = {f.name for f in dataclasses.fields(base_request)}
    kinds: list[AxisKind] = []
    for i, axis in enumerate(axes):
        kind = _kind(axis.kind, TYPE_FIELDS[i])
        earlier = next((j for j, other in enumerate(kinds) if other.name == kind.name != "Nothing"), None)
        if earlier is not None:  # A1111 refuses it too: the second axis would overwrite the first
            raise InputError(f"{kind.name} is already the {AXIS_NAMES[earlier]} axis; choose another type for "
                             f"{AXIS_NAMES[i]}", field=TYPE_FIELDS[i])
        missing = [name for name in kind.fields if name not in names]
        if missing:
            having = [mode for mode, cls in REQUEST_TYPES.items()
                      if all(name in {f.name for f in dataclasses.fields(cls)} for name in kind.fields)]
            what = field_spec(REQUEST_TYPES[having[0]], missing[0])["label"].lower() if having else missing[0]
            elsewhere = f", or plot it in {', '.join(having)}" if having else ""
            raise InputError(f"{kind.name} does not apply to {getattr(request_type, 'mode', request_type.__name__)} "
                             f"(it has no {what}); choose another {AXIS_NAMES[i]} type{elsewhere}",
                             field=TYPE_FIELDS[i])
        kinds.append(kind)
    parsed = [parse_values(kind.name, axis.values_text, request_type, field=VALUE_FIELDS[i], limit=max_cells,
                           known_models=known_models) for i, (kind, axis) in enumerate(zip(kinds, axes))]
    counts = [(i, kind, len(values)) for i, (kind, values) in enumerate(zip(kinds, parsed)) if kind.name != "Nothing"]
    total = len(parsed[0]) * len(parsed[1]) * len(parsed[2])
    if total > max_cells:
        raise InputError(_limit_message(counts, max_cells), field="axes")
    for i, (kind, values) in enumerate(zip(kinds, parsed)):
        if kind.name == "Prompt S/R" and values[0] not in base_request.prompt \
                and values[0] not in base_request.negative_prompt:
            raise InputError(f"{shown(values[0])} (the first value: the text to replace) is in neither the prompt nor "
                             "the negative prompt; start the values with a phrase of the prompt", field=VALUE_FIELDS[i])
        if kind.name == "LoRA weight" and not loras.TAG.search(base_request.prompt):
            raise InputError("the prompt has no <lora:NAME:weight> tag to weigh; add one, e.g. <lora:NAME:1>, or "
                             f"choose another {AXIS_NAMES[i]} type", field=VALUE_FIELDS[i])
    rng = rng or random.SystemRandom()
    if "Seed" in [kind.name for kind in kinds]:
        parsed = [tuple(rng.randint(0, MAX_SEED) if v == -1 else v for v in values) if kind.name == "Seed" else values
                  for kind, values in zip(kinds, parsed)]
    else:
        base_request = resolve_seed(base_request, rng)
    planned = tuple(PlannedAxis(kind.name, axis.values_text if kind.name != "Nothing" else "", values,
                                tuple(_label(kind, v) for v in values))
                    for kind, axis, values in zip(kinds, axes, parsed))
    cells = [_cell(base_request, kinds, planned, index) for index in _run_order(kinds, [len(v) for v in parsed])]
    return Plan(planned, tuple(cells))


def _run_order(kinds: list[AxisKind], sizes: list[int]) -> list[tuple[int, int, int]]:
    """A1111's loop order: z outermost, then y, then x, except that a costly axis (a model) goes outermost."""
    loops = sorted([2, 1, 0], key=lambda i: -kinds[i].cost)  # sorted() is stable: ties keep z, y, x
    order = []

    def walk(depth: int, index: list[int]) -> None:
        if depth == 3:
            order.append(tuple(index))
            return
        for value in range(sizes[loops[depth]]):
            index[loops[depth]] = value
            walk(depth + 1, index)

    walk(0, [0, 0, 0])
    return order


def _cell(base_request: Any, kinds: list[AxisKind], planned: tuple[PlannedAxis, ...], index: tuple) -> Cell:
    request = base_request
    for kind, axis, i in zip(kinds, planned, index):  # applied X, Y, Z in turn, as A1111
        request = _apply(kind, request, axis.values[i], axis.values)
    labels = tuple(axis.labels[i] for axis, i in zip(planned, index))
    try:
        validate(request)
    except InputError as error:
        try:
            validate(base_request)
        except InputError:
            raise  # the base request is at fault (a missing image...), not the plot: its own error, unchanged
        where = ", ".join(f"{kind.name}: {_label(kind, axis.values[i]).split(': ', 1)[-1]}"
                          for kind, axis, i in zip(kinds, planned, index) if kind.name != "Nothing")
        axis_at_fault = next((n for n, kind in enumerate(kinds) if error.field in kind.fields), None)
        field = VALUE_FIELDS[axis_at_fault] if axis_at_fault is not None else error.field
        raise InputError(f"in the cell {where}: {error.message}", field=field) from None
    return Cell(*index, request=request, labels=labels)


# --- drawing ---------------------------------------------------------------------------------------------------

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
MISSING = (128, 128, 128)  # a cell that never finished: grey, so the finished ones still make a grid
MAX_LABEL_LINES = 4  # a long Prompt S/R value is cut ("...") rather than pushing the cells off the picture


def label_font_size(cell_width: int, cell_height: int) -> int:
    """A1111's size, (width + height) / 25 (40 px for 512 x 512 cells), but never under 12 px."""
    return max(12, (cell_width + cell_height) // 25)


def row_label_width(cell_width: int, font_size: int) -> int:
    """The band left of the rows: A1111's three quarters of a cell, but room for a few words on small cells."""
    return max(cell_width * 3 // 4, 6 * font_size)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a word wider than that is cut where it overflows."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if font.getlength(candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            while len(word) > 1 and font.getlength(word) > width:
                cut = max((k for k in range(1, len(word)) if font.getlength(word[:k]) <= width), default=1)
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        if current:
            lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines


def _block(draw: ImageDraw.ImageDraw, lines: list[str], font, box: tuple[int, int, int, int], line_height: int,
           middle: bool) -> None:
    """Lines centred across the box, from its top padding, or centred down it too (middle)."""
    left, top, right, bottom = box
    pad = font.size // 2
    y = top + (bottom - top - len(lines) * line_height) // 2 if middle else top + pad
    for line in lines:
        x = left + (right - left - round(font.getlength(line))) // 2
        draw.text((x, y), line, font=font, fill=TEXT)
        y += line_height


def draw_grid(images: Sequence[Sequence[Image.Image | None]], x_labels: Sequence[str], y_labels: Sequence[str],
              z_labels: Sequence[str] = ("",), x_title: str | None = None, y_title: str | None = None,
              cell_size: tuple[int, int] | None = None) -> Image.Image:
    """One picture of the plot: a labelled x-by-y grid per z value, the z grids side by side under their z labels.

    images[z] lists that grid's cells row by row (index y * len(x_labels) + x); None, or a list that stops short,
    leaves a grey cell, so an interrupted plot still shows what finished. Cells are cell_size (default: the first
    image's size); an image of another size is fitted inside its cell. x_title and y_title, when given, are
    written in the top-left corner ("X: Steps") where the grid has both column and row labels; a plot with labels
    on one side only says which axis it is through A1111's "Steps: 20" labels.

    Layout, deterministic for a given Pillow: font label_font_size(); column label band = the most wrapped lines
    of a column label (or title) x line height (font ascent + descent) + one font size of padding, 0 when every
    label is empty; row label band row_label_width() wide, 0 when every row label is empty; the z band likewise.
    """
    nx, ny, nz = len(x_labels), len(y_labels), len(z_labels)
    if not (nx and ny and nz):
        raise ValueError("draw_grid needs at least one label per axis (\"\" for an unused axis)")
    if len(images) > nz or any(len(grid) > nx * ny for grid in images):
        raise ValueError(f"more images than cells: {nz} grids of {nx} x {ny}")
    present = [image for grid in images for image in grid if image is not None]
    if cell_size is None:
        if not present:
            raise ValueError("no finished cell to size the grid by; pass cell_size")
        cell_size = present[0].size
    cw, ch = cell_size
    font_size = label_font_size(cw, ch)
    font = ImageFont.load_default(size=font_size)
    ascent, descent = font.getmetrics()
    line_height = ascent + descent
    pad = font_size // 2

    left = row_label_width(cw, font_size) if any(y_labels) else 0
    x_lines = [_wrap(label, font, cw - 2 * pad, MAX_LABEL_LINES) for label in x_labels]
    corner_lines: list[str] = []
    if left and any(x_labels):
        for axis, title in (("X", x_title), ("Y", y_title)):
            if title:
                corner_lines += _wrap(f"{axis}: {title}", font, left - 2 * pad, MAX_LABEL_LINES)
        corner_lines = corner_lines[:MAX_LABEL_LINES]
    most = max([len(lines) for lines in x_lines] + [len(corner_lines)])
    top = most * line_height + 2 * pad if any(x_labels) else 0
    sub_width = left + nx * cw
    z_lines = [_wrap(label, font, sub_width - 2 * pad, MAX_LABEL_LINES) for label in z_labels]
    z_band = max(len(lines) for lines in z_lines) * line_height + 2 * pad if any(z_labels) else 0
    # the row labels fit their cell: lines beyond its height are cut like long column labels
    row_lines = max(1, min(MAX_LABEL_LINES, (ch - 2 * pad) // line_height))
    y_lines = [_wrap(label, font, left - 2 * pad, row_lines) for label in y_labels] if left else []

    canvas = Image.new("RGB", (nz * sub_width, z_band + top + ny * ch), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for iz in range(nz):
        ox = iz * sub_width
        if z_band:
            _block(draw, z_lines[iz], font, (ox, 0, ox + sub_width, z_band), line_height, middle=False)
        for ix, lines in enumerate(x_lines if top else []):
            column = ox + left + ix * cw
            _block(draw, lines, font, (column, z_band, column + cw, z_band + top), line_height, middle=False)
        if corner_lines:
            _block(draw, corner_lines, font, (ox, z_band, ox + left, z_band + top), line_height, middle=False)
        for iy, lines in enumerate(y_lines):
            row = z_band + top + iy * ch
            _block(draw, lines, font, (ox, row, ox + left, row + ch), line_height, middle=True)
        grid = images[iz] if iz < len(images) else []
        for index in range(nx * ny):
            box = (ox + left + (index % nx) * cw, z_band + top + (index // nx) * ch)
            image = grid[index] if index < len(grid) else None
            if image is None:
                draw.rectangle((box[0], box[1], box[0] + cw - 1, box[1] + ch - 1), fill=MISSING)
                continue
            image = image.convert("RGB")
            if image.size != (cw, ch):
                # a cell of another size (another model's native size): fitted whole, centred, never cropped
                image = ImageOps.contain(image, (cw, ch), Image.Resampling.LANCZOS)
            canvas.paste(image, (box[0] + (cw - image.width) // 2, box[1] + (ch - image.height) // 2))
    return canvas
