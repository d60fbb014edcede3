"""An analytic judge: names the background and each object's colour, shape, place and size.

No learned model: the world's flat colours and simple shapes are measured directly, so
the judge can be proven on rendered scenes before it is trusted on generated images.
Background is the dominant named colour of the border; object pixels are those far from
it (CIELAB); regions are connected components, split where two colours each fill a solid
part; a region's colour is the named colour nearest the median of its pixels farthest
from the background; its shape is the primitive (circle, square, triangle) whose smallest
enclosing circle, rectangle or triangle it fills, or a figure when it fills none well;
its place is the 3x3 cell of its centroid; its size is its enclosing radius against a
per-shape boundary between the world's small and large objects.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from studio.micro import world

REFERENCE_SIZE = 128  # thresholds below are in pixels of a 128x128 image and scale with it
MIN_AREA = 40  # smallest region counted as an object (the smallest figure covers ~180)
MIN_SEED = 8  # eroded pixels a colour needs inside a region to count as its own object
BORDER = 2  # frame width sampled for the background colour
DENOISE_KERNEL = 3

# How much of its smallest enclosing circle, rectangle and triangle a clean rendered
# circle, square and triangle fills (medians over rendered scenes, see prove_judge). A
# region is the primitive whose fill comes nearest its ideal; a region that fills none of
# them well (a figure's limbs leave most of every enclosure empty) is a figure.
IDEAL_FILL = {"circle": 0.93, "square": 0.95, "triangle": 0.92}
FIGURE_MAX_FILL = 0.78  # figures score at most ~0.74 of an ideal fill, primitives at least ~0.81
_FILL_FEATURE = {"circle": "circle_fill", "square": "rect_fill", "triangle": "triangle_fill"}
# Enclosing-circle radius (pixels at 128) between the world's small and large objects of
# each shape, midway between the largest small and the smallest large one measured on
# rendered scenes, clean and degraded (a figure's reach depends on its pose).
SIZE_BOUNDARY = {"circle": 17.8, "square": 20.8, "triangle": 19.5, "figure": 21.9}
# A region's colour is the median of its most saturated part: the pixels farthest from the
# background, which blur has mixed least with it.
CORE_FRACTION = 0.4
# A solid colour part inside a region that is only a blend of the background and another
# part (a blurred thin limb) is not an object of its own.
BLEND_TOLERANCE = 30.0  # RGB units from the background-to-part segment

_NAMES = list(world.COLOURS)
_PALETTE_RGB = np.array([world.COLOURS[n] for n in _NAMES], dtype=np.float32)


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 or float RGB (..., 3) in 0..255 -> CIELAB (L 0..100)."""
    flat = np.asarray(rgb, dtype=np.float32).reshape(1, -1, 3) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2LAB).reshape(np.shape(rgb))


_PALETTE_LAB = _to_lab(_PALETTE_RGB)


def nearest_colour(rgb, exclude: str | None = None) -> str:
    """The named colour nearest (CIELAB distance) to one RGB value."""
    distances = np.linalg.norm(_PALETTE_LAB - _to_lab(np.asarray(rgb, dtype=np.float32)), axis=-1)
    if exclude is not None:
        distances[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(np.argmin(distances))]


@dataclass(eq=False)
class SeenObject:
    """One object the judge found; area in pixels, centroid (x, y), mask bool H x W."""

    colour: str
    shape: str
    position: str
    size: str
    area: int
    centroid: tuple[float, float]
    mask: np.ndarray = field(repr=False)
    features: dict = field(default_factory=dict, repr=False)


@dataclass
class Judgement:
    """The background's colour name and the objects found, largest first."""

    background: str
    objects: list[SeenObject]


# ---------------------------------------------------------------------------- measures


