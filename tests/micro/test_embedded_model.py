"""The embedded model through the studio's own path: it draws what prompts name, inpaints and
outpaints sensibly, and its ControlNets follow their maps.

Held-out scene seeds (>= 10,000,000 + 5,000; training draws below 10,000,000). Thresholds sit a
little below what the shipped model measured (see assets/models/micro-sd/TRAINING.md), so a
regression in any pipeline step (tokenizer, scheduler, VAE scaling, CFG, compositing) fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.engine.registry import EMBEDDED_MODEL, EMBEDDED_MODELS_DIR
from studio.micro import eval as evaluation
from studio.micro import judge, world
from studio.requests import ControlRequest, InpaintRequest, OutpaintRequest, Txt2ImgRequest, control_unit

HELD_OUT = 10_000_000 + 5_000
# The shipped model on these exact 16 prompts x 1 seed measured colour 0.625, shape 0.75,
# background 0.69 (9 of 13 scored), size 0.90 (9 of 10), position 0 (position words are not
# learned yet, so position has no threshold here; TRAINING.md has the 200-prompt numbers).
# Each threshold allows two prompts fewer than measured.
THRESHOLDS = {"colour": 0.5, "shape": 0.625, "background": 0.53, "size": 0.7}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    from studio.app import build
    from studio.settings import Settings

    assert (EMBEDDED_MODELS_DIR / EMBEDDED_MODEL / "model_index.json").is_file(), "the embedded model is missing"
    root = tmp_path_factory.mktemp("embedded")
    services = build(Settings(data_dir=root / "data", models_dir=root / "models", device="cpu", preview_every=0))
    yield services
    services.close()


def request(prompt: str, seed: int, **overrides) -> Txt2ImgRequest:
    values = dict(prompt=prompt, seed=seed, steps=20, cfg_scale=7.0, sampler="DPM++ 2M", karras=False)
    values.update(overrides)
    return Txt2ImgRequest(**values)


def test_the_embedded_model_is_the_default_and_loads_like_any_checkpoint(embedded):
    assert embedded.registry.default_name() == EMBEDDED_MODEL
    entry = embedded.registry.resolve(None)
    assert entry.source == "embedded" and entry.example_prompts
    loaded = embedded.models.load(None)
    assert loaded.native_size == 128 and loaded.family == "sd1"
    assert type(loaded.pipe).__name__ == "StableDiffusionPipeline"


def test_prompts_draw_what_they_name(embedded):
    seeds = [HELD_OUT + i for i in range(16)]
    scenes = [world.scene_from_seed(seed, n_objects=1) for seed in seeds]
    prompts = [world.caption(scene, np.random.default_rng([seed, 2])) for scene, seed in zip(scenes, seeds)]
    images = [embedded.runner.run(request(p, s)).images[0] for p, s in zip(prompts, seeds)]
    scores = evaluation.score_attributes(images, prompts, judge, world)
    print("txt2img", scores)
    for field, threshold in THRESHOLDS.items():
        assert scores[f"{field}_accuracy"] >= threshold, (field, scores)


def palette_shares(image: Image.Image, mask: np.ndarray) -> dict[str, float]:
    """Share of the masked pixels nearest to each named colour of the world."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)[mask]
    palette = np.array(list(world.COLOURS.values()), dtype=np.float32)
    nearest = np.argmin(((rgb[:, None, :] - palette[None]) ** 2).sum(-1), axis=1)
    return {name: float((nearest == i).mean()) for i, name in enumerate(world.COLOURS)}


