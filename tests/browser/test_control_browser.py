"""In a real browser: upload a ready pose map to a control unit and generate with it."""

import numpy as np
import pytest
from tests_support import wait_for

from studio.engine.openpose import draw_body_pose, preset_pose
from studio.micro.tiny import save_tiny_controlnet

pytestmark = pytest.mark.browser


@pytest.fixture
def services(services):
    save_tiny_controlnet(services.registry.controlnet_dir / "tiny-openpose", seed=1)
    return services


def test_upload_a_pose_map_and_generate(page, services, tmp_path):
    pose = draw_body_pose(preset_pose("arms up", 64, 64), 64, 64)
    path = tmp_path / "pose.png"
    pose.save(path)
    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#control-unit0-preprocess input").uncheck()
    page.locator("#control-unit0-image input[type=file]").set_input_files(str(path))
    # the upload is done when the component shows the picture; clicking earlier sends no image
    page.wait_for_selector("#control-unit0-image img", timeout=30_000)
    page.locator("#control-unit0-detect").click()
    page.wait_for_selector("#control-unit0-map img")
    page.locator("#control-prompt textarea").fill("a green figure in the centre")
    page.locator("#control-generate").click()
    wait_for(lambda: services.history.count() == 1 and services.history.search()[0].status == "done")
    record = services.history.search()[0]
    assert record.mode == "control" and record.params["units"][0]["model"] == "tiny-openpose"
    used = services.history.load_inputs(record)["units.0.map"]
    assert np.array_equal(np.array(used), np.array(pose))
    page.wait_for_selector("#control-gallery img")
    assert "ControlNet 0" in page.locator("#control-info textarea").input_value()


def test_detect_the_pose_in_a_photo_offline_and_generate(page, services, tmp_path):
    """No OpenPose weights anywhere: the pose comes from MediaPipe's bundled model."""
    from PIL import Image
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).resize((256, 256)).save(path)
    page.get_by_role("tab", name="ControlNet").click()
    page.locator("#control-unit0-image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#control-unit0-image img", timeout=30_000)
    page.locator("#control-unit0-detect").click()
    page.get_by_text("pose found by MediaPipe").first.wait_for()
    page.wait_for_selector("#control-unit0-map img")
    page.locator("#control-prompt textarea").fill("a figure")
    page.locator("#control-generate").click()
    wait_for(lambda: services.history.count() == 1 and services.history.search()[0].status == "done")
    record = services.history.search()[0]
    assert record.params["units"][0]["preprocess"] is True
    used = np.array(services.history.load_inputs(record)["units.0.map"])
    assert used.max() > 100 and (used.max(axis=-1) > 50).mean() < 0.5  # a skeleton on black, not a photo
