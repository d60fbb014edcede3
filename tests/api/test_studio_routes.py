"""The queue through HTTP: many A1111 jobs at once run in order; the studio's own endpoints cancel, move, list."""

import json
import threading
import urllib.error
import urllib.request

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