def _smallest_enclosing_triangle(hull: np.ndarray) -> float:
    """Area of the smallest triangle whose sides lie on three edges of a convex polygon.

    Every triangle formed by three supporting lines whose outward normals surround the
    origin encloses the polygon; the smallest such is (nearly) the minimal enclosing
    triangle. OpenCV's minEnclosingTriangle is not used: it sometimes returns a triangle
    half again too large.
    """
    points = hull.reshape(-1, 2).astype(np.float64)
    if len(points) > 24:  # thin the outline; the long edges that matter survive
        points = cv2.approxPolyDP(points.astype(np.float32).reshape(-1, 1, 2), 0.5, True).reshape(-1, 2).astype(np.float64)
    n = len(points)
    if n < 3:
        return 0.0
    edges = np.roll(points, -1, axis=0) - points
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    if np.sum(edges[:, 0] * np.roll(edges[:, 1], -1) - edges[:, 1] * np.roll(edges[:, 0], -1)) < 0:
        normals = -normals  # outward for either winding order
    offsets = (normals * points).sum(1)
    angles = np.arctan2(normals[:, 1], normals[:, 0])
    i, j, k = (np.array(t) for t in zip(*itertools.combinations(range(n), 3)))
    trio = np.sort(np.stack([angles[i], angles[j], angles[k]], 1), 1)
    gaps = np.diff(np.concatenate([trio, trio[:, :1] + 2 * np.pi], 1), axis=1)
    bounded = gaps.max(1) < np.pi - 1e-9

    def corner(a, b):
        det = normals[a, 0] * normals[b, 1] - normals[a, 1] * normals[b, 0]
        det = np.where(np.abs(det) < 1e-12, np.nan, det)
        x = (offsets[a] * normals[b, 1] - offsets[b] * normals[a, 1]) / det
        y = (normals[a, 0] * offsets[b] - normals[b, 0] * offsets[a]) / det
        return x, y

    (x1, y1), (x2, y2), (x3, y3) = corner(i, j), corner(j, k), corner(k, i)
    areas = np.abs((x2 - x1) * (y3 - y1) - (y2 - y1) * (x3 - x1)) / 2
    areas = np.where(bounded & np.isfinite(areas), areas, np.inf)
    return float(areas.min())


