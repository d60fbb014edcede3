"""The shipped style LoRA, micro-framed, through the studio's own path: listed, loaded, and drawing its style.

The detector and the style renderer are studio.micro.lora_train's; the rates on 100 held-out prompts are in
assets/loras/TRAINING.md. The cases below are held-out scenes (seeds from 10,900,000; training draws from
9,000,000), run at a few steps to keep the test quick.
"""

from __future__ import annotations

import numpy as np
import pytest

from studio.engine.registry import EMBEDDED_LORAS_DIR
from studio.micro import lora_train, world

LORA = EMBEDDED_LORAS_DIR / f"{lora_train.NAME}.safetensors"
STEPS = 10
CASES = lora_train.eval_cases(4)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    import torch

    torch.set_num_threads(1)  # shared machines; and one thread keeps the pixels the cases were measured on
    built = lora_train.studio_services(tmp_path_factory.mktemp("lora"))
    yield built
    built.close()


def test_the_detector_tells_framed_renderings_from_plain_ones():
    for seed, _ in lora_train.eval_cases(24):
        scene = world.scene_from_seed(seed, n_objects=1)
        assert lora_train.frame_score(lora_train.render_styled(scene)).framed, seed
        assert not lora_train.frame_score(world.render_image(scene)).framed, seed


def test_the_style_renderer_keeps_the_world_inside_the_frame():
    scene = world.scene_from_seed(9_000_003, n_objects=3)
    plain = np.asarray(world.render_image(scene))
    styled = np.asarray(lora_train.render_styled(scene))
    w = lora_train.FRAME_WIDTH
    assert np.array_equal(styled[w:-w, w:-w], plain[w:-w, w:-w])
    assert (styled[:w] == world.COLOURS["black"]).all() and (styled[:, -w:] == world.COLOURS["black"]).all()


def test_unframed_gives_the_judge_the_background_back():
    from studio.micro import judge

    for seed, _ in lora_train.eval_cases(8):
        scene = world.scene_from_seed(seed, n_objects=1)
        seen = judge.judge_image(lora_train.unframed(lora_train.render_styled(scene)))
        assert seen.background == scene.background, seed


def test_the_shipped_lora_is_listed_without_a_problem_and_is_small(services):
    rows = {row["name"]: row for row in services.registry.loras.describe()}
    row = rows[lora_train.NAME]
    assert row["problem"] is None and row["embedded"], row
    assert row["size_bytes"] < 5_000_000
    assert lora_train.NAME in services.registry.loras.names()


def test_it_was_trained_against_the_embedded_unet():
    from safetensors import safe_open

    with safe_open(str(LORA), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["studio_base_unet_sha256"] == lora_train.base_unet_hash(), (
        f"the embedded UNet changed since {lora_train.NAME} was trained; retrain it with "
        "python -m studio.micro.lora_train --minutes 12 (assets/loras/TRAINING.md)")


@pytest.mark.parametrize("seed, prompt", CASES)
def test_the_tag_draws_the_frame_and_no_tag_does_not(services, seed, prompt):
    plain = lora_train.generate(services, prompt, seed, None, STEPS)
    styled = lora_train.generate(services, prompt, seed, 1.0, STEPS)
    assert lora_train.frame_score(styled).framed, lora_train.frame_score(styled)
    assert not lora_train.frame_score(plain).framed, lora_train.frame_score(plain)
