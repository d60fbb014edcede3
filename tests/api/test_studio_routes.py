"""The queue through HTTP: many A1111 jobs at once run in order; the studio's own endpoints cancel, move, list."""

import json
import threading
import urllib.error
import urllib.request

import pytest
from tests_support import fast_request, wait_for


def call(url: str, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"},
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=180) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class HoldFirst:
    """runner.run that holds the first run at its first step until released."""

    def __init__(self, runner):
        self.real, self.release, self.calls = runner.run, threading.Event(), 0

    def __call__(self, request, on_progress=None, **kwargs):
        self.calls += 1
        first = self.calls == 1

        def report(progress):
            if on_progress is not None:
                on_progress(progress)
            if first:
                self.release.wait(120)

        return self.real(request, on_progress=report, **kwargs)


def test_twenty_api_jobs_at_once_finish_in_order_and_a_cancelled_one_leaves_the_others(server, services,
                                                                                        monkeypatch):
    hold = HoldFirst(services.runner)
    monkeypatch.setattr(services.runner, "run", hold)
    replies = {}

    def submit(seed):
        replies[seed] = call(server, "/sdapi/v1/txt2img", {"prompt": f"job {seed}", "seed": seed, "steps": 2,
                                                            "width": 64, "height": 64, "sampler_name": "Euler"})

    threads = [threading.Thread(target=submit, args=(seed,)) for seed in range(20)]
    for thread in threads:
        thread.start()
    wait_for(lambda: services.queue.waiting_count() == 19, timeout=120)
    status, listed = call(server, "/studio/v1/queue")
    waiting = [job for job in listed["jobs"] if job["status"] == "waiting"]
    assert status == 200 and [job["position"] for job in waiting] == list(range(19))
    victim = waiting[5]
    assert call(server, f"/studio/v1/queue/{victim['id']}/cancel", {}) == (200, {"job": victim["id"],
                                                                               "result": "cancelled"})
    hold.release.set()
    for thread in threads:
        thread.join(180)
    cancelled_seed = int(victim["prompt"].split()[1])
    assert replies[cancelled_seed][0] == 409 and replies[cancelled_seed][1]["error"] == "Cancelled"
    done = {seed: json.loads(reply[1]["info"]) for seed, reply in replies.items() if seed != cancelled_seed}
    assert all(replies[seed][0] == 200 for seed in done) and len(done) == 19
    # in queue order: the job queued earlier has the smaller run id
    order = {job["id"]: int(job["prompt"].split()[1]) for job in listed["jobs"]}
    by_job = [order[job_id] for job_id in sorted(order) if order[job_id] != cancelled_seed]
    assert [done[seed]["run_id"] for seed in by_job] == sorted(done[seed]["run_id"] for seed in by_job)
    records = services.history.search(limit=50)
    assert len(records) == 19 and all(r.status == "done" and r.source == "api" for r in records)
    assert cancelled_seed not in {r.seed for r in records}


def test_moving_a_waiting_job_and_bad_job_numbers(server, services, monkeypatch):
    hold = HoldFirst(services.runner)
    monkeypatch.setattr(services.runner, "run", hold)
    jobs = [services.queue.submit(fast_request(seed=seed)) for seed in range(3)]
    wait_for(lambda: services.queue.running is not None)
    status, moved = call(server, f"/studio/v1/queue/{jobs[2].id}/move", {"position": 0})
    assert status == 200 and [j["id"] for j in moved["jobs"] if j["status"] == "waiting"] == [jobs[2].id, jobs[1].id]
    assert call(server, "/studio/v1/queue/abc/cancel", {})[1]["field"] == "job"
    assert call(server, "/studio/v1/queue/999/cancel", {})[0] == 404
    assert call(server, f"/studio/v1/queue/{jobs[1].id}/move", {"position": -1})[1]["field"] == "position"
    assert call(server, "/studio/v1/queue/clear", {}) == (200, {"cancelled": 2})
    hold.release.set()
    services.queue.wait(jobs[0])