def shape_features(mask: np.ndarray) -> dict:
    """Contour measures of a region: solidity, circularity, rect_fill, circle_fill, triangle_fill, enclosing_radius."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    # A region may come in pieces (a head cut off by blur): measure all of it together.
    points = np.concatenate(contours)
    # Pixel counts, not polygon areas: the polygon through boundary pixel centres loses
    # half a pixel all round, which matters for small shapes.
    area = float(mask.sum())
    hull = cv2.convexHull(points)
    rim = cv2.arcLength(hull, True) / 2 + 1  # the half-pixel rim around a hull through pixel centres
    hull_area = cv2.contourArea(hull) + rim
    perimeter = sum(cv2.arcLength(cv2.approxPolyDP(c, 0.7, True), True) for c in contours)
    _, (w, h), _ = cv2.minAreaRect(points)
    _, radius = cv2.minEnclosingCircle(points)
    radius += 0.5
    triangle_area = _smallest_enclosing_triangle(hull) + rim
    return {
        "solidity": area / hull_area,
        "circularity": 4 * math.pi * area / max(perimeter, 1.0) ** 2,
        "rect_fill": area / ((w + 1) * (h + 1)),
        "circle_fill": area / (math.pi * radius * radius),
        "triangle_fill": area / triangle_area,
        "enclosing_radius": radius,
    }


def classify_shape(features: dict) -> str:
    """Shape name from shape_features: the primitive the region fills best, else a figure."""
    scores = {shape: features[key] / IDEAL_FILL[shape] for shape, key in _FILL_FEATURE.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] >= FIGURE_MAX_FILL else "figure"


def _cell(x: float, y: float, width: int, height: int) -> str:
    column = min(2, max(0, int(3 * x / width)))
    row = min(2, max(0, int(3 * y / height)))
    return world.POSITIONS[row * 3 + column]


# ---------------------------------------------------------------------------- judging


def _background(labels: np.ndarray, rgb: np.ndarray) -> tuple[str, np.ndarray]:
    frame = np.ones(labels.shape, dtype=bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    counts = np.bincount(labels[frame], minlength=len(_NAMES))
    index = int(np.argmax(counts))
    colour = np.median(rgb[frame & (labels == index)], axis=0)
    return _NAMES[index], colour


def _blend_distance(colour: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """RGB distance from colour to the nearest mix of colours a and b."""
    direction = b - a
    t = float(np.clip(np.dot(colour - a, direction) / max(float(np.dot(direction, direction)), 1e-6), 0.0, 1.0))
    return float(np.linalg.norm(colour - (a + t * direction)))


def _split_by_colour(
    region: np.ndarray, labels: np.ndarray, rgb: np.ndarray, background_rgb: np.ndarray, min_seed: float
) -> list[np.ndarray]:
    """A region as one mask per colour that fills a solid part of it; blur fringes are not parts."""
    kernel = np.ones((5, 5), np.uint8)
    seeds = {}
    for index in np.unique(labels[region]):
        core = cv2.erode(((labels == index) & region).astype(np.uint8), kernel).astype(bool)
        if core.sum() >= min_seed:
            seeds[index] = core
    if len(seeds) <= 1:
        return [region]
    sizes = {i: int(core.sum()) for i, core in seeds.items()}
    medians = {i: np.median(rgb[core], axis=0) for i, core in seeds.items()}
    keep = {}
    for i, core in seeds.items():
        blend = any(
            sizes[j] > sizes[i] and _blend_distance(medians[i], background_rgb, medians[j]) < BLEND_TOLERANCE
            for j in seeds
            if j != i
        )
        if not blend:
            keep[i] = core
    if len(keep) <= 1:
        return [region]
    # Every pixel of the region joins the colour whose solid part is nearest.
    seed_map = np.zeros(region.shape, dtype=np.int32)
    for number, core in enumerate(keep.values(), start=1):
        seed_map[core] = number
    _, (iy, ix) = ndimage.distance_transform_edt(seed_map == 0, return_indices=True)
    owner = seed_map[iy, ix]
    return [region & (owner == number) for number in range(1, len(keep) + 1)]


def judge_image(image: Image.Image) -> Judgement:
    """Background colour and the objects (largest first) of one image."""
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    scale = (width * height) / REFERENCE_SIZE**2
    length_scale = math.sqrt(scale)
    # A median filter removes pixel noise without moving edges.
    smooth = cv2.medianBlur(np.ascontiguousarray(rgb), DENOISE_KERNEL)
    lab = _to_lab(smooth)
    # Squared distances to every named colour as one matrix product (|a|^2 - 2ab + |b|^2).
    distances = (lab * lab).sum(-1, keepdims=True) - 2 * lab @ _PALETTE_LAB.T + (_PALETTE_LAB**2).sum(-1)
    labels = np.argmin(distances, axis=-1)
    smooth_f = smooth.astype(np.float32)
    background, background_rgb = _background(labels, smooth_f)
    bg_index = _NAMES.index(background)

    # Foreground: far from the background as it actually is, judged against how far the
    # nearest other named colour is (so blue on purple separates, blue drift does not).
    bg_lab = _to_lab(background_rgb)
    others = np.delete(np.linalg.norm(_PALETTE_LAB - bg_lab, axis=-1), bg_index)
    threshold = float(np.clip(0.45 * others.min(), 12.0, 25.0))
    offset = lab - bg_lab
    distance_to_bg = np.sqrt((offset * offset).sum(-1))
    foreground = distance_to_bg > threshold
    distances[:, :, bg_index] = np.inf  # an object pixel is never the background colour
    object_labels = np.argmin(distances, axis=-1)

    # Components of the foreground grown by a pixel, so a part cut off by a one- or
    # two-pixel gap (a thin neck under blur) stays with its object.
    kernel = np.ones((3, 3), np.uint8)
    grown = cv2.dilate(foreground.astype(np.uint8), kernel)
    count, components = cv2.connectedComponents(grown, connectivity=8)
    objects = []
    for number in range(1, count):
        region = (components == number) & foreground
        if region.sum() < MIN_AREA * scale:
            continue
        for mask in _split_by_colour(region, object_labels, smooth_f, background_rgb, MIN_SEED * scale):
            area = int(mask.sum())
            if area < MIN_AREA * scale:
                continue
            far = distance_to_bg[mask]
            core = far >= np.quantile(far, 1 - CORE_FRACTION)
            colour = nearest_colour(np.median(smooth_f[mask][core], axis=0), exclude=background)
            features = shape_features(mask)
            shape = classify_shape(features)
            radius = features["enclosing_radius"] / length_scale
            size = "large" if radius >= SIZE_BOUNDARY[shape] else "small"
            ys, xs = np.nonzero(mask)
            centroid = (float(xs.mean()), float(ys.mean()))
            position = _cell(centroid[0], centroid[1], width, height)
            objects.append(SeenObject(colour, shape, position, size, area, centroid, mask, features))
    objects.sort(key=lambda o: o.area, reverse=True)
    return Judgement(background, objects)


# ---------------------------------------------------------------------------- proof


def degrade(
    image: Image.Image, rng: np.random.Generator, blur: float = 1.5, noise: float = 8.0, colour_shift: float = 0.0
) -> Image.Image:
    """The image as a small diffusion model might draw it: gaussian blur, gaussian noise, and
    optionally a colour cast (each channel offset by a normal draw of std colour_shift)."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    noisy = blurred + rng.normal(0.0, noise, blurred.shape)
    if colour_shift:
        noisy += rng.normal(0.0, colour_shift, 3)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


_FIELDS = ("colour", "shape", "position", "size")


