"""Device work is serialised (preprocessing included), and failures on the device leave the studio usable."""

import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from tests_support import fast_request, wait_for

from studio.errors import InputError, ModelError
from studio.micro.tiny import save_tiny_controlnet
from studio.requests import ControlRequest, control_unit


def photo_request():
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return ControlRequest(prompt="a figure", steps=2, seed=1, sampler="Euler", width=64, height=64,
                          units=(control_unit(type="pose", image=photo, preprocess=True),))


@pytest.fixture
def spied_preprocessing(services):
    """Record, for every preprocessor call, whether its thread held the device lock (then run it for real)."""
    save_tiny_controlnet(services.registry.controlnet_dir / "tiny-openpose", seed=1)
    runner, calls = services.runner, []
    real = runner.preprocessors.run

    def spy(*args, **kwargs):
        calls.append(runner.device_lock.held_by_current_thread())
        return real(*args, **kwargs)

    runner.preprocessors.run = spy
    return calls


def test_preprocessing_runs_under_the_device_lock(services, spied_preprocessing):
    try:
        services.runner.prepare(photo_request())
    except InputError:
        pass  # a noise photo holds no person; what matters is where the detector ran
    assert spied_preprocessing == [True]


def test_preprocessing_waits_for_the_run_on_the_device(services, spied_preprocessing):
    release = threading.Event()
    first = threading.Thread(target=lambda: services.runner.run(fast_request(steps=3),
                                                                on_progress=lambda p: release.wait(60)))
    first.start()
    wait_for(lambda: services.history.search(status="running"))

    def detect():
        try:
            services.runner.prepare(photo_request())
        except InputError:
            pass

    second = threading.Thread(target=detect)
    second.start()
    time.sleep(1.0)  # time enough for an unserialised detector to have started
    assert spied_preprocessing == [], "the detector ran while another job held the device"
    release.set()
    first.join(60)
    second.join(60)
    assert spied_preprocessing == [True]


def half_broken_copy(source, dest):
    """A model whose UNet and text encoder load but whose VAE config does not fit its weights."""
    shutil.copytree(source, dest)
    config_path = dest / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["block_out_channels"] = [channels * 2 for channels in config["block_out_channels"]]
    config_path.write_text(json.dumps(config))
    return dest


def test_a_load_failing_half_way_leaves_the_cache_consistent(services, tiny_model_dir, tmp_path):
    services.runner.run(fast_request())
    services.registry.add(str(half_broken_copy(tiny_model_dir, tmp_path / "half")), name="half")
    loads = services.models.load_count
    with pytest.raises(ModelError) as error:
        services.runner.run(fast_request(model="half"))
    assert error.value.field == "model" and "could not load 'half'" in str(error.value)
    assert services.models.loaded_names() == ["tiny"] and services.models.load_count == loads
    assert services.history.count() == 1  # nothing recorded for a run that never started
    assert services.runner.run(fast_request()).status == "done"


def test_running_out_of_memory_while_loading_says_so(services, tiny_model_dir, tmp_path, monkeypatch):
    """A load that runs out of memory after the UNet is in: a message, memory released, the cache unchanged.
    The CPU cannot run out of memory on cue, so the VAE's loader raises what a CUDA allocation would."""
    import diffusers

    services.runner.run(fast_request())
    services.registry.add(str(shutil.copytree(tiny_model_dir, tmp_path / "big")), name="big")

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", exhausted)
    with pytest.raises(ModelError) as error:
        services.runner.run(fast_request(model="big"))
    assert "not enough memory to load 'big'" in str(error.value)
    monkeypatch.undo()
    assert services.models.loaded_names() == ["tiny"]
    assert services.runner.run(fast_request()).status == "done"
    assert services.runner.run(fast_request(model="big")).status == "done"


def test_the_cpu_allocator_running_out_is_a_clear_error(services):
    def exhausted(progress):
        if progress.fraction > 0:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: "
                               "you tried to allocate 21474836480 bytes.")

    with pytest.raises(ModelError, match="ran out of memory at 64x64"):
        services.runner.run(fast_request(steps=3), on_progress=exhausted)
    assert services.history.search()[0].status == "failed"
    assert services.runner.run(fast_request()).status == "done"
