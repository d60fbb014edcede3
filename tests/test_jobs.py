"""The one path of a run, end to end on a tiny model and a real SQLite file."""

import signal

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from tests_support import fast_request, start_hanging_run

from studio.engine.generate import CancelToken
from studio.errors import InputError, ModelError, NotFound
from studio.infotext import parse_infotext
from studio.requests import Txt2ImgRequest


def test_txt2img_run_is_recorded_with_every_input(services):
    steps = []
    result = services.runner.run(fast_request(batch_size=2, negative_prompt="blurry", sampler="DPM++ 2M"),
                                 on_progress=steps.append)
    assert result.status == "done" and result.seeds == [1234, 1235]
    assert len(result.images) == 2 and result.images[0].size == (64, 64)
    assert result.images[0].tobytes() != result.images[1].tobytes()
    record = services.history.get(result.run_id)
    assert (record.status, record.mode, record.model_name) == ("done", "txt2img", "tiny")
    assert record.seeds == [1234, 1235] and [r.seed for r in record.outputs] == [1234, 1235]
    assert (record.steps, record.cfg_scale, record.width, record.height) == (2, 7.0, 64, 64)
    assert record.negative_prompt == "blurry" and record.sampler == "DPM++ 2M" and record.karras
    assert record.scheduler["class"] == "DPMSolverMultistepScheduler"
    assert record.scheduler["config"]["use_karras_sigmas"] is True
    assert record.device == "cpu" and record.dtype == "float32"
    assert set(record.versions) == {"studio", "torch", "diffusers", "transformers"}
    assert len(record.model_hash) == 64 and record.duration_s > 0
    for ref, image in zip(record.outputs, result.images):
        on_disk = Image.open(ref.path)
        assert np.array_equal(np.array(on_disk), np.array(image))
        parsed = parse_infotext(on_disk.text["parameters"])
        assert parsed["seed"] == ref.seed and parsed["model_hash"] == record.model_hash[:10]
        assert parsed["negative_prompt"] == "blurry" and parsed["karras"] is True
    # progress reached the last step, with previews
    assert steps[-1].fraction == 1.0 and any(p.preview is not None for p in steps)


def test_random_seed_is_recorded_as_the_seed_that_ran(services):
    result = services.runner.run(fast_request(seed=-1))
    record = services.history.get(result.run_id)
    assert record.seed == result.seeds[0] >= 0


def test_model_native_size_is_the_default(services):
    result = services.runner.run(fast_request(width=None, height=None))
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE", "DPM++ SDE", "UniPC"])
def test_rerun_gives_identical_pixels(services, sampler):
    first = services.runner.run(fast_request(sampler=sampler, batch_size=2))
    again = services.runner.rerun(first.run_id)
    assert again.run_id != first.run_id and again.seeds == first.seeds
    for a, b in zip(first.images, again.images):
        assert np.array_equal(np.array(a), np.array(b))
    assert services.history.get(again.run_id).rerun_of == first.run_id


def test_restore_returns_the_exact_request(services):
    request = fast_request(negative_prompt="ugly", cfg_scale=4.5, karras=False, sampler="LMS", batch_count=2)
    result = services.runner.run(request)
    restored = services.runner.restore(result.run_id)
    assert restored == Txt2ImgRequest(**{**request.__dict__, "model": "tiny"})


def test_interrupt_keeps_finished_images_and_marks_the_run(services):
    cancel = CancelToken()

    def on_progress(progress):
        if "step 1/" in progress.message:
            cancel.cancel()

    result = services.runner.run(fast_request(steps=6, batch_count=3), on_progress=on_progress, cancel=cancel)
    assert result.status == "interrupted" and len(result.images) == 1
    record = services.history.get(result.run_id)
    assert record.status == "interrupted" and len(record.outputs) == 1 and record.outputs[0].path.is_file()


def test_bad_input_records_nothing_and_the_runner_keeps_working(services):
    before = services.history.count()
    for bad in (fast_request(width=0), fast_request(width=100), fast_request(steps=0),
                fast_request(steps=10_000), fast_request(sampler="Karras Z")):
        with pytest.raises(InputError):
            services.runner.run(bad)
    with pytest.raises(NotFound) as error:
        services.runner.run(fast_request(model="no-such-model"))
    assert error.value.field == "model"
    services.settings.max_pixels = 64 * 64
    with pytest.raises(InputError, match="over the limit"):
        services.runner.run(fast_request(width=128, height=128))
    assert services.history.count() == before
    assert services.runner.run(fast_request()).status == "done"


