"""In a real browser: jobs queued from two tabs while one runs, the middle one cancelled in the queue panel."""

import threading

import pytest
from tests_support import fast_request, wait_for

pytestmark = pytest.mark.browser


def test_three_jobs_from_two_tabs_and_the_middle_one_cancelled(page, services, monkeypatch):
    earlier = services.runner.run(fast_request(prompt="an earlier run", seed=9))
    release, real_run, calls = threading.Event(), services.runner.run, []

    def held(request, on_progress=None, **kwargs):
        calls.append(request.prompt)
        first = len(calls) == 1

        def report(progress):
            on_progress(progress)
            if first:
                release.wait(120)

        return real_run(request, on_progress=report, **kwargs)

    monkeypatch.setattr(services.runner, "run", held)
    try:
        page.locator("#txt2img-prompt textarea").fill("the first job")
        page.locator("#txt2img-generate").click()
        wait_for(lambda: services.queue.running is not None)
        # a second tab's job: re-run the earlier run from History
        page.get_by_role("tab", name="History").click()
        page.locator("#history-refresh").click()
        page.locator("#history-gallery img").nth(1).wait_for()  # newest first: the running job, then the earlier
        page.locator("#history-gallery img").nth(1).click()
        wait_for(lambda: page.locator("#history-selected input").input_value() == str(earlier.run_id))
        page.locator("#history-rerun").click()
        wait_for(lambda: services.queue.waiting_count() == 1)
        # and one more from txt2img while the first still runs: it queues, the button is not blocked
        page.get_by_role("tab", name="txt2img").click()
        page.locator("#txt2img-prompt textarea").fill("the third job")
        page.locator("#txt2img-generate").click()
        wait_for(lambda: services.queue.waiting_count() == 2)
        page.locator("#queue-table").get_by_text("the third job").wait_for()
        rows = services.queue.jobs()
        assert [(row["status"], row["mode"]) for row in rows] == [("running", "txt2img"), ("waiting", "txt2img"),
                                                                  ("waiting", "txt2img")]
        middle = rows[1]
        assert middle["prompt"] == "an earlier run"
        page.locator("#queue-job input, #queue-job textarea").first.fill(str(middle["id"]))
        page.locator("#queue-cancel").click()
        page.locator("#queue-status").get_by_text(f"Job #{middle['id']} cancelled").wait_for()
        assert services.queue.waiting_count() == 1
    finally:
        release.set()
    wait_for(lambda: services.queue.running is None and services.queue.waiting_count() == 0)
    wait_for(lambda: services.history.count() == 3 and all(r.status == "done" for r in services.history.search()))
    assert calls == ["the first job", "the third job"]
    prompts = [record.prompt for record in services.history.search()]
    assert prompts == ["the third job", "the first job", "an earlier run"]  # the cancelled re-run never ran
    # the panel follows on its own (a timer), to the end state: two done, the middle one cancelled
    wait_for(lambda: (lambda text: "cancelled" in text and text.count("done") == 2 and "running" not in text)(
        page.locator("#queue-table").inner_text()), timeout=30)
