"""The synthetic world: seeded scenes, their renderings, captions and the caption parser."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from studio.micro import world

SEEDS = range(40)


def _pixels(image) -> np.ndarray:
    return np.asarray(image)


def test_a_seed_always_gives_the_same_scene_and_pixels():
    a, b = world.scene_from_seed(11), world.scene_from_seed(11)
    assert a == b
    assert np.array_equal(_pixels(world.render_image(a)), _pixels(world.render_image(b)))
    assert world.scene_from_seed(12) != a


def test_renderings_have_the_documented_sizes_and_modes():
    scene = world.scene_from_seed(3, n_objects=3, shapes=("figure", "circle"))
    image, depth, pose = world.render_image(scene), world.render_depth(scene), world.render_pose(scene)
    assert (image.mode, image.size) == ("RGB", (world.SIZE, world.SIZE))
    assert (depth.mode, depth.size) == ("L", (world.SIZE, world.SIZE))
    assert (pose.mode, pose.size) == ("RGB", (world.SIZE, world.SIZE))
    masks = world.render_masks(scene)
    assert len(masks) == len(scene.objects)
    assert all(m.dtype == bool and m.shape == (world.SIZE, world.SIZE) for m in masks)


def test_sampling_follows_the_rules():
    for seed in SEEDS:
        scene = world.scene_from_seed(seed, n_objects=3)
        colours = [o.colour for o in scene.objects]
        assert len(set(colours)) == 3 and scene.background not in colours
        assert len({o.position for o in scene.objects}) == 3
        assert [o.depth for o in scene.objects] == sorted(o.depth for o in scene.objects)
        for obj in scene.objects:
            assert 0 < obj.depth <= 1
            assert (obj.keypoints is None) == (obj.shape != "figure")
            if obj.keypoints is not None:
                assert len(obj.keypoints) == 18
    counts = {len(world.scene_from_seed(seed).objects) for seed in SEEDS}
    assert counts == {1, 2, 3}
    only_figures = world.scene_from_seed(5, n_objects=2, shapes=["figure"])
    assert {o.shape for o in only_figures.objects} == {"figure"}
    with pytest.raises(ValueError, match="n_objects"):
        world.scene_from_seed(1, n_objects=4)
    with pytest.raises(ValueError, match="shapes"):
        world.scene_from_seed(1, shapes=["hexagon"])


def test_small_and_large_are_clearly_different():
    radii = {"small": [], "large": []}
    for seed in SEEDS:
        for obj in world.scene_from_seed(seed).objects:
            radii[obj.size].append(obj.radius)
    assert max(radii["small"]) * 1.4 < min(radii["large"])


def test_each_mask_shows_its_objects_colour_in_its_named_cell():
    kernel = np.ones((3, 3), np.uint8)
    for seed in SEEDS:
        scene = world.scene_from_seed(seed)
        image = _pixels(world.render_image(scene))
        masks = world.render_masks(scene)
        for obj, mask in zip(scene.objects, masks):
            inside = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
            assert inside.sum() > 30
            # Thin limbs keep a few antialiased pixels even inside; everything else is flat.
            exact = (image[inside] == world.COLOURS[obj.colour]).all(axis=1)
            assert exact.mean() > (0.8 if obj.shape == "figure" else 0.99), (seed, obj.colour)
            assert tuple(np.median(image[mask], axis=0)) == world.COLOURS[obj.colour]
            ys, xs = np.nonzero(mask)
            column, row = int(3 * xs.mean() / world.SIZE), int(3 * ys.mean() / world.SIZE)
            assert world.POSITIONS[row * 3 + column] == obj.position, (seed, obj)
        outside = ~cv2.dilate(np.any(masks, axis=0).astype(np.uint8), kernel).astype(bool)
        assert (image[outside] == world.COLOURS[scene.background]).all()


def test_masks_do_not_overlap_and_follow_occlusion():
    for seed in SEEDS:
        masks = world.render_masks(world.scene_from_seed(seed, n_objects=3))
        assert (np.sum(masks, axis=0) <= 1).all()


def test_depth_is_brighter_on_nearer_objects_and_dark_behind():
    for seed in SEEDS:
        scene = world.scene_from_seed(seed, n_objects=3)
        depth = _pixels(world.render_depth(scene))
        masks = world.render_masks(scene)
        levels = [np.median(depth[m]) for m in masks]
        assert levels == sorted(levels) and len(set(levels)) == 3  # objects go far to near
        assert depth[~np.any(masks, axis=0)].min() <= 20
        assert np.median(depth[~np.any(masks, axis=0)]) <= 20


_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
          (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]


def test_pose_map_is_the_skeleton_of_each_figure_and_black_elsewhere():
    checked = 0
    for seed in SEEDS:
        scene = world.scene_from_seed(seed)
        pose = _pixels(world.render_pose(scene))
        figures = [o for o in scene.objects if o.shape == "figure"]
        if not figures:
            assert not pose.any()
            continue
        near_skeleton = np.zeros(pose.shape[:2], np.uint8)
        for figure in figures:
            kp = np.array(figure.keypoints)
            for a, b in _LIMBS:
                cv2.line(near_skeleton, tuple(map(int, kp[a])), tuple(map(int, kp[b])), 1, 14)
                # The midpoint of every limb is painted (controlnet-aux draws ellipses of width 8).
                mid = ((kp[a] + kp[b]) / 2).astype(int)
                assert pose[mid[1], mid[0]].any(), (seed, a, b)
        assert not pose[near_skeleton == 0].any()
        checked += 1
    assert checked >= 5


def test_pose_map_drawn_large_shrinks_to_the_same_skeleton():
    scene = world.scene_from_seed(2, n_objects=1, shapes=["figure"])
    direct = _pixels(world.render_pose(scene)).any(axis=2)
    shrunk = _pixels(world.render_pose(scene, canvas=512))
    assert shrunk.shape == (world.SIZE, world.SIZE, 3)
    lit = shrunk.any(axis=2)
    assert lit.sum() > 30 and (lit & ~direct).sum() == 0  # thinner lines, same place
    assert lit.sum() < direct.sum()


def test_captions_name_every_objects_colour_and_shape():
    rng = np.random.default_rng(0)
    mentions = {"size": 0, "background": 0}
    total = 0
    for seed in SEEDS:
        scene = world.scene_from_seed(seed)
        texts = world.captions(scene, rng)
        assert len(texts) >= 3 and len(set(texts)) == len(texts)
        for text in texts:
            total += 1
            for obj in scene.objects:
                assert obj.colour in text
                words = ("figure", "person") if obj.shape == "figure" else (obj.shape,)
                assert any(w in text for w in words), (text, obj.shape)
            mentions["background"] += "background" in text
            mentions["size"] += any(w in text.split() for w in ("small", "large", "big"))
    assert 0.6 < mentions["background"] / total < 0.95  # usually, not always: the model learns defaults
    assert mentions["size"] / total > 0.6


def test_parse_prompt_inverts_single_object_captions():
    rng = np.random.default_rng(1)
    for seed in range(60):
        scene = world.scene_from_seed(seed, n_objects=1)
        obj = scene.objects[0]
        for text in world.captions(scene, rng, n=4):
            parsed = world.parse_prompt(text)
            assert parsed["colour"] == obj.colour and parsed["shape"] == obj.shape, text
            assert parsed["size"] in (None, obj.size), text
            assert parsed["position"] in (None, obj.position), text
            assert parsed["background"] in (None, scene.background), text
            assert (parsed["background"] is None) == ("background" not in text), text


def test_parse_prompt_reads_the_first_of_several_objects():
    rng = np.random.default_rng(2)
    for seed in range(40):
        scene = world.scene_from_seed(seed, n_objects=3)
        by_colour = {o.colour: o for o in scene.objects}
        text = world.caption(scene, rng)
        parsed = world.parse_prompt(text)
        obj = by_colour[parsed["colour"]]
        assert text.index(obj.colour) == min(text.index(c) for c in by_colour)
        assert parsed["shape"] == obj.shape and parsed["position"] in (None, obj.position), text


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a big red person in the upper left corner against a blue background",
         {"size": "large", "colour": "red", "shape": "figure", "position": "top left", "background": "blue"}),
        ("Yellow triangle, center", {"size": None, "colour": "yellow", "shape": "triangle", "position": "centre", "background": None}),
        ("white background with a small black square at the bottom right and a green circle on the left",
         {"size": "small", "colour": "black", "shape": "square", "position": "bottom right", "background": "white"}),
        ("a cat", {"size": None, "colour": None, "shape": None, "position": None, "background": None}),
    ],
)
def test_parse_prompt_on_written_prompts(prompt, expected):
    assert world.parse_prompt(prompt) == expected


def test_render_all_matches_the_single_renderers():
    scene = world.scene_from_seed(21)
    everything = world.render_all(scene)
    assert np.array_equal(_pixels(everything["image"]), _pixels(world.render_image(scene)))
    assert np.array_equal(_pixels(everything["depth"]), _pixels(world.render_depth(scene)))
    assert all(np.array_equal(a, b) for a, b in zip(everything["masks"], world.render_masks(scene)))
