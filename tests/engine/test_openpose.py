"""OpenPose drawing matches controlnet-aux pixel for pixel; the JSON format round-trips."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from studio.engine import openpose

WIDTH, HEIGHT = 96, 128


def _pose(missing: tuple[int, ...] = ()) -> list:
    points = openpose.preset_pose("waving", WIDTH, HEIGHT)
    return [None if i in missing else p for i, p in enumerate(points)]


def test_drawing_equals_controlnet_aux_draw_poses():
    with warnings.catch_warnings():  # controlnet_aux's package import warns about its other detectors
        warnings.simplefilter("ignore")
        from controlnet_aux.open_pose import BodyResult, PoseResult, draw_poses
        from controlnet_aux.open_pose.body import Keypoint

    keypoints = _pose(missing=(3, 16))
    theirs = draw_poses(
        [PoseResult(BodyResult([None if p is None else Keypoint(p[0] / WIDTH, p[1] / HEIGHT) for p in keypoints], 1.0, 16), None, None, None)],
        HEIGHT, WIDTH, draw_body=True, draw_hand=False, draw_face=False,
    )
    ours = openpose.draw_body_pose(keypoints, WIDTH, HEIGHT)
    assert ours.mode == "RGB" and ours.size == (WIDTH, HEIGHT)
    assert np.array_equal(np.asarray(ours), theirs)
    assert np.asarray(ours).any(), "a pose draws something"


def test_missing_points_are_left_out_and_canvas_is_black_elsewhere():
    full = np.asarray(openpose.draw_body_pose(_pose(), WIDTH, HEIGHT))
    # Without the left arm (elbow, wrist) the raised forearm disappears.
    armless = np.asarray(openpose.draw_body_pose(_pose(missing=(6, 7)), WIDTH, HEIGHT))
    assert full.sum() > armless.sum()
    x, y = openpose.preset_pose("waving", WIDTH, HEIGHT)[7]
    assert full[int(y), int(x)].any() and not armless[int(y), int(x)].any()
    # The corners are far from every keypoint.
    assert not full[:3, :3].any() and not full[-3:, -3:].any()


def test_several_poses_share_one_canvas():
    left = [(x * 0.5, y) for x, y in openpose.preset_pose("standing", WIDTH, HEIGHT)]
    right = [(x * 0.5 + WIDTH / 2, y) for x, y in openpose.preset_pose("t-pose", WIDTH, HEIGHT)]
    both = np.asarray(openpose.draw_body_poses([left, right], WIDTH, HEIGHT))
    alone = np.asarray(openpose.draw_body_pose(left, WIDTH, HEIGHT))
    assert both[:, : WIDTH // 4].any() and both[:, -WIDTH // 4 :].any()
    assert not alone[:, -WIDTH // 5 :].any()


def test_wrong_number_of_keypoints_is_refused():
    with pytest.raises(ValueError, match="18 entries"):
        openpose.draw_body_pose(_pose()[:17], WIDTH, HEIGHT)


def test_presets_are_complete_and_normalised():
    assert set(openpose.POSE_PRESETS) >= {"standing", "arms up", "walking", "sitting", "t-pose", "waving"}
    assert len(openpose.KEYPOINT_NAMES) == 18 and openpose.KEYPOINT_NAMES[:2] == ("nose", "neck")
    for name, points in openpose.POSE_PRESETS.items():
        assert len(points) == 18, name
        assert all(0.0 <= v <= 1.0 for p in points for v in p), name


def test_json_round_trip_keeps_points_and_missing_ones():
    poses = [_pose(missing=(14, 17)), openpose.preset_pose("sitting", WIDTH, HEIGHT)]
    pose_json = openpose.pose_to_openpose_json(poses, WIDTH, HEIGHT)
    assert pose_json["canvas_width"] == WIDTH and pose_json["canvas_height"] == HEIGHT
    flat = pose_json["people"][0]["pose_keypoints_2d"]
    assert len(flat) == 54 and flat[14 * 3 + 2] == 0 and flat[2] == 1
    back, width, height = openpose.poses_from_openpose_json(json.loads(json.dumps(pose_json)))
    assert (width, height) == (WIDTH, HEIGHT)
    assert back[0][14] is None and back[0][17] is None
    for ours, theirs in zip(poses, back):
        for a, b in zip(ours, theirs):
            assert (a is None and b is None) or np.allclose(a, b)


def test_normalised_coordinates_are_scaled_to_the_canvas():
    data = {"canvas_width": 200, "canvas_height": 100, "people": [{"pose_keypoints_2d": [0.5, 0.25, 1.0] * 18}]}
    poses, _, _ = openpose.poses_from_openpose_json(data)
    assert poses[0][0] == (100.0, 25.0)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"canvas_height": 10, "people": []}, "canvas_width"),
        ({"canvas_width": 10, "canvas_height": -1, "people": []}, "canvas_height"),
        ({"canvas_width": 10, "canvas_height": 10}, "people"),
        ({"canvas_width": 10, "canvas_height": 10, "people": [{}]}, "people[0].pose_keypoints_2d"),
        ({"canvas_width": 10, "canvas_height": 10, "people": [{"pose_keypoints_2d": [1.0] * 50}]}, "people[0].pose_keypoints_2d"),
        ({"canvas_width": 10, "canvas_height": 10, "people": [{"pose_keypoints_2d": ["x"] * 54}]}, "people[0].pose_keypoints_2d"),
    ],
)
def test_malformed_json_names_the_field(data, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        openpose.poses_from_openpose_json(data)
