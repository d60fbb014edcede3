"""The offline pose detector: MediaPipe's landmarks mapped to OpenPose's 18 keypoints, on a real photo."""

import os

import numpy as np
import pytest
from PIL import Image

from studio.engine import mediapipe_pose
from studio.engine.control import Preprocessors
from studio.engine.mediapipe_pose import MEDIAPIPE_INDEX, N_MEDIAPIPE_LANDMARKS, keypoints_from_landmarks
from studio.engine.openpose import KEYPOINT_NAMES
from studio.errors import InputError
from studio.micro.tiny import save_tiny_controlnet
from studio.requests import ControlRequest, control_unit

ASTRONAUT_SIZE = 512


def landmarks(visibility=1.0):
    """33 landmarks, each at its own place: x = index / 40, y = 1 - index / 40."""
    return [(i / 40, 1 - i / 40, visibility) for i in range(N_MEDIAPIPE_LANDMARKS)]


def test_landmarks_map_to_the_openpose_keypoint_of_the_same_body_part():
    points = keypoints_from_landmarks(landmarks(), 200, 100)
    assert len(points) == len(KEYPOINT_NAMES) == 18
    named = dict(zip(KEYPOINT_NAMES, points))
    for name, index in MEDIAPIPE_INDEX.items():
        assert named[name] == pytest.approx((index / 40 * 200, (1 - index / 40) * 100)), name
    # the person's right shoulder is MediaPipe's 12 (RIGHT_SHOULDER), not mirrored
    assert named["r_shoulder"] == pytest.approx((12 / 40 * 200, (1 - 12 / 40) * 100))
    # OpenPose's neck is the midpoint of the shoulders
    assert named["neck"] == pytest.approx(((11 + 12) / 80 * 200, (1 - (11 + 12) / 80) * 100))


def test_unsure_or_outside_landmarks_are_left_out():
    marks = landmarks()
    marks[15] = (0.5, 0.5, 0.2)  # left wrist, hidden
    marks[12] = (1.2, 0.5, 0.9)  # right shoulder, outside the picture
    named = dict(zip(KEYPOINT_NAMES, keypoints_from_landmarks(marks, 64, 64)))
    assert named["l_wrist"] is None and named["r_shoulder"] is None
    assert named["neck"] is None  # needs both shoulders
    assert named["l_shoulder"] is not None
    assert all(p is None for p in keypoints_from_landmarks(landmarks(visibility=0.1), 64, 64))
    with pytest.raises(ValueError, match="33"):
        keypoints_from_landmarks(landmarks()[:17], 64, 64)


@pytest.fixture(scope="module")
def detector_ready():
    if not mediapipe_pose.available():
        if os.environ.get("CI"):
            pytest.fail("mediapipe is missing: launch.py installs it ([tool.studio] in pyproject.toml)")
        pytest.skip("mediapipe is not installed (python launch.py installs it)")


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def test_finds_the_astronaut_offline_where_she_is(detector_ready, tmp_path):
    preprocessors = Preprocessors(tmp_path / "no-annotators")  # no OpenPose weights: auto picks MediaPipe
    kind, detector = preprocessors.pose_detector()
    assert kind == "mediapipe"
    [pose] = detector.keypoints(astronaut())
    named = dict(zip(KEYPOINT_NAMES, pose))
    # her face is in the upper middle of the 512x512 photo, her shoulders below it at both sides
    nose, left, right = named["nose"], named["l_shoulder"], named["r_shoulder"]
    assert 170 < nose[0] < 280 and 70 < nose[1] < 180
    assert left[1] > nose[1] + 60 and right[1] > nose[1] + 60
    # facing the camera, her right shoulder is on the picture's left
    assert right[0] < nose[0] < left[0]
    assert named["r_eye"][0] < named["l_eye"][0]
    # the map is drawn where the keypoints are: coloured at the neck, black in the top corners
    full = np.array(preprocessors.run("pose", astronaut(), (ASTRONAUT_SIZE, ASTRONAUT_SIZE)))
    neck = named["neck"]
    assert full[int(neck[1]) - 3:int(neck[1]) + 4, int(neck[0]) - 3:int(neck[0]) + 4].max() > 100
    assert full[:40, :40].max() == 0 and full[:40, -40:].max() == 0
    # fitted to the output size the caller asks for
    small = preprocessors.run("pose", astronaut(), (128, 96))
    assert small.size == (128, 96) and small.mode == "RGB"


def test_a_photo_without_a_person_is_a_clear_error_and_nothing_is_recorded(detector_ready, services, tmp_path):
    save_tiny_controlnet(services.registry.controlnet_dir / "tiny-openpose", seed=1)
    services.runner.preprocessors = Preprocessors(tmp_path / "no-annotators")
    empty = Image.new("RGB", (64, 64), (30, 90, 200))
    request = ControlRequest(prompt="a figure", steps=2, seed=1, sampler="Euler",
                             units=(control_unit(type="pose", image=empty),))
    with pytest.raises(InputError) as error:
        services.runner.run(request)
    assert error.value.field == "units[0].image" and "no person" in str(error.value)
    assert services.history.count() == 0


def test_a_pose_run_from_a_photo_records_the_detected_map(detector_ready, services, tmp_path):
    save_tiny_controlnet(services.registry.controlnet_dir / "tiny-openpose", seed=1)
    services.runner.preprocessors = Preprocessors(tmp_path / "no-annotators")
    photo = astronaut().resize((128, 128))
    notices = []
    request = ControlRequest(prompt="a figure", steps=2, seed=1, sampler="Euler", width=64, height=64,
                             units=(control_unit(type="pose", image=photo, hands=True),))
    prepared = services.runner.prepare(request, notices)
    assert any("found by MediaPipe" in notice for notice in notices)
    assert any("body only" in notice for notice in notices)  # it cannot draw the asked-for hands
    result = services.runner.run(request)
    inputs = services.history.load_inputs(services.history.get(result.run_id))
    assert np.array_equal(np.array(inputs["units.0.map"]), np.array(prepared.units[0]["map"]))
    assert np.array(inputs["units.0.map"]).max() > 100  # a skeleton was drawn