def test_inpainting_a_blue_square_puts_blue_in_the_mask_and_keeps_the_rest(embedded):
    """Only-masked inpainting (the mask's region at the model's full resolution), 6 seeds.

    Measured with the shipped model: blue is the main new colour in the mask for 6 of 6 seeds,
    covering 8-20% of it (the crop fills the model's whole 128 px canvas and the model ignores
    position words, so the square is drawn small or off-centre); whole-picture inpainting of the
    same mask draws blue in 5 of 6, covering 52-62%.
    """
    from studio.engine.imaging import prepare_mask

    base = world.render_image(world.Scene(background="yellow", objects=()))
    mask = Image.new("L", base.size, 0)
    mask.paste(255, (40, 40, 88, 88))
    inside = np.asarray(mask) > 0
    drawn_blue = []
    for seed in range(6):
        result = embedded.runner.run(InpaintRequest(
            prompt="a large blue square in the centre, yellow background", seed=seed, steps=20, image=base,
            mask=mask, mask_blur=2, denoise_strength=1.0, inpaint_area="masked", padding=8, sampler="DPM++ 2M",
            karras=False))
        out = result.images[0]
        untouched = np.asarray(prepare_mask(result.request.mask, 2, False)) == 0
        assert np.array_equal(np.asarray(out)[untouched], np.asarray(base)[untouched])
        shares = palette_shares(out, inside)
        new_colours = {name: share for name, share in shares.items() if name != "yellow"}
        drawn_blue.append(shares["blue"] > 0.05 and max(new_colours, key=new_colours.get) == "blue")
        print("inpaint seed", seed, {k: round(v, 3) for k, v in shares.items() if v > 0.005})
    assert sum(drawn_blue) >= 5, drawn_blue


def horizontal_gradient(rgb: np.ndarray, column: int) -> float:
    return float(np.abs(rgb[:, column + 1].astype(float) - rgb[:, column].astype(float)).mean())


def test_outpainting_continues_the_picture_without_a_seam(embedded):
    scene = world.scene_from_seed(HELD_OUT + 100, n_objects=1)
    base = world.render_image(scene)
    prompt = world.caption(scene, np.random.default_rng(1))
    ratios = []
    for seed in range(3):
        result = embedded.runner.run(OutpaintRequest(prompt=prompt, seed=seed, steps=20, image=base, right=32,
                                                     infill="telea", overlap=8, feather=8, sampler="DPM++ 2M"))
        out = np.asarray(result.images[0])
        assert out.shape == (128, 160, 3)
        assert np.array_equal(out[:, :120], np.asarray(base)[:, :120])  # outside the overlap band: untouched
        new = out[:, 128:]
        assert new.std() > 1.0 or len(np.unique(new.reshape(-1, 3), axis=0)) > 8  # not a flat fill
        seam = np.mean([horizontal_gradient(out, c) for c in range(118, 132)])
        inside = np.mean([horizontal_gradient(out, c) for c in range(20, 100)]) + 1.0
        ratios.append(seam / inside)
    print("outpaint seam ratios", ratios)  # measured 0.05 to 0.06: the background simply continues
    assert max(ratios) < 2.0, ratios


def test_pose_and_depth_controlnets_follow_their_maps(embedded):
    seeds = [HELD_OUT + 200 + i for i in range(6)]
    coverage, coverage_plain, depth_iou = [], [], []
    for seed in seeds:
        figure = world.scene_from_seed(seed, n_objects=1, shapes=("figure",))
        pose = world.render_pose(figure)
        prompt = world.caption(figure, np.random.default_rng([seed, 2]))
        controlled = embedded.runner.run(ControlRequest(prompt=prompt, seed=seed, steps=20, sampler="DPM++ 2M",
                                                        units=(control_unit(type="pose", image=pose, preprocess=False),)))
        plain = embedded.runner.run(request(prompt, seed))
        coverage.append(evaluation.limb_coverage(pose, evaluation.object_mask(controlled.images[0], judge)))
        coverage_plain.append(evaluation.limb_coverage(pose, evaluation.object_mask(plain.images[0], judge)))
        scene = world.scene_from_seed(seed + 50)
        depth = world.render_depth(scene).convert("RGB")
        result = embedded.runner.run(ControlRequest(prompt=world.caption(scene, np.random.default_rng(seed)),
                                                    seed=seed, steps=20, sampler="DPM++ 2M",
                                                    units=(control_unit(type="depth", image=depth, preprocess=False),)))
        depth_iou.append(evaluation.iou(evaluation.near_region(depth),
                                        evaluation.all_objects_mask(result.images[0], judge)))
        assert controlled.request.units[0]["model"] == "micro-controlnet-pose"
        assert result.request.units[0]["model"] == "micro-controlnet-depth"
    print("control", np.mean(coverage), np.mean(coverage_plain), np.mean(depth_iou))
    # measured: limb coverage 0.629 with the pose ControlNet vs 0.039 without; depth IoU 0.640
    assert np.mean(coverage) >= 0.55 and np.mean(coverage) >= np.mean(coverage_plain) + 0.2, (coverage, coverage_plain)
    assert np.mean(depth_iou) >= 0.5, depth_iou
