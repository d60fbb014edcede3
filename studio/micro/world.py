"""The synthetic world the embedded model learns: seeded scenes, their renderings and captions.

A scene is a flat-coloured background with one to three flat-coloured objects (circle,
square, triangle or a person-like figure), each in a named cell of a 3x3 grid, at a
depth. From one scene we render the RGB image, a MiDaS-style depth map, an OpenPose
skeleton map and per-object masks, and we phrase captions that name what is there; the
judge (studio.micro.judge) measures generated images against the same vocabulary.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from studio.engine import openpose

SIZE = 128

# Chosen far apart in CIELAB (closest pair, red/orange, is about 46 units apart) so a
# blurred, noisy or slightly off-hue rendering still has a clear nearest name.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 10),
    "yellow": (250, 225, 30),
    "green": (30, 165, 60),
    "blue": (25, 100, 225),
    "purple": (150, 40, 160),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "figure")
SIZES = ("small", "large")
# Row-major 3x3 grid: POSITIONS[row * 3 + column].
POSITIONS = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)

RADIUS = {"small": 12.0, "large": 21.0}  # pixels at SIZE=128, +-RADIUS_JITTER
RADIUS_JITTER = 1.0
CELL = SIZE / 3
CENTRE_JITTER = 4.0  # pixels from the cell centre; the judge names the cell of the centroid
MIN_GAP = 1.0  # pixels between the bounding circles of two objects in one scene
DEPTH_RANGE = (0.3, 1.0)
MIN_DEPTH_GAP = 0.1
BACKGROUND_DEPTH = 8  # MiDaS convention: near is bright, the far background almost black
SUPERSAMPLE = 4

# Shape geometry relative to the radius r: a square has the area of the circle, an
# equilateral triangle's circumradius is 1.25 r, a figure stands 2.4 r tall.
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2
TRIANGLE_CIRCUMRADIUS = 1.25
FIGURE_HEIGHT = 2.4
FIGURE_LIMB_WIDTH = 0.3  # of r; at least a fifth of the radius so limbs survive blur
FIGURE_HEAD_RADIUS = 0.11  # of the figure's height
MAX_ROTATION_DEG = 10.0
KEYPOINT_JITTER = 0.012  # in units of the pose preset's canvas


@dataclass(frozen=True)
class SceneObject:
    """One object; centre and radius in pixels, depth in (0, 1] with 1 nearest."""

    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[float, float]
    radius: float
    depth: float
    keypoints: tuple[tuple[float, float], ...] | None = None
    rotation: float = 0.0  # degrees, squares and triangles only


@dataclass(frozen=True)
class Scene:
    """A background colour name and objects ordered back to front (far to near)."""

    background: str
    objects: tuple[SceneObject, ...]


# ---------------------------------------------------------------------------- sampling


def _cell_centre(position: str) -> tuple[float, float]:
    index = POSITIONS.index(position)
    row, column = divmod(index, 3)
    return ((column + 0.5) * CELL, (row + 0.5) * CELL)


def _figure_keypoints(rng: np.random.Generator, centre: tuple[float, float], radius: float) -> tuple:
    """A preset pose with jittered joints, maybe mirrored, scaled to stand 2.4 r tall at centre."""
    name = list(openpose.POSE_PRESETS)[rng.integers(len(openpose.POSE_PRESETS))]
    points = np.array(openpose.POSE_PRESETS[name], dtype=np.float64)
    points += rng.normal(0.0, KEYPOINT_JITTER, points.shape)
    if rng.random() < 0.5:
        # Mirror the image and swap sides: the person's right arm stays their right arm.
        points[:, 0] = 1.0 - points[:, 0]
        for a, b in openpose.MIRROR_PAIRS:
            points[[a, b]] = points[[b, a]]
    scale = FIGURE_HEIGHT * radius / 0.9  # presets stand 0.9 of their canvas tall
    middle = (points.min(axis=0) + points.max(axis=0)) / 2
    pixels = (points - middle) * scale + np.array(centre)
    return tuple((float(x), float(y)) for x, y in pixels)


def _extent(shape: str, radius: float) -> tuple[float, float]:
    """Half width and half height of the shape's bounding box around its centre (upper bound)."""
    if shape == "circle":
        return radius, radius
    if shape == "square":
        half = SQUARE_HALF_SIDE * radius * (math.cos(math.radians(MAX_ROTATION_DEG)) + math.sin(math.radians(MAX_ROTATION_DEG)))
        return half, half
    if shape == "triangle":
        return TRIANGLE_CIRCUMRADIUS * radius, TRIANGLE_CIRCUMRADIUS * radius
    # Keypoints are centred on their box; the head and limb width reach a little beyond.
    reach = FIGURE_HEIGHT * radius / 0.9 * 0.45 + FIGURE_HEAD_RADIUS * FIGURE_HEIGHT * radius
    return reach, reach


