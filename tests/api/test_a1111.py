"""The AUTOMATIC1111-compatible API, driven by the real `webuiapi` client and raw HTTP against a live server."""

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import webuiapi
from PIL import Image
from tests_support import fast_request, free_port, wait_for

from studio.engine.openpose import draw_body_pose, preset_pose
from studio.micro.tiny import save_tiny_controlnet


@pytest.fixture
def client(server, services):
    return webuiapi.WebUIApi(host="127.0.0.1", port=services.settings.port, sampler="Euler", steps=2)


def post(url: str, path: str, body, auth: str | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(f"{url}/sdapi/v1/{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def get(url: str, path: str, auth: str | None = None):
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    request = urllib.request.Request(f"{url}/sdapi/v1/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_txt2img_through_webuiapi_is_a_history_row_with_the_same_pixels(client, services):
    result = client.txt2img(prompt="a red circle", negative_prompt="blurry", seed=1234, width=64, height=64,
                            batch_size=2, cfg_scale=6.5)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    info = result.info
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235] and info["sd_model_name"] == "tiny"
    assert len(info["infotexts"]) == 2 and "Seed: 1234" in info["infotexts"][0] and info["ignored"] == []
    assert result.parameters["prompt"] == "a red circle"  # the request echoed
    record = services.history.get(info["run_id"])
    assert (record.status, record.source, record.mode, record.seeds) == ("done", "api", "txt2img", [1234, 1235])
    assert "Seed: 1234" in result.images[0].info["parameters"]  # the PNG carries its infotext
    same = services.runner.run(fast_request(prompt="a red circle", negative_prompt="blurry", seed=1234,
                                            sampler="Euler", cfg_scale=6.5, batch_size=2))
    for api_image, studio_image in zip(result.images, same.images):
        assert np.array_equal(np.array(api_image.convert("RGB")), np.array(studio_image))


def test_img2img_with_a_mask_keeps_the_unmasked_pixels_exactly(client, services):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 32, 40))
    result = client.img2img(images=[picture], mask_image=mask, prompt="a blue square", seed=3, width=64, height=64,
                            mask_blur=0, inpainting_fill=1, inpaint_full_res=False, denoising_strength=1.0,
                            steps=2)
    out = np.array(result.images[0].convert("RGB")).astype(int)
    inside = np.array(mask) > 0
    assert np.array_equal(out[~inside], np.array(picture).astype(int)[~inside])
    assert (out[inside] != np.array(picture).astype(int)[inside]).any()
    record = services.history.get(result.info["run_id"])
    assert record.mode == "inpaint" and record.params["masked_content"] == "original"
    assert record.params["inpaint_area"] == "whole" and record.source == "api"
    plain = client.img2img(images=[picture], prompt="x", seed=4, width=64, height=64, denoising_strength=0.5)
    assert plain.images[0].size == (64, 64) and services.history.get(plain.info["run_id"]).status == "done"


def test_options_and_models_choose_the_checkpoint(client, services, tiny_model_dir, tmp_path):
    from studio.micro.tiny import save_tiny_model

    services.registry.add(str(save_tiny_model(tmp_path / "other", seed=9)), name="other")
    titles = client.util_get_model_names()
    assert any(title.startswith("tiny [") for title in titles) and any(t.startswith("other [") for t in titles)
    models = {m["model_name"]: m for m in client.get_sd_models()}
    assert len(models["other"]["sha256"]) == 64 and models["other"]["hash"] == models["other"]["sha256"][:10]
    client.set_options({"sd_model_checkpoint": models["other"]["title"]})
    assert client.get_options()["sd_model_checkpoint"].startswith("other [")
    result = client.txt2img(prompt="x", seed=1, width=64, height=64)
    assert result.info["sd_model_name"] == "other"
    assert services.history.get(result.info["run_id"]).model_name == "other"