def _score_scene(scene: world.Scene, judgement: Judgement, min_visible: float = 0.8) -> dict[str, list[bool]]:
    """Per-field hits for each object of the scene that is present and not heavily occluded."""
    hits: dict[str, list[bool]] = {f: [] for f in _FIELDS}
    masks = world.render_masks(scene)
    full = world.render_silhouettes(scene)
    for obj, visible, whole in zip(scene.objects, masks, full):
        if visible.sum() < min_visible * max(1, whole.sum()):
            continue
        # The judged object that covers most of this object's visible pixels stands for it.
        overlaps = [(seen.mask & visible).sum() for seen in judgement.objects]
        seen = judgement.objects[int(np.argmax(overlaps))] if overlaps and max(overlaps) > 0 else None
        for f in _FIELDS:
            hits[f].append(seen is not None and getattr(seen, f) == getattr(obj, f))
    return hits


def accuracies(
    scenes: list[world.Scene], degradation: dict | None = None, seed: int = 0, prefix: str = ""
) -> tuple[dict, list]:
    """({prefix}{field}_accuracy: fraction right, misses) of the judge on these scenes' renderings.

    degradation: degrade() arguments applied to every rendering (None: clean); misses
    are the (scene, judgement) pairs with any field wrong.
    """
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {f: [] for f in _FIELDS}
    backgrounds = []
    misses = []
    for scene in scenes:
        image = world.render_image(scene)
        if degradation is not None:
            image = degrade(image, rng, **degradation)
        judgement = judge_image(image)
        backgrounds.append(judgement.background == scene.background)
        scored = _score_scene(scene, judgement)
        for f in _FIELDS:
            hits[f].extend(scored[f])
        if not all(all(v) for v in scored.values()) or not backgrounds[-1]:
            misses.append((scene, judgement))
    result = {f"{prefix}{f}_accuracy": float(np.mean(hits[f])) for f in _FIELDS}
    result[f"{prefix}background_accuracy"] = float(np.mean(backgrounds))
    return result, misses


# Name -> degrade() arguments of each measured condition ("" is the clean rendering).
CONDITIONS = {
    "": None,
    "degraded_": {"blur": 1.5, "noise": 8.0},
    "shifted_": {"blur": 1.5, "noise": 8.0, "colour_shift": 12.0},
}


def prove_judge(n: int = 500, seed: int = 20240601, multi_n: int | None = None) -> dict:
    """Judge accuracies on rendered ground-truth scenes, clean and degraded.

    Keys: {colour,shape,position,size,background}_accuracy on n single-object scenes;
    degraded_* after gaussian blur 1.5 and noise 8; shifted_* with a colour cast on top
    (each channel offset by a normal draw of std 12). The same prefixed multi_ on
    multi_n scenes of 2-3 objects, each object scored when at least 80% of it is visible.
    """
    multi_n = n if multi_n is None else multi_n
    rng = np.random.default_rng(seed)
    singles = [world.sample_scene(rng, n_objects=1) for _ in range(n)]
    multis = [world.sample_scene(rng, n_objects=int(rng.integers(2, 4))) for _ in range(multi_n)]
    result = {"n": n, "multi_n": multi_n, "seed": seed}
    for scenes, kind in ((singles, ""), (multis, "multi_")):
        if not scenes:
            continue
        for condition, degradation in CONDITIONS.items():
            scores, _ = accuracies(scenes, degradation, seed + 1, kind + condition)
            result.update(scores)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.micro.judge", description=__doc__.splitlines()[0])
    parser.add_argument("--prove", action="store_true", help="measure the judge on rendered ground-truth scenes")
    parser.add_argument("--n", type=int, default=500, help="scenes per measurement (default 500)")
    parser.add_argument("--seed", type=int, default=20240601, help="seed of the proof scenes")
    parser.add_argument("--json", action="store_true", help="print the proof as JSON")
    parser.add_argument("images", nargs="*", help="image files to judge")
    args = parser.parse_args(argv)
    if not args.prove and not args.images:
        parser.error("give --prove or image files")
    if args.prove:
        proof = prove_judge(args.n, args.seed)
        if args.json:
            print(json.dumps(proof, indent=2))
        else:
            for key, value in proof.items():
                print(f"{key:36s} {value:.4f}" if isinstance(value, float) else f"{key:36s} {value}")
    for path in args.images:
        judgement = judge_image(Image.open(path))
        seen = "; ".join(f"{o.size} {o.colour} {o.shape} at {o.position}" for o in judgement.objects) or "nothing"
        print(f"{path}: {judgement.background} background; {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