def _place(rng: np.random.Generator, shape: str, size: str, position: str) -> tuple[tuple[float, float], float]:
    radius = RADIUS[size] + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER)
    cx, cy = _cell_centre(position)
    cx += rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    cy += rng.uniform(-CENTRE_JITTER, CENTRE_JITTER)
    ex, ey = _extent(shape, radius)
    # Keep the whole object in the frame; the clamp never leaves the cell at these sizes.
    cx = min(max(cx, ex + 1), SIZE - ex - 1)
    cy = min(max(cy, ey + 1), SIZE - ey - 1)
    return (float(cx), float(cy)), float(radius)


def _overlap_free(placed: list[tuple[str, tuple[float, float], float]]) -> bool:
    for i, (shape_a, (xa, ya), ra) in enumerate(placed):
        for shape_b, (xb, yb), rb in placed[i + 1:]:
            reach = max(_extent(shape_a, ra)) + max(_extent(shape_b, rb))
            # Extents are upper bounds, so shapes placed this far apart never touch.
            if math.hypot(xa - xb, ya - yb) < reach + MIN_GAP:
                return False
    return True


def sample_scene(rng: np.random.Generator, n_objects: int | None = None, shapes: Sequence[str] | None = None) -> Scene:
    """A random scene: 1-3 objects (or n_objects) of distinct colours in distinct cells."""
    if n_objects is None:
        n_objects = int(rng.integers(1, 4))
    if not 1 <= n_objects <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n_objects}")
    shapes = tuple(shapes) if shapes is not None else SHAPES
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown or not shapes:
        raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {shapes!r}")

    colour_names = list(COLOURS)
    background = colour_names[rng.integers(len(colour_names))]
    others = [c for c in colour_names if c != background]
    colours = [others[i] for i in rng.choice(len(others), n_objects, replace=False)]

    for _attempt in range(100):
        kinds = [shapes[rng.integers(len(shapes))] for _ in range(n_objects)]
        sizes = [SIZES[rng.integers(len(SIZES))] for _ in range(n_objects)]
        cells = [POSITIONS[i] for i in rng.choice(len(POSITIONS), n_objects, replace=False)]
        placements = [_place(rng, k, s, p) for k, s, p in zip(kinds, sizes, cells)]
        if _overlap_free([(k, c, r) for k, (c, r) in zip(kinds, placements)]):
            break
    else:  # pragma: no cover - three objects always fit in a 3x3 grid within 100 tries
        raise RuntimeError("could not place objects without overlap")

    depths = _sample_depths(rng, n_objects)
    objects = []
    for kind, colour, size, cell, (centre, radius), depth in zip(kinds, colours, sizes, cells, placements, depths):
        keypoints = _figure_keypoints(rng, centre, radius) if kind == "figure" else None
        rotation = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)) if kind in ("square", "triangle") else 0.0
        objects.append(SceneObject(kind, colour, size, cell, centre, radius, depth, keypoints, rotation))
    objects.sort(key=lambda o: o.depth)
    return Scene(background, tuple(objects))