def test_what_sillytavern_asks_in_order(client, server, services):
    """options, sd-models, samplers, schedulers, upscalers, then a txt2img polled with progress, then interrupt."""
    assert "sd_model_checkpoint" in client.get_options()
    assert client.get_sd_models() and {"name": "Euler", "aliases": [], "options": {}} in client.get_samplers()
    assert {s["name"] for s in client.get_schedulers()} >= {"automatic", "karras"}
    assert {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4} in \
        get(server, "upscalers")[1]
    assert {"name": "Latent"} in get(server, "latent-upscale-modes")[1]
    # a fresh data folder has no styles, and only the embedded LoRA
    assert get(server, "prompt-styles") == (200, [])
    code, loras = get(server, "loras")
    assert code == 200 and [lora["name"] for lora in loras] == ["micro-framed"]
    hold, seen = threading.Event(), []
    real_run = services.runner.run

    def held(request, on_progress=None, *args, **kwargs):
        def report(progress):
            on_progress(progress)
            if progress.step == 2:
                hold.wait(60)

        return real_run(request, report, *args, **kwargs)

    services.runner.run = held
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(r=client.txt2img(prompt="x", seed=2, width=64,
                                                                             height=64, steps=6)))
    thread.start()
    wait_for(lambda: seen.append(client.get_progress()) or seen[-1]["state"]["sampling_step"] == 2)
    progress = seen[-1]
    assert 0 < progress["progress"] < 1 and progress["state"]["job_count"] == 1
    assert progress["state"]["sampling_steps"] == 6 and "step 2/6" in progress["textinfo"]
    assert progress["current_image"] and Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    client.interrupt()
    hold.set()
    thread.join(60)
    assert outcome["r"].info["status"] == "interrupted"
    assert services.history.get(outcome["r"].info["run_id"]).status == "interrupted"
    assert client.get_progress()["state"]["job_count"] == 0


