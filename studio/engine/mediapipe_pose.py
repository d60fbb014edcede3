"""An offline pose detector: MediaPipe's full-body landmarker, mapped to OpenPose's 18 keypoints.

The mediapipe wheel ships its pose model (the "full" landmarker, model_complexity=1), so this
detector works on a fresh machine with no annotator download, unlike controlnet-aux's OpenPose.
MediaPipe Pose finds one person per image; OpenPose finds everyone. The map is drawn by
controlnet-aux's own drawing code (see openpose.py), so the ControlNet sees the same kind of map.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from studio.engine.openpose import KEYPOINT_NAMES, Point

# MediaPipe's 33 landmarks that OpenPose also has. Both name sides from the person's point of
# view (OpenPose's r_shoulder is MediaPipe's RIGHT_SHOULDER), so no mirroring is needed.
# The neck is not a MediaPipe landmark: it is the midpoint of the shoulders, as in OpenPose.
MEDIAPIPE_INDEX: dict[str, int] = {
    "nose": 0,
    "l_eye": 2,
    "r_eye": 5,
    "l_ear": 7,
    "r_ear": 8,
    "l_shoulder": 11,
    "r_shoulder": 12,
    "l_elbow": 13,
    "r_elbow": 14,
    "l_wrist": 15,
    "r_wrist": 16,
    "l_hip": 23,
    "r_hip": 24,
    "l_knee": 25,
    "r_knee": 26,
    "l_ankle": 27,
    "r_ankle": 28,
}
N_MEDIAPIPE_LANDMARKS = 33
# A landmark MediaPipe is less sure of than this is left out of the skeleton, as OpenPose
# leaves out a part whose heat-map peak is weak (a hidden wrist must not be drawn).
MIN_VISIBILITY = 0.5


def keypoints_from_landmarks(landmarks: Sequence[tuple[float, float, float]], width: int,
                             height: int) -> list[Point | None]:
    """OpenPose's 18 keypoints in pixels from MediaPipe's 33 (x, y normalised to 0..1, visibility).

    A point that is not visible enough, or that lies outside the picture, is None.
    """
    if len(landmarks) != N_MEDIAPIPE_LANDMARKS:
        raise ValueError(f"expected {N_MEDIAPIPE_LANDMARKS} MediaPipe landmarks, got {len(landmarks)}")

    def point(index: int) -> Point | None:
        x, y, visibility = landmarks[index]
        if visibility < MIN_VISIBILITY or not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            return None
        return (x * width, y * height)

    found = {name: point(index) for name, index in MEDIAPIPE_INDEX.items()}
    left, right = found["l_shoulder"], found["r_shoulder"]
    found["neck"] = None if left is None or right is None else ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2)
    return [found[name] for name in KEYPOINT_NAMES]


def available() -> bool:
    """Whether mediapipe (with its bundled pose model) is installed."""
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return False
    return True


class MediaPipePoseDetector:
    """Finds the most prominent person in a photo and returns their OpenPose keypoints."""

    def __init__(self):
        # mediapipe logs through glog/absl to stderr on every graph start; keep warnings only
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        # static_image_mode: every call is a new photo (no tracking between calls);
        # model_complexity=1 is the landmarker bundled in the wheel (2 would be downloaded).
        self._pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1, enable_segmentation=False,
                                            min_detection_confidence=0.5)

    def keypoints(self, image: Image.Image) -> list[list[Point | None]]:
        """[one pose] for the person found, or [] when there is nobody."""
        rgb = np.ascontiguousarray(np.array(image.convert("RGB"), dtype=np.uint8))
        result = self._pose.process(rgb)
        if result.pose_landmarks is None:
            return []
        landmarks = [(mark.x, mark.y, mark.visibility) for mark in result.pose_landmarks.landmark]
        return [keypoints_from_landmarks(landmarks, *image.size)]

    def close(self) -> None:
        self._pose.close()