def _sample_depths(rng: np.random.Generator, n: int) -> list[float]:
    low, high = DEPTH_RANGE
    while True:
        depths = sorted(float(d) for d in rng.uniform(low, high, n))
        if all(b - a >= MIN_DEPTH_GAP for a, b in zip(depths, depths[1:])):
            return depths


def scene_from_seed(seed: int, **kwargs) -> Scene:
    """The scene sample_scene draws from np.random.default_rng(seed)."""
    return sample_scene(np.random.default_rng(seed), **kwargs)


# ---------------------------------------------------------------------------- rendering

_SHIFT = 4  # cv2 fixed-point fraction bits: sub-pixel placement on the supersampled canvas


def _scaled(point: tuple[float, float], scale: float) -> tuple[float, float]:
    """A point in SIZE pixels -> the same point in the pixels of a canvas `scale` times larger.

    Pixel centres sit at integers at both sizes, so the image edge (-0.5) stays the edge. At scale 1
    the point is returned untouched: the SIZE rendering must stay bit-for-bit what the models learnt.
    """
    if scale == 1:
        return point
    return (point[0] + 0.5) * scale - 0.5, (point[1] + 0.5) * scale - 0.5


def _fixed(point: tuple[float, float], origin: tuple[int, int], scale: float = 1) -> tuple[int, int]:
    """Pixel coordinates (pixel centres at integers) -> fixed-point supersampled coordinates.

    `point` is in SIZE pixels, `origin` in the pixels of the canvas being drawn (`scale` x SIZE).
    """
    one = 1 << _SHIFT
    point = _scaled(point, scale)
    return (
        int(round(((point[0] - origin[0] + 0.5) * SUPERSAMPLE - 0.5) * one)),
        int(round(((point[1] - origin[1] + 0.5) * SUPERSAMPLE - 0.5) * one)),
    )


def _polygon(obj: SceneObject) -> list[tuple[float, float]]:
    cx, cy = obj.centre
    turn = math.radians(obj.rotation)
    if obj.shape == "square":
        h = SQUARE_HALF_SIDE * obj.radius
        corners = [(-h, -h), (h, -h), (h, h), (-h, h)]
    else:  # triangle pointing up, its centroid at the centre
        r = TRIANGLE_CIRCUMRADIUS * obj.radius
        corners = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    c, s = math.cos(turn), math.sin(turn)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]


# Limbs drawn as thick lines for a figure's silhouette (indices into KEYPOINT_NAMES).
_BODY_LINES = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (11, 12), (12, 13), (0, 1))
_TORSO = (2, 5, 11, 8)
_HEAD = (0, 14, 15, 16, 17)


def _draw(obj: SceneObject, canvas: np.ndarray, origin: tuple[int, int], scale: float = 1) -> None:
    """The object in 255s on a supersampled canvas of a `scale` x SIZE image; lengths scale with it."""
    # Every length is multiplied by `scale` before anything else, so at scale 1 the arithmetic (and the
    # rounding of each fixed-point value) is exactly what it was before sizes other than SIZE existed.
    if obj.shape == "circle":
        radius = int(round(obj.radius * scale * SUPERSAMPLE * (1 << _SHIFT)))
        cv2.circle(canvas, _fixed(obj.centre, origin, scale), radius, 255, -1, cv2.LINE_8, _SHIFT)
    elif obj.shape in ("square", "triangle"):
        points = np.array([_fixed(p, origin, scale) for p in _polygon(obj)], dtype=np.int32)
        cv2.fillConvexPoly(canvas, points, 255, cv2.LINE_8, _SHIFT)
    else:
        kp = obj.keypoints
        height = FIGURE_HEIGHT * obj.radius * scale
        width = max(1, int(round(max(2.5, FIGURE_LIMB_WIDTH * obj.radius) * scale * SUPERSAMPLE)))
        torso = np.array([_fixed(kp[i], origin, scale) for i in _TORSO], dtype=np.int32)
        cv2.fillPoly(canvas, [torso], 255, cv2.LINE_8, _SHIFT)
        for a, b in _BODY_LINES:
            cv2.line(canvas, _fixed(kp[a], origin, scale), _fixed(kp[b], origin, scale), 255, width, cv2.LINE_8,
                     _SHIFT)
        head = np.mean([kp[i] for i in _HEAD], axis=0)
        radius = int(round(FIGURE_HEAD_RADIUS * height * SUPERSAMPLE * (1 << _SHIFT)))
        cv2.circle(canvas, _fixed((float(head[0]), float(head[1])), origin, scale), radius, 255, -1, cv2.LINE_8,
                   _SHIFT)


