"""Every sampler in the menu builds from a model's schedule and runs its timesteps."""

import pytest

from studio.engine.schedulers import (
    SAMPLER_NAMES,
    describe_scheduler,
    make_scheduler,
    parse_sampler_name,
    supports_karras,
)

SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1,
               "skip_prk_steps": True, "set_alpha_to_one": False, "_class_name": "PNDMScheduler"}

REQUIRED = {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS", "PNDM"}


def test_the_issue_list_of_samplers_is_offered():
    assert REQUIRED <= set(SAMPLER_NAMES)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("karras", [False, True])
def test_each_sampler_builds_and_sets_timesteps(name, karras):
    scheduler = make_scheduler(name, karras, SD_SCHEDULE)
    scheduler.set_timesteps(6)
    assert len(scheduler.timesteps) >= 6
    config = describe_scheduler(scheduler)["config"]
    assert config["beta_schedule"] == "scaled_linear" and config["beta_end"] == 0.012
    assert config.get("use_karras_sigmas", False) == (karras and supports_karras(name))


def test_model_prediction_type_is_kept():
    scheduler = make_scheduler("Euler", False, dict(SD_SCHEDULE, prediction_type="v_prediction"))
    assert scheduler.config.prediction_type == "v_prediction"


def test_dpmpp_variants_differ_in_algorithm():
    assert make_scheduler("DPM++ 2M", True, SD_SCHEDULE).config.algorithm_type == "dpmsolver++"
    assert make_scheduler("DPM++ 2M SDE", True, SD_SCHEDULE).config.algorithm_type == "sde-dpmsolver++"


def test_parse_sampler_names_from_infotexts():
    assert parse_sampler_name("DPM++ 2M Karras") == ("DPM++ 2M", True)
    assert parse_sampler_name("PLMS") == ("PNDM", False)
    assert parse_sampler_name("Euler a") == ("Euler a", False)
