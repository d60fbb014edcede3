"""OpenPose body keypoints: draw them as a ControlNet pose map, read and write OpenPose JSON.

Drawing is delegated to controlnet-aux's own ``draw_bodypose`` so a pose we draw is
pixel-for-pixel the map its detector would have produced for the same keypoints.
Keypoints here are pixel coordinates ``(x, y)``, or ``None`` for a point that is missing.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

# COCO-18 order, the order OpenPose's body model and controlnet-aux use.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
    "r_eye",
    "l_eye",
    "r_ear",
    "l_ear",
)
N_KEYPOINTS = len(KEYPOINT_NAMES)

# Index pairs that swap when a pose is mirrored left-right (a person's right side stays
# their right side, so the keypoint that lands on the other side changes name).
MIRROR_PAIRS: tuple[tuple[int, int], ...] = ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (14, 15), (16, 17))

Point = tuple[float, float]
Pose = Sequence[Point | None]


def _preset(**points: Point) -> list[Point]:
    missing = set(KEYPOINT_NAMES) - set(points)
    if missing:
        raise ValueError(f"pose preset lacks keypoints {sorted(missing)}")
    return [points[name] for name in KEYPOINT_NAMES]


def _face(x: float = 0.5, y: float = 0.14) -> dict[str, Point]:
    """Nose, eyes and ears of a head facing the viewer, centred on (x, y)."""
    return {
        "nose": (x, y),
        "r_eye": (x - 0.025, y - 0.025),
        "l_eye": (x + 0.025, y - 0.025),
        "r_ear": (x - 0.055, y - 0.01),
        "l_ear": (x + 0.055, y - 0.01),
    }


# Named poses of one person facing the viewer, normalised to a unit canvas: the head's
# top is near y=0.05 and the feet near y=0.95. The person's right side is on the image's
# left, as OpenPose sees a person facing the camera.
POSE_PRESETS: dict[str, list[Point]] = {
    "standing": _preset(
        **_face(),
        neck=(0.5, 0.25),
        r_shoulder=(0.39, 0.27), r_elbow=(0.32, 0.41), r_wrist=(0.27, 0.54),
        l_shoulder=(0.61, 0.27), l_elbow=(0.68, 0.41), l_wrist=(0.73, 0.54),
        r_hip=(0.44, 0.55), r_knee=(0.41, 0.74), r_ankle=(0.38, 0.93),
        l_hip=(0.56, 0.55), l_knee=(0.59, 0.74), l_ankle=(0.62, 0.93),
    ),
    "arms up": _preset(
        **_face(),
        neck=(0.5, 0.25),
        r_shoulder=(0.39, 0.27), r_elbow=(0.32, 0.14), r_wrist=(0.28, 0.02),
        l_shoulder=(0.61, 0.27), l_elbow=(0.68, 0.14), l_wrist=(0.72, 0.02),
        r_hip=(0.44, 0.55), r_knee=(0.41, 0.74), r_ankle=(0.38, 0.93),
        l_hip=(0.56, 0.55), l_knee=(0.59, 0.74), l_ankle=(0.62, 0.93),
    ),
    "walking": _preset(
        **_face(),
        neck=(0.5, 0.25),
        r_shoulder=(0.39, 0.27), r_elbow=(0.33, 0.40), r_wrist=(0.28, 0.52),
        l_shoulder=(0.61, 0.27), l_elbow=(0.66, 0.41), l_wrist=(0.70, 0.51),
        r_hip=(0.44, 0.55), r_knee=(0.37, 0.73), r_ankle=(0.31, 0.92),
        l_hip=(0.56, 0.55), l_knee=(0.60, 0.74), l_ankle=(0.66, 0.93),
    ),
    "sitting": _preset(
        **_face(0.5, 0.26),
        neck=(0.5, 0.37),
        r_shoulder=(0.39, 0.39), r_elbow=(0.31, 0.52), r_wrist=(0.36, 0.63),
        l_shoulder=(0.61, 0.39), l_elbow=(0.69, 0.52), l_wrist=(0.64, 0.63),
        r_hip=(0.44, 0.66), r_knee=(0.29, 0.72), r_ankle=(0.29, 0.93),
        l_hip=(0.56, 0.66), l_knee=(0.71, 0.72), l_ankle=(0.71, 0.93),
    ),
    "t-pose": _preset(
        **_face(),
        neck=(0.5, 0.25),
        r_shoulder=(0.39, 0.27), r_elbow=(0.25, 0.27), r_wrist=(0.11, 0.27),
        l_shoulder=(0.61, 0.27), l_elbow=(0.75, 0.27), l_wrist=(0.89, 0.27),
        r_hip=(0.44, 0.55), r_knee=(0.41, 0.74), r_ankle=(0.38, 0.93),
        l_hip=(0.56, 0.55), l_knee=(0.59, 0.74), l_ankle=(0.62, 0.93),
    ),
    "waving": _preset(
        **_face(),
        neck=(0.5, 0.25),
        r_shoulder=(0.39, 0.27), r_elbow=(0.32, 0.41), r_wrist=(0.27, 0.54),
        l_shoulder=(0.61, 0.27), l_elbow=(0.75, 0.22), l_wrist=(0.76, 0.06),
        r_hip=(0.44, 0.55), r_knee=(0.41, 0.74), r_ankle=(0.38, 0.93),
        l_hip=(0.56, 0.55), l_knee=(0.59, 0.74), l_ankle=(0.62, 0.93),
    ),
}


@functools.cache
def _controlnet_aux_drawing():
    """controlnet-aux's draw_bodypose and Keypoint, imported on first use.

    Importing controlnet_aux runs its package __init__, which imports torch, timm and
    every detector (seconds, and a burst of their deprecation warnings); nothing pays for
    that until a pose is drawn.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose.body import Keypoint
        from controlnet_aux.open_pose.util import draw_bodypose
    return draw_bodypose, Keypoint