@dataclass(frozen=True)
class _Layer:
    """One object's antialiased coverage (0..1 float32) inside its box rows x columns."""

    rows: slice
    columns: slice
    alpha: np.ndarray


def _coverage(obj: SceneObject, size: int = SIZE) -> _Layer:
    """An object drawn at 4x inside its bounding box and box-filtered down: its coverage in a size x size image."""
    cx, cy = obj.centre
    ex, ey = _extent(obj.shape, obj.radius)
    if obj.keypoints is not None:
        xs, ys = zip(*obj.keypoints)
        pad = FIGURE_HEAD_RADIUS * FIGURE_HEIGHT * obj.radius + FIGURE_LIMB_WIDTH * obj.radius + 2
        box = (min(xs) - pad, min(ys) - pad, max(xs) + pad, max(ys) + pad)
    else:
        box = (cx - ex - 2, cy - ey - 2, cx + ex + 2, cy + ey + 2)
    scale = 1 if size == SIZE else size / SIZE
    box = (*_scaled(box[:2], scale), *_scaled(box[2:], scale))
    x0, y0 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
    x1, y1 = max(x0, min(size, int(math.ceil(box[2])))), max(y0, min(size, int(math.ceil(box[3]))))
    canvas = np.zeros(((y1 - y0) * SUPERSAMPLE, (x1 - x0) * SUPERSAMPLE), dtype=np.uint8)
    if canvas.size:
        _draw(obj, canvas, (x0, y0), scale)
        canvas = cv2.resize(canvas, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    alpha = canvas.astype(np.float32) * np.float32(1 / 255)
    alpha.flags.writeable = False
    return _Layer(slice(y0, y1), slice(x0, x1), alpha)


@functools.lru_cache(maxsize=16)
def _coverages(scene: Scene, size: int = SIZE) -> tuple[_Layer, ...]:
    """Every object's coverage, cached so the image, depth and masks of a scene draw once."""
    return tuple(_coverage(obj, size) for obj in scene.objects)


def _check_scene(scene: Scene) -> None:
    if scene.background not in COLOURS:
        raise ValueError(f"scene.background must be one of {list(COLOURS)}, got {scene.background!r}")
    for i, obj in enumerate(scene.objects):
        if obj.shape not in SHAPES:
            raise ValueError(f"scene.objects[{i}].shape must be one of {SHAPES}, got {obj.shape!r}")
        if obj.colour not in COLOURS:
            raise ValueError(f"scene.objects[{i}].colour must be one of {list(COLOURS)}, got {obj.colour!r}")
        if obj.shape == "figure" and (obj.keypoints is None or len(obj.keypoints) != openpose.N_KEYPOINTS):
            raise ValueError(f"scene.objects[{i}] is a figure and needs {openpose.N_KEYPOINTS} keypoints")


def render_image(scene: Scene, size: int = SIZE) -> Image.Image:
    """The scene as RGB: flat background, flat objects painted back to front, antialiased.

    `size` renders the same geometry at size x size (512: the ground truth a 4x upscaler of the
    SIZE rendering learns); the default SIZE output is the one the embedded models were trained on.
    """
    _check_scene(scene)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive whole number of pixels, got {size!r}")
    size = int(size)
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = COLOURS[scene.background]
    for obj, layer in zip(scene.objects, _coverages(scene, size)):
        box = image[layer.rows, layer.columns]
        box += layer.alpha[..., None] * (np.array(COLOURS[obj.colour], dtype=np.float32) - box)
    return Image.fromarray(np.rint(image).astype(np.uint8), "RGB")


def depth_value(depth: float) -> int:
    """Depth-map brightness of an object at this depth (near = 1 = brightest)."""
    return int(round(40 + 215 * depth))


def render_depth(scene: Scene) -> Image.Image:
    """A MiDaS-style depth map ("L"): dark background, each silhouette as bright as it is near."""
    _check_scene(scene)
    depth = np.full((SIZE, SIZE), BACKGROUND_DEPTH, dtype=np.float32)
    for obj, layer in zip(scene.objects, _coverages(scene)):
        box = depth[layer.rows, layer.columns]
        box += layer.alpha * (depth_value(obj.depth) - box)
    return Image.fromarray(np.rint(depth).astype(np.uint8), "L")


def render_pose(scene: Scene, canvas: int = SIZE) -> Image.Image:
    """Every figure's OpenPose skeleton on one black RGB canvas (black when there is no figure).

    controlnet-aux draws limbs 8 px wide whatever the canvas; canvas > SIZE draws at that
    size and shrinks the map to SIZE, as a pose drawn at 512 arrives at a 128 model.
    """
    _check_scene(scene)
    poses = [obj.keypoints for obj in scene.objects if obj.shape == "figure"]
    if not poses:
        return Image.new("RGB", (SIZE, SIZE))
    if canvas == SIZE:
        return openpose.draw_body_poses(poses, SIZE, SIZE)
    scale = canvas / SIZE
    scaled = [[(x * scale, y * scale) for x, y in pose] for pose in poses]
    large = np.asarray(openpose.draw_body_poses(scaled, canvas, canvas))
    return Image.fromarray(cv2.resize(large, (SIZE, SIZE), interpolation=cv2.INTER_AREA))


def render_silhouettes(scene: Scene) -> list[np.ndarray]:
    """Per-object whole silhouettes (bool SIZE x SIZE) as if nothing were in front, in scene order."""
    _check_scene(scene)
    silhouettes = []
    for layer in _coverages(scene):
        silhouette = np.zeros((SIZE, SIZE), dtype=bool)
        silhouette[layer.rows, layer.columns] = layer.alpha >= 0.5
        silhouettes.append(silhouette)
    return silhouettes


def render_masks(scene: Scene) -> list[np.ndarray]:
    """Per-object visible regions (bool SIZE x SIZE) after nearer objects occlude, in scene order."""
    solid = render_silhouettes(scene)
    masks = []
    hidden = np.zeros((SIZE, SIZE), dtype=bool)
    for mask in reversed(solid):  # nearest first
        masks.append(mask & ~hidden)
        hidden |= mask
    return masks[::-1]


def render_all(scene: Scene) -> dict:
    """image, depth, pose and masks of one scene (what a training example needs)."""
    return {
        "image": render_image(scene),
        "depth": render_depth(scene),
        "pose": render_pose(scene),
        "masks": render_masks(scene),
    }


# ---------------------------------------------------------------------------- captions

_POSITION_PHRASES = {
    "top left": ("in the top left", "at the top left", "in the top left corner"),
    "top": ("at the top", "near the top"),
    "top right": ("in the top right", "at the top right", "in the top right corner"),
    "left": ("on the left", "at the left"),
    "centre": ("in the centre", "in the middle", "in the center"),
    "right": ("on the right", "at the right"),
    "bottom left": ("in the bottom left", "at the bottom left", "in the bottom left corner"),
    "bottom": ("at the bottom", "near the bottom"),
    "bottom right": ("in the bottom right", "at the bottom right", "in the bottom right corner"),
}
_SIZE_WORDS = {"small": ("small",), "large": ("large", "big")}
_SHAPE_WORDS = {"circle": ("circle",), "square": ("square",), "triangle": ("triangle",), "figure": ("figure", "person")}
P_SIZE, P_POSITION, P_BACKGROUND = 0.75, 0.8, 0.8


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def _object_phrase(obj: SceneObject, rng: np.random.Generator, article: bool) -> str:
    words = []
    if rng.random() < P_SIZE:
        words.append(_pick(rng, _SIZE_WORDS[obj.size]))
    words += [obj.colour, _pick(rng, _SHAPE_WORDS[obj.shape])]
    if article:
        words.insert(0, "an" if words[0][0] in "aeiou" else "a")
    if rng.random() < P_POSITION:
        words.append(_pick(rng, _POSITION_PHRASES[obj.position]))
    return " ".join(words)


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One random phrasing naming every object's colour and shape, usually size, place and background."""
    if not scene.objects:
        return f"a plain {scene.background} background"
    order = rng.permutation(len(scene.objects))
    terse = rng.random() < 0.25
    things = _join([_object_phrase(scene.objects[i], rng, article=not terse) for i in order])
    if rng.random() >= P_BACKGROUND:
        return things
    bg = scene.background
    form = rng.integers(4)
    if terse or form == 0:
        return f"{things}, {bg} background"
    if form == 1:
        return f"{things} on a {bg} background"
    if form == 2:
        return f"{bg} background with {things}"
    return f"{things} against a {bg} background"


def captions(scene: Scene, rng: np.random.Generator, n: int = 5) -> list[str]:
    """Up to n distinct phrasings of the scene."""
    found: list[str] = []
    for _ in range(4 * n):
        text = caption(scene, rng)
        if text not in found:
            found.append(text)
        if len(found) == n:
            break
    return found


# ---------------------------------------------------------------------------- parsing

_COLOUR_RE = "|".join(COLOURS)
_SHAPE_SYNONYMS = {"circle": "circle", "square": "square", "triangle": "triangle", "figure": "figure", "person": "figure"}
_SIZE_SYNONYMS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
_BACKGROUND = re.compile(rf"\b({_COLOUR_RE})\s+background\b")
_OBJECT = re.compile(
    rf"\b(?:({'|'.join(_SIZE_SYNONYMS)})\s+)?({_COLOUR_RE})\s+({'|'.join(_SHAPE_SYNONYMS)})s?\b"
)
_POSITION = re.compile(r"\b(top left|top right|bottom left|bottom right|top|bottom|left|right|centre)\b")


def parse_prompt(prompt: str) -> dict:
    """The first object's colour, shape, size and position and the background named in a prompt.

    Inverse of caption() for evaluation; anything the prompt does not name is None.
    """
    text = " ".join(prompt.lower().split())
    text = re.sub(r"\b(center|middle)\b", "centre", text)
    text = re.sub(r"\bupper\b", "top", text)
    text = re.sub(r"\blower\b", "bottom", text)
    result = {"colour": None, "shape": None, "size": None, "position": None, "background": None}

    background = _BACKGROUND.search(text)
    if background:
        result["background"] = background.group(1)
        text = text[: background.start()] + "|" * (background.end() - background.start()) + text[background.end():]

    objects = list(_OBJECT.finditer(text))
    if not objects:
        return result
    first = objects[0]
    size, colour, shape = first.groups()
    result.update(colour=colour, shape=_SHAPE_SYNONYMS[shape], size=_SIZE_SYNONYMS[size] if size else None)
    # A position belongs to the object it follows, up to the next object.
    stop = objects[1].start() if len(objects) > 1 else len(text)
    position = _POSITION.search(text, first.end(), stop)
    if position:
        result["position"] = position.group(1)
    return result