def test_history_list_show_request_and_rerun(server, services):
    first = services.runner.run(fast_request(prompt="a yellow square", seed=42))
    status, listed = call(server, "/studio/v1/history?search=yellow")
    assert status == 200 and [run["run_id"] for run in listed["runs"]] == [first.run_id]
    status, shown = call(server, f"/studio/v1/history/{first.run_id}")
    assert status == 200 and shown["seeds"] == [42] and shown["damaged_files"] == []
    status, restored = call(server, f"/studio/v1/history/{first.run_id}/request")
    assert status == 200 and restored["request"]["seed"] == 42 and restored["request"]["mode"] == "txt2img"
    status, again = call(server, f"/studio/v1/history/{first.run_id}/rerun", {})
    assert status == 200 and again["rerun_of"] == first.run_id and again["source"] == "api"
    assert again["outputs"][0]["sha256"] == services.history.get(first.run_id).outputs[0].sha256  # same pixels
    assert call(server, "/studio/v1/history/123456") [0] == 404
    assert call(server, "/studio/v1/history/99999999999999999999999")[1]["field"] == "run"


def b64_png(image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_generate_in_the_studio_words_for_every_mode(server, services):
    import base64
    import io

    import numpy as np
    from PIL import Image

    from studio.engine.openpose import draw_body_pose, preset_pose
    from studio.micro.tiny import save_tiny_controlnet

    status, reply = call(server, "/studio/v1/generate", {"mode": "txt2img", "prompt": "a red circle", "seed": 8,
                                                         "steps": 2, "width": 64, "height": 64, "sampler": "Euler"})
    assert status == 200 and reply["mode"] == "txt2img" and reply["source"] == "api" and reply["seeds"] == [8]
    same = services.runner.run(fast_request(seed=8, prompt="a red circle"))
    image = Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))).convert("RGB")
    assert np.array_equal(np.array(image), np.array(same.images[0]))
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    status, reply = call(server, "/studio/v1/generate", {"mode": "inpaint", "prompt": "x", "seed": 1, "steps": 2,
                                                         "image": b64_png(picture), "mask": b64_png(mask),
                                                         "mask_blur": 0, "sampler": "Euler"})
    assert status == 200 and reply["mode"] == "inpaint"
    out = np.array(Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))).convert("RGB"))
    assert np.array_equal(out[:, 32:], np.array(picture)[:, 32:])
    save_tiny_controlnet(services.registry.controlnet_dir / "tiny-openpose", seed=1)
    pose = draw_body_pose(preset_pose("standing", 64, 64), 64, 64)
    status, reply = call(server, "/studio/v1/generate", {
        "mode": "control", "prompt": "a figure", "seed": 2, "steps": 2, "width": 64, "height": 64, "sampler": "Euler",
        "units": [{"type": "pose", "image": b64_png(pose), "preprocess": False, "weight": 0.7}]})
    assert status == 200 and reply["mode"] == "control"
    assert services.history.get(reply["run_id"]).params["units"][0]["weight"] == 0.7


@pytest.mark.parametrize(("body", "field"), [
    ({"mode": "paint"}, "mode"), ({"mode": "txt2img", "colour": "red"}, "colour"),
    ({"mode": "txt2img", "steps": "many"}, "steps"), ({"mode": "inpaint", "image": "bm90"}, "image"),
    ({"mode": "control", "units": [{"type": "pose", "weight": 9}]}, "units[0].image"),
    ({"mode": "control", "units": "x"}, "units"),
])
def test_generate_refuses_what_it_cannot_run_naming_the_field(server, services, body, field):
    status, reply = call(server, "/studio/v1/generate", body)
    assert status == 422 and reply["field"] == field, reply
    assert services.history.count() == 0


def test_the_apis_have_an_openapi_page(server):
    status, spec = call(server, "/studio/openapi.json")
    assert status == 200 and "/sdapi/v1/txt2img" in spec["paths"] and "/studio/v1/generate" in spec["paths"]
    with urllib.request.urlopen(f"{server}/studio/docs", timeout=30) as page:
        assert page.status == 200 and b"swagger" in page.read().lower()