def _check_pose(keypoints: Pose, where: str = "keypoints") -> None:
    if len(keypoints) != N_KEYPOINTS:
        raise ValueError(f"{where} must have {N_KEYPOINTS} entries (COCO-18 order), got {len(keypoints)}")
    for index, point in enumerate(keypoints):
        if point is None:
            continue
        if len(point) != 2 or not all(isinstance(v, (int, float, np.number)) and math.isfinite(v) for v in point):
            raise ValueError(f"{where}[{index}] ({KEYPOINT_NAMES[index]}) must be (x, y) numbers or None, got {point!r}")


def draw_body_poses(poses: Sequence[Pose], width: int, height: int) -> Image.Image:
    """Every pose's skeleton on one black RGB canvas, drawn by controlnet-aux."""
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    draw_bodypose, Keypoint = _controlnet_aux_drawing()
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for number, keypoints in enumerate(poses):
        _check_pose(keypoints, f"poses[{number}]")
        # controlnet-aux takes coordinates normalised by the canvas size.
        normalised = [None if p is None else Keypoint(p[0] / width, p[1] / height) for p in keypoints]
        canvas = draw_bodypose(canvas, normalised)
    return Image.fromarray(canvas)


def draw_body_pose(keypoints: Pose, width: int, height: int) -> Image.Image:
    """One pose's skeleton on a black RGB canvas, exactly as controlnet-aux draws it."""
    return draw_body_poses([keypoints], width, height)


def preset_pose(name: str, width: int, height: int) -> list[Point]:
    """A named preset scaled to pixel coordinates of a width x height canvas."""
    if name not in POSE_PRESETS:
        raise ValueError(f"unknown pose preset {name!r}; choose one of {sorted(POSE_PRESETS)}")
    return [(x * width, y * height) for x, y in POSE_PRESETS[name]]


def pose_to_openpose_json(poses: Sequence[Pose], width: int, height: int) -> dict:
    """OpenPose JSON (pixel coordinates, confidence 0 for a missing point) for these poses."""
    people = []
    for number, keypoints in enumerate(poses):
        _check_pose(keypoints, f"poses[{number}]")
        flat: list[float] = []
        for point in keypoints:
            flat.extend([0.0, 0.0, 0.0] if point is None else [float(point[0]), float(point[1]), 1.0])
        # Hands and face are empty: the editor and ControlNet read null as "not given".
        people.append({
            "pose_keypoints_2d": flat,
            "face_keypoints_2d": None,
            "hand_left_keypoints_2d": None,
            "hand_right_keypoints_2d": None,
        })
    return {"canvas_width": int(width), "canvas_height": int(height), "people": people}


def _positive_int(data: dict, field: str) -> int:
    if field not in data:
        raise ValueError(f"OpenPose JSON lacks {field!r}")
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ValueError(f"OpenPose JSON field {field!r} must be a positive integer, got {value!r}")
    return int(value)


def poses_from_openpose_json(data: dict) -> tuple[list[list[Point | None]], int, int]:
    """(poses, width, height) read from OpenPose JSON as the A1111 openpose editor writes it.

    Coordinates are pixels; a file whose coordinates all lie in [0, 1] holds normalised
    coordinates (some ControlNet tools write those) and is scaled by the canvas size.
    """
    if not isinstance(data, dict):
        raise ValueError(f"OpenPose JSON must be an object, got {type(data).__name__}")
    width = _positive_int(data, "canvas_width")
    height = _positive_int(data, "canvas_height")
    people = data.get("people")
    if not isinstance(people, list):
        raise ValueError(f"OpenPose JSON field 'people' must be a list, got {people!r:.60}")

    raw: list[list[tuple[float, float, float]]] = []
    for number, person in enumerate(people):
        field = f"people[{number}].pose_keypoints_2d"
        if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
            raise ValueError(f"OpenPose JSON lacks {field!r}")
        flat = person["pose_keypoints_2d"]
        if not isinstance(flat, list) or len(flat) != 3 * N_KEYPOINTS:
            size = len(flat) if isinstance(flat, list) else type(flat).__name__
            raise ValueError(f"OpenPose JSON field {field!r} must be a list of {3 * N_KEYPOINTS} numbers, got {size}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in flat):
            raise ValueError(f"OpenPose JSON field {field!r} must hold only finite numbers")
        raw.append([(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)])

    present = [(x, y) for person in raw for x, y, c in person if c > 0]
    normalised = bool(present) and all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in present)
    sx, sy = (width, height) if normalised else (1, 1)
    poses = [[(x * sx, y * sy) if c > 0 else None for x, y, c in person] for person in raw]
    return poses, width, height
