"""LoRAs: prompt tags, the models/Lora folder, real files in both key layouts applied to the tiny model."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from tests_support import fast_request

from studio.engine.loras import LoraTag, parse_tags, restore_tags, short_hash, with_weights
from studio.errors import InputError
from studio.micro.lora_files import random_factors, save_lora
from studio.micro.tiny import tiny_pipeline


def pixels(result) -> np.ndarray:
    return np.stack([np.array(image) for image in result.images])


@pytest.fixture(scope="module")
def factors():
    # strong enough that a tiny model's picture visibly changes
    return random_factors(tiny_pipeline(0), rank=4, seed=3, std=0.4)


@pytest.fixture
def lora_dir(services):
    return services.settings.models_dir / "Lora"


def test_tags_are_removed_from_the_text_and_read_in_order():
    text, tags = parse_tags("a cube <lora:outline:0.8>, red <lora:Stripes v2:-0.5> <lora:plain>")
    assert text == "a cube , red  "
    assert tags == [LoraTag("outline", 0.8), LoraTag("Stripes v2", -0.5), LoraTag("plain", 1.0)]
    assert parse_tags("no tags here") == ("no tags here", [])
    assert with_weights("x <lora:a:1> <lora:b:0.2>", 0.5) == "x <lora:a:0.5> <lora:b:0.5>"
    assert with_weights("x <lora:a:1> <lora:b:0.2>", 0.5, only="b") == "x <lora:a:1> <lora:b:0.5>"


@pytest.mark.parametrize("prompt, words", [
    ("<lora::0.5> cube", "has no name"),
    ("<lora:outline:strong> cube", "is not a number"),
    ("<lora:outline:nan> cube", "out of range"),
    ("<lora:outline:99> cube", "out of range"),
    ("cube <lora:outline:0.5", "is not closed"),
    ("<lora:a:1> and <lora:a:0.5>", "tagged twice"),
])
def test_malformed_tags_are_refused_naming_the_prompt(prompt, words):
    with pytest.raises(InputError, match=words) as caught:
        parse_tags(prompt)
    assert caught.value.field == "prompt" and "<lora:" in str(caught.value)


def test_the_short_hash_is_a1111s_and_ignores_the_header(tmp_path, factors):
    first = save_lora(tmp_path / "a.safetensors", factors, metadata={"ss_output_name": "a"})
    second = save_lora(tmp_path / "b.safetensors", factors, metadata={"ss_output_name": "something longer"})
    data = first.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert short_hash(first) == hashlib.sha256(data[8 + header:]).hexdigest()[:12]
    assert short_hash(first) == short_hash(second) != hashlib.sha256(data).hexdigest()[:12]


def test_the_library_lists_usable_files_and_says_why_others_are_not(services, lora_dir, factors, tiny_model_dir):
    save_lora(lora_dir / "outline.safetensors", factors, "kohya")
    save_lora(lora_dir / "styles" / "stripes.safetensors", factors, "peft")
    (lora_dir / "old.pt").write_bytes(pickle.dumps({"x": 1}))
    checkpoint = next((tiny_model_dir / "unet").glob("*.safetensors"))
    (lora_dir / "checkpoint.safetensors").write_bytes(checkpoint.read_bytes())
    (lora_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    library = services.registry.loras
    rows = {row["name"]: row for row in library.describe()}
    assert library.names() == ["micro-framed", "outline", "stripes"]  # the embedded one, then models/Lora
    assert rows["outline"]["hash"] == short_hash(lora_dir / "outline.safetensors")
    assert rows["outline"]["size_bytes"] == (lora_dir / "outline.safetensors").stat().st_size
    assert "pickle" in rows["old"]["problem"] and rows["old"]["hash"] is None
    assert "not LoRA weights" in rows["checkpoint"]["problem"]
    assert rows["broken"]["problem"]
    with pytest.raises(InputError, match="cannot be used: .*pickle") as caught:
        services.runner.run(fast_request(prompt="cube <lora:old:1>"))
    assert caught.value.field == "prompt"


def test_a_lora_changes_the_picture_and_leaves_no_trace(services, lora_dir, factors):
    runner = services.runner
    save_lora(lora_dir / "outline.safetensors", factors, "kohya")
    base = runner.run(fast_request(prompt="a red cube"))
    with_lora = runner.run(fast_request(prompt="a red cube <lora:outline:0.8>"))
    after = runner.run(fast_request(prompt="a red cube"))
    assert not np.array_equal(pixels(with_lora), pixels(base))
    # unloaded cleanly: the base model's exact pixels again
    assert np.array_equal(pixels(after), pixels(base))
    # the tag is not text the encoder sees: weight 0 is the base picture
    zero = runner.run(fast_request(prompt="a red cube <lora:outline:0>"))
    assert np.array_equal(pixels(zero), pixels(base))


def test_both_key_layouts_give_the_same_pixels(services, lora_dir, factors):
    save_lora(lora_dir / "kohya-style.safetensors", factors, "kohya")
    save_lora(lora_dir / "peft-style.safetensors", factors, "peft")
    kohya = services.runner.run(fast_request(prompt="a cube <lora:kohya-style:0.7>"))
    peft = services.runner.run(fast_request(prompt="a cube <lora:peft-style:0.7>"))
    np.testing.assert_allclose(pixels(kohya), pixels(peft), atol=1)


def test_weights_stack_and_may_be_negative(services, lora_dir, factors):
    runner = services.runner
    save_lora(lora_dir / "one.safetensors", factors)
    save_lora(lora_dir / "two.safetensors", random_factors(tiny_pipeline(0), rank=2, seed=9, std=0.4))
    one = pixels(runner.run(fast_request(prompt="cube <lora:one:0.6>")))
    negative = pixels(runner.run(fast_request(prompt="cube <lora:one:-0.6>")))
    both = pixels(runner.run(fast_request(prompt="cube <lora:one:0.6> <lora:two:0.6>")))
    assert not np.array_equal(one, negative) and not np.array_equal(one, both)


def test_the_run_records_each_lora_and_a_rerun_repeats_it(services, lora_dir, factors):
    runner = services.runner
    save_lora(lora_dir / "outline.safetensors", factors)
    expected = short_hash(lora_dir / "outline.safetensors")
    result = runner.run(fast_request(prompt="a cube <lora:outline:0.8>"))
    record = services.history.get(result.run_id)
    assert record.loras == [{"name": "outline", "weight": 0.8, "hash": expected}]
    assert record.prompt == "a cube <lora:outline:0.8>"
    assert f'Lora hashes: "outline: {expected}"' in result.infotexts[0]
    again = runner.rerun(result.run_id)
    assert np.array_equal(pixels(again), pixels(result))


def test_a_rerun_whose_lora_changed_or_went_says_so_by_name_and_hash(services, lora_dir, factors):
    runner = services.runner
    path = save_lora(lora_dir / "outline.safetensors", factors)
    old = short_hash(path)
    result = runner.run(fast_request(prompt="a cube <lora:outline:0.8>"))
    save_lora(path, random_factors(tiny_pipeline(0), rank=4, seed=5))
    runs_before = len(services.history.search())
    with pytest.raises(InputError, match=f"'outline' changed since run #{result.run_id} \\(hash {old} then, "
                                         f"{short_hash(path)} now\\)"):
        runner.rerun(result.run_id)
    path.unlink()
    with pytest.raises(InputError, match=f"'outline' \\(hash {old}\\) that run #{result.run_id} used is no longer"):
        runner.rerun(result.run_id)
    assert len(services.history.search()) == runs_before


def test_an_unknown_lora_is_refused_before_anything_is_recorded(services, lora_dir, factors):
    save_lora(lora_dir / "outline.safetensors", factors)
    with pytest.raises(InputError, match="unknown LoRA 'outlin'.*pick one of: micro-framed, outline") as caught:
        services.runner.run(fast_request(prompt="cube <lora:outlin:1>"))
    assert caught.value.field == "prompt"
    assert services.history.search() == []
    assert services.runner.run(fast_request()).status == "done"


def test_an_a1111_png_brings_back_its_tags_under_the_local_names(services, lora_dir, factors, tmp_path):
    path = save_lora(lora_dir / "my-outline.safetensors", factors)
    digest = short_hash(path)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"a cube <lora:outline_v1:0.7>\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, "
                                f'Size: 64x64, Lora hashes: "outline_v1: {digest}, lost: 0123456789ab"')
    png = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    request = services.runner.request_from_png(Image.open(png))
    assert request.prompt == "a cube <lora:my-outline:0.7> <lora:lost:1>"
    assert restore_tags("plain", f"outline_v1: {digest}", services.registry.loras) == "plain <lora:my-outline:1>"