def test_a_corrupt_model_file_is_a_clear_error(services, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    services.registry.checkpoints_dir.mkdir(parents=True)
    (services.registry.checkpoints_dir / "broken.safetensors").write_bytes(broken.read_bytes())
    with pytest.raises(ModelError) as error:
        services.runner.run(fast_request(model="broken"))
    assert error.value.field == "model"
    assert services.runner.run(fast_request()).status == "done"


def test_a_failure_during_sampling_marks_the_row_failed(services):
    def explode(progress):
        raise RuntimeError("device fell over")

    with pytest.raises(RuntimeError):
        services.runner.run(fast_request(), on_progress=explode)
    record = services.history.search(limit=1)[0]
    assert record.status == "failed" and "device fell over" in record.error and record.outputs == ()


def test_pngs_restore_their_parameters(services):
    result = services.runner.run(fast_request(batch_size=2, seed=77))
    second = Image.open(result.outputs[1].path)
    request = services.runner.request_from_png(second)
    assert request.seed == 78 and request.batch_size == 1 and request.model == "tiny"
    again = services.runner.run(request)
    # Alone instead of in a batch of two, the same seed gives the same picture up to float
    # rounding of batched matmuls (as in A1111); a single-image run repeats exactly.
    difference = np.abs(np.array(again.images[0], dtype=int) - np.array(result.images[1], dtype=int))
    assert difference.max() <= 3 and difference.mean() < 0.5
    first = services.runner.run(fast_request(seed=5))
    single = services.runner.run(services.runner.request_from_png(Image.open(first.outputs[0].path)))
    assert np.array_equal(np.array(single.images[0]), np.array(first.images[0]))


def test_a1111_png_restores_its_parameters(services, tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse\nNegative prompt: fog\nSteps: 31, Sampler: DPM++ 2M Karras, "
                                "CFG scale: 5.5, Seed: 99, Size: 512x640, Model hash: 0123456789, Model: sd15")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    request = services.runner.request_from_png(Image.open(path))
    assert (request.prompt, request.negative_prompt, request.steps, request.seed) == ("a lighthouse", "fog", 31, 99)
    assert (request.sampler, request.karras, request.cfg_scale) == ("DPM++ 2M", True, 5.5)
    assert (request.width, request.height, request.model) == (512, 640, None)
    with pytest.raises(InputError, match="no generation parameters"):
        services.runner.request_from_png(Image.new("RGB", (4, 4)))


def test_a_run_killed_midway_is_marked_interrupted_at_next_start(settings, tiny_model_dir):
    from studio.app import build

    child = start_hanging_run(settings.data_dir, tiny_model_dir)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    services = build(settings)
    try:
        [crashed] = services.recovery.interrupted_runs
        record = services.history.get(crashed)
        assert record.status == "interrupted" and record.outputs == ()
        assert services.recovery.orphan_blobs == [] and services.recovery.missing_blobs == []
    finally:
        services.close()


def test_running_out_of_device_memory_is_a_clear_error_and_the_studio_goes_on(services):
    """A GPU running out of memory mid-sampling: a message naming what to change, a failed row, and the next
    run works with the model still loaded. This CPU cannot run out of device memory, so the error is
    raised where a CUDA allocation would raise it: inside a sampling step (the step callback)."""
    import torch

    def exhausted(progress):
        if progress.fraction > 0:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(ModelError) as error:
        services.runner.run(fast_request(steps=3), on_progress=exhausted)
    assert error.value.field == "width"
    assert "ran out of memory at 64x64 with batch size 1" in str(error.value)
    [record] = services.history.search()
    assert record.status == "failed" and "ran out of memory" in record.error
    assert services.models.loaded_names() == ["tiny"]  # freed cached memory, kept the model
    again = services.runner.run(fast_request())
    assert services.history.get(again.run_id).status == "done"


@pytest.mark.parametrize("text", ["a cat\nSteps: 20, Sampler: Euler, Size: axb, Seed: 1",
                                  "a cat\nSteps: x, CFG scale: nan, Seed: 1, Size: 10x"])
def test_a1111_infotext_that_lies_is_read_as_far_as_it_can_be(services, tmp_path, text):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "odd.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    request = services.runner.request_from_png(Image.open(path))
    assert request.prompt == "a cat" and request.width is None and request.seed == 1


@pytest.mark.parametrize("studio_json", ['{"mode": "txt2img", "steps": "many"}', '{"mode": "control", "units": 5}',
                                         '[' * 5000 + ']' * 5000, '{"mode": "txt2img", "seed": 1e400}'])
def test_a_png_whose_studio_parameters_lie_is_refused_naming_the_png(services, tmp_path, studio_json):
    info = PngImagePlugin.PngInfo()
    info.add_text("studio-request", studio_json)
    path = tmp_path / "odd.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(InputError) as error:
        services.runner.request_from_png(Image.open(path))
    assert error.value.field == "png"
