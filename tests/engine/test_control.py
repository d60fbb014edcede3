"""ControlNet runs on tiny models: single and multi-unit, img2img with controls, preprocessors, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from studio.engine.control import Preprocessors
from studio.engine.openpose import draw_body_pose, preset_pose
from studio.errors import InputError, ModelError, NotFound
from studio.micro.tiny import save_tiny_controlnet
from studio.requests import ControlRequest, control_unit


@pytest.fixture
def control_services(services):
    folder = services.registry.controlnet_dir
    save_tiny_controlnet(folder / "tiny-openpose", seed=1)
    save_tiny_controlnet(folder / "tiny-depth", seed=2)
    return services


def pose_map(size=(64, 64)):
    return draw_body_pose(preset_pose("standing", *size), *size)


def depth_map(size=(64, 64)):
    image = Image.new("RGB", size, (10, 10, 10))
    ImageDraw.Draw(image).ellipse((10, 10, 40, 50), fill=(230, 230, 230))
    return image


def control(**overrides):
    values = dict(prompt="a green figure", steps=3, seed=8, sampler="Euler",
                  units=(control_unit(type="pose", image=pose_map(), preprocess=False),))
    values.update(overrides)
    return ControlRequest(**values)


def test_single_pose_unit_uses_the_default_controlnet_and_is_recorded(control_services):
    result = control_services.runner.run(control())
    assert result.images[0].size == (64, 64)
    unit = result.request.units[0]
    assert unit["model"] == "tiny-openpose" and unit["map"].size == (64, 64)
    record = control_services.history.get(result.run_id)
    assert {ref.name for ref in record.inputs} == {"units.0.image", "units.0.map"}
    assert record.params["units"][0]["model"] == "tiny-openpose"
    assert "ControlNet 0: \"Module: none, Model: tiny-openpose, Weight: 1" in result.infotexts[0]
    restored = control_services.runner.restore(result.run_id)
    assert np.array_equal(np.array(restored.units[0]["map"]), np.array(unit["map"]))
    again = control_services.runner.rerun(result.run_id)
    assert np.array_equal(np.array(again.images[0]), np.array(result.images[0]))


def test_the_control_map_and_weight_change_the_picture(control_services):
    runner = control_services.runner
    base = runner.run(control(units=(control_unit(type="pose", image=pose_map(), preprocess=False, weight=0.0),)))
    strong = runner.run(control(units=(control_unit(type="pose", image=pose_map(), preprocess=False, weight=2.0),)))
    late = runner.run(control(units=(control_unit(type="pose", image=pose_map(), preprocess=False, weight=2.0,
                                                  start=0.99, end=1.0),)))
    difference = np.abs(np.array(base.images[0], dtype=int) - np.array(strong.images[0], dtype=int)).mean()
    assert difference > 1.0
    # a unit active only for the last 1% of the steps leaves the picture as with weight 0
    assert np.abs(np.array(base.images[0], dtype=int) - np.array(late.images[0], dtype=int)).mean() < difference


def test_two_units_with_guess_mode_and_img2img(control_services):
    units = (control_unit(type="pose", image=pose_map(), preprocess=False, weight=0.8),
             control_unit(type="depth", image=depth_map(), preprocess=False, guess_mode=True, start=0.1, end=0.9))
    result = control_services.runner.run(control(units=units))
    assert [u["model"] for u in result.request.units] == ["tiny-openpose", "tiny-depth"]
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    with pytest.raises(InputError) as error:
        control_services.runner.run(control(units=units, init_image=init, denoise_strength=0.3))
    assert error.value.field == "denoise_strength" and "no denoising step" in str(error.value)
    img2img = control_services.runner.run(control(units=units, init_image=init, denoise_strength=0.34))
    other = control_services.runner.run(control(units=units, init_image=Image.new("RGB", (64, 64), (20, 40, 220)),
                                                denoise_strength=0.34))
    # the init image shapes the result (the tiny VAE is random, so compare runs, not colours)
    assert np.abs(np.array(img2img.images[0], dtype=int) - np.array(other.images[0], dtype=int)).mean() > 1
    record = control_services.history.get(img2img.run_id)
    assert {ref.name for ref in record.inputs} >= {"init_image", "units.1.map"}
    assert "Denoising strength: 0.34" in img2img.infotexts[0]


def test_maps_of_another_size_are_resized_and_another_aspect_is_refused(control_services):
    result = control_services.runner.run(control(units=(control_unit(type="pose", image=pose_map((128, 128)),
                                                                     preprocess=False),)))
    assert any("resized from 128x128 to 64x64" in n for n in result.notices)
    with pytest.raises(InputError) as error:
        control_services.runner.run(control(width=64, height=64, units=(
            control_unit(type="pose", image=pose_map((128, 64)), preprocess=False),)))
    assert error.value.field == "units[0].image" and "aspect" in str(error.value)


@pytest.mark.parametrize(("unit", "field"), [
    (dict(type="normal"), "units[0].type"),
    (dict(weight=3.0), "units[0].weight"),
    (dict(start=0.8, end=0.2), "units[0].start"),
    (dict(image=None), "units[0].image"),
    (dict(colour="red"), "units[0]"),
])
def test_bad_units_name_the_field(control_services, unit, field):
    values = dict(type="pose", image=pose_map(), preprocess=False)
    values.update(unit)
    with pytest.raises(InputError) as error:
        control_services.runner.run(control(units=(control_unit(**values),)))
    assert error.value.field == field
    with pytest.raises(InputError, match="at least one"):
        control_services.runner.run(control(units=()))
    assert control_services.history.count() == 0


def test_missing_controlnet_and_annotators_say_what_to_put_where(services, tmp_path):
    with pytest.raises(ModelError) as error:
        services.runner.run(control())
    assert "ControlNet" in str(error.value) and str(services.registry.controlnet_dir) in str(error.value)
    with pytest.raises(NotFound):
        services.runner.run(control(units=(control_unit(type="pose", image=pose_map(), preprocess=False,
                                                        model="nope"),)))
    preprocessors = Preprocessors(tmp_path / "annotators")
    with pytest.raises(ModelError) as error:
        preprocessors.run("depth", depth_map(), (64, 64))
    assert "depth-anything" in str(error.value) and "Depth-Anything-V2-Small-hf" in str(error.value)
    # asked for OpenPose explicitly, its missing weights are named (auto would use MediaPipe)
    with pytest.raises(ModelError, match="body_pose_model.pth"):
        Preprocessors(tmp_path / "annotators", pose_detector="openpose").run("pose", depth_map(), (64, 64))
    assert services.history.count() == 0


@pytest.fixture(scope="session")
def annotators(tmp_path_factory):
    """Preprocessor weights with random values in the layouts the real downloads have."""
    from controlnet_aux.open_pose.body import bodypose_model
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.hand import handpose_model
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    root = tmp_path_factory.mktemp("annotators")
    (root / "openpose").mkdir()
    torch.manual_seed(0)
    for model, name, strip in ((bodypose_model(), "body_pose_model.pth", True),
                               (handpose_model(), "hand_pose_model.pth", True),
                               (FaceNet(), "facenet.pth", False)):
        state = model.state_dict()
        if strip:  # OpenPose's files name layers without the block prefix controlnet-aux adds
            state = {".".join(k.split(".")[1:]): v for k, v in state.items()}
        torch.save(state, root / "openpose" / name)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                 head_hidden_size=8, reassemble_hidden_size=32)
    DepthAnythingForDepthEstimation(config).save_pretrained(root / "depth-anything")
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(root / "depth-anything")
    return root


def test_preprocessors_load_offline_from_a_folder_and_make_maps(annotators):
    preprocessors = Preprocessors(annotators)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    depth = preprocessors.run("depth", photo, (96, 72))
    assert depth.size == (96, 72) and depth.mode == "RGB"
    values = np.array(depth)
    assert values.min() < 30 and values.max() > 225  # stretched to the full range (then resized)
    assert np.array_equal(values[..., 0], values[..., 1])  # grey
    pose = preprocessors.run("pose", photo, (96, 72))
    assert pose.size == (96, 72) and pose.mode == "RGB"
    assert preprocessors.pose_detector()[0] == "openpose"  # its weights are there, so auto prefers it


def test_preprocessed_units_record_photo_and_map(control_services, annotators):
    control_services.runner.preprocessors = Preprocessors(annotators)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = control_services.runner.run(control(units=(control_unit(type="depth", image=photo),)))
    record = control_services.history.get(result.run_id)
    inputs = control_services.history.load_inputs(record)
    assert np.array_equal(np.array(inputs["units.0.image"]), np.array(photo))
    assert inputs["units.0.map"].size == (64, 64)
    again = control_services.runner.rerun(result.run_id)  # uses the recorded map, no preprocessing
    assert np.array_equal(np.array(again.images[0]), np.array(result.images[0]))


def test_img2img_with_controls_points_to_the_run_it_starts_from(control_services):
    from tests_support import fast_request

    base = control_services.runner.run(fast_request())
    edit = control_services.runner.run(control(init_image=base.images[0], denoise_strength=0.7))
    assert control_services.history.get(edit.run_id).parent_id == base.run_id


def test_pose_hands_and_face_reach_openpose_and_are_recorded(control_services, annotators):
    control_services.runner.preprocessors = Preprocessors(annotators)
    photo = Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    unit = control_unit(type="pose", image=photo, hands=True, face=True)
    result = control_services.runner.run(control(units=(unit,)))
    assert "Module: pose_full" in result.infotexts[0]
    record = control_services.history.get(result.run_id)
    assert record.params["units"][0]["hands"] is True and record.params["units"][0]["face"] is True
    assert control_services.runner.restore(result.run_id).units[0]["hands"] is True


def test_a_unit_recorded_before_hands_and_face_existed_restores(control_services):
    from studio.requests import from_record, to_record

    params, images = to_record(control())
    for recorded in params["units"]:
        del recorded["hands"], recorded["face"]
    restored = from_record(params, images)
    assert restored.units[0]["hands"] is False and restored.units[0]["face"] is False


@pytest.mark.parametrize("key", ["hands", "face", "preprocess", "guess_mode"])
def test_unit_switches_must_be_true_or_false(control_services, key):
    values = dict(type="pose", image=pose_map(), preprocess=False)
    values[key] = "yes"
    with pytest.raises(InputError) as error:
        control_services.runner.run(control(units=(control_unit(**values),)))
    assert error.value.field == f"units[0].{key}"


def test_without_mediapipe_or_openpose_weights_the_message_names_both(tmp_path, monkeypatch):
    """A machine where mediapipe could not be installed (it is absent only there, so it is switched off)."""
    from studio.engine import mediapipe_pose

    monkeypatch.setattr(mediapipe_pose, "available", lambda: False)
    with pytest.raises(ModelError) as error:
        Preprocessors(tmp_path / "annotators").run("pose", depth_map(), (64, 64))
    message = str(error.value)
    assert message.startswith("preprocess: the pose preprocessor needs body_pose_model.pth")
    assert message.count("preprocess:") == 1 and "mediapipe" in message
    with pytest.raises(ModelError, match="MediaPipe pose detector is not installed"):
        Preprocessors(tmp_path / "annotators", pose_detector="mediapipe").run("pose", depth_map(), (64, 64))