@pytest.mark.parametrize(("body", "field"), [
    ({"cfg_scale": float("nan")}, "cfg_scale"), ({"cfg_scale": "seven"}, "cfg_scale"),
    ({"steps": 0}, "steps"), ({"steps": [20]}, "steps"), ({"steps": 2.5}, "steps"),
    ({"width": 100}, "width"), ({"width": 10**9}, "width"), ({"seed": "abc"}, "seed"),
    ({"prompt": "a \ud800 b"}, "prompt"), ({"prompt": 5}, "prompt"), ({"negative_prompt": {}}, "negative_prompt"),
    ({"sampler_name": "Euler z"}, "sampler_name"), ({"sampler_name": ["Euler"]}, "sampler_name"),
    ({"n_iter": 1000}, "n_iter"), ({"batch_size": True}, "batch_size"),
    ({"override_settings": {"sd_model_checkpoint": "nope"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": []}, "override_settings"), ({"prompt": "x" * (10 * 2**20)}, "prompt"),
])
def test_bad_txt2img_values_are_422_naming_the_field(server, services, body, field):
    status, reply = post(server, "txt2img", {"steps": 2, "width": 64, "height": 64, **body})
    assert status == 422 and reply["field"] == field and reply["detail"].startswith(f"{field}: "), reply
    assert "Traceback" not in json.dumps(reply) and services.history.count() == 0


# every txt2img field the studio honours, and values it must refuse there
HONOURED = {"prompt": "text", "negative_prompt": "text", "seed": "whole", "steps": "whole", "cfg_scale": "number",
            "width": "whole", "height": "whole", "batch_size": "whole", "n_iter": "whole",
            "sampler_name": "name", "sampler_index": "name", "scheduler": "name", "override_settings": "object",
            "alwayson_scripts": "object"}
BAD = {"text": [[], {}, 5, "a\ud800"], "whole": [[], {}, "x", 2.5, float("nan"), 10**12, True],
       "number": [[], {}, "x", float("nan"), float("inf"), 10**12, True], "name": [[], {}, 5, "no such thing"],
       "object": [[], "x", 5]}


def test_every_honoured_txt2img_field_refuses_bad_values_by_name(server, services):
    problems, sent = [], 0
    for name, kind in HONOURED.items():
        for value in BAD[kind]:
            status, reply = post(server, "txt2img", {"steps": 2, "width": 64, "height": 64, name: value})
            sent += 1
            named = reply.get("field") if isinstance(reply, dict) else None
            if status != 422 or not named or not (named == name or named.startswith(name)):
                problems.append(f"{name}={value!r:.30}: {status} {str(reply)[:160]}")
    assert not problems, "\n".join(problems)
    assert sent >= 60 and services.history.count() == 0
    assert post(server, "txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64})[0] == 200


def test_the_other_endpoints_answer_as_a1111_does(server, client, services):
    assert get(server, "sd-vae") == (200, [])
    assert get(server, "embeddings") == (200, {"loaded": {}, "skipped": {}})
    assert get(server, "scripts")[1]["txt2img"] == ["controlnet"]
    status, memory = get(server, "memory")
    assert status == 200 and memory["ram"]["total"] > memory["ram"]["free"] > 0
    assert get(server, "server-version")[1]["version"].startswith("studio ")
    assert post(server, "refresh-checkpoints", {}) == (200, None)
    assert post(server, "skip", {}) == (200, None) and post(server, "interrupt", {}) == (200, None)
    assert client.get_cmd_flags()["api"] is True


def test_bodies_that_are_not_requests_are_refused(server, services):
    assert post(server, "txt2img", b"{not json")[0] == 422
    assert post(server, "txt2img", b"[1, 2]")[1]["field"] == "body"
    status, reply = post(server, "img2img", {"init_images": ["bm90IGFuIGltYWdl"], "width": 64, "height": 64})
    assert status == 422 and reply["field"] == "init_images[0]"
    status, reply = post(server, "img2img", {"init_images": [], "width": 64, "height": 64})
    assert status == 422 and reply["field"] == "init_images"
    services.settings.api_max_body_mb = 1  # read per call: the cap applies at once
    status, reply = post(server, "txt2img", {"prompt": "x" * (2 * 2**20)})
    assert status == 413 and reply["field"] == "body" and "STUDIO_API_MAX_BODY_MB" in reply["detail"]
    assert post(server, "txt2img", {"prompt": "x", "steps": 2, "width": 64, "height": 64})[0] == 200


def test_a_controlnet_unit_in_alwayson_scripts_runs_as_a_control_run(client, services):
    save_tiny_controlnet(services.registry.controlnet_dir / "tiny-openpose", seed=1)
    pose = draw_body_pose(preset_pose("standing", 64, 64), 64, 64)
    unit = webuiapi.ControlNetUnit(image=pose, module="none", model="tiny-openpose", weight=0.8, guidance_end=0.9)
    # a dict of our own: webuiapi writes the units into its shared default alwayson_scripts otherwise
    result = client.txt2img(prompt="a figure", seed=6, width=64, height=64, controlnet_units=[unit],
                            alwayson_scripts={})
    record = services.history.get(result.info["run_id"])
    assert record.mode == "control" and record.status == "done"
    [recorded] = record.params["units"]
    assert (recorded["type"], recorded["model"], recorded["weight"], recorded["end"]) == ("pose", "tiny-openpose",
                                                                                          0.8, 0.9)
    assert recorded["preprocess"] is False


def test_png_info_reads_the_parameters_back(client, services):
    result = client.txt2img(prompt="a green triangle", seed=77, width=64, height=64)
    info = client.png_info(result.images[0])
    assert "a green triangle" in info.info and info.parameters["seed"] == 77


def test_the_api_asks_for_a_password_when_one_is_set(services, tmp_path):
    from studio.errors import InputError
    from studio.ui.server import launch

    services.settings.api_auth = "artist:secret"
    services.settings.port = free_port()
    demo, url = launch(services, block=False)
    try:
        url = url.rstrip("/")
        assert get(url, "samplers")[0] == 401
        assert get(url, "samplers", auth="artist:wrong")[0] == 401
        assert get(url, "samplers", auth="artist:secret")[0] == 200
        assert "secret" not in json.dumps(get(url, "cmd-flags", auth="artist:secret")[1])
    finally:
        demo.close()
    services.settings.api_auth, services.settings.listen = None, True
    with pytest.raises(InputError, match="--api-auth"):
        launch(services, block=False)
