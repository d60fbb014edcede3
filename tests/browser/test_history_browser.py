"""In a real browser: the History tab's layout, and that it stays quiet while idle and during a Re-run."""

import json
import threading
import urllib.request

import pytest
from tests_support import fast_request, wait_for

pytestmark = pytest.mark.browser

COUNT_MUTATIONS_JS = """() => {
  window.__mutations = 0;
  if (!window.__observer) {
    window.__observer = new MutationObserver((records) => { window.__mutations += records.length; });
    window.__observer.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
  }
}"""
RUNNING_ANIMATIONS_JS = "() => document.getAnimations().filter((a) => a.playState === 'running').length"

# Where each picture of a gallery is drawn (object-fit applied) and the box its scroll container shows.
DRAWN_PICTURES_JS = """(selector) => {
  const wrap = document.querySelector(selector + ' .grid-wrap');
  const shown = wrap.getBoundingClientRect();
  return {
    container: {left: shown.left, top: shown.top, right: shown.left + wrap.clientWidth,
                bottom: shown.top + wrap.clientHeight, scrollable: wrap.scrollHeight > wrap.clientHeight + 1},
    pictures: [...document.querySelectorAll(selector + ' img')].map((img) => {
      const box = img.getBoundingClientRect();
      const fit = getComputedStyle(img).objectFit;
      let width = box.width, height = box.height;
      if (fit !== 'fill') {
        const across = box.width / img.naturalWidth, down = box.height / img.naturalHeight;
        const scale = fit === 'cover' ? Math.max(across, down) : fit === 'none' ? 1
          : Math.min(across, down, fit === 'scale-down' ? 1 : Infinity);
        width = img.naturalWidth * scale;
        height = img.naturalHeight * scale;
      }
      const left = box.left + (box.width - width) / 2, top = box.top + (box.height - height) / 2;
      return {left, top, right: left + width, bottom: top + height, fit};
    }),
  };
}"""


def quiet_seconds(page, seconds: float = 2.0) -> int:
    """DOM mutations anywhere on the page over `seconds` (Gradio re-renders on every state change)."""
    page.evaluate(COUNT_MUTATIONS_JS)
    page.wait_for_timeout(seconds * 1000)
    return page.evaluate("() => window.__mutations")


def open_history_and_select(page, run_id: int) -> None:
    page.get_by_role("tab", name="History").click()
    page.locator("#history-refresh").click()
    page.locator("#history-gallery img").first.wait_for()
    page.locator("#history-gallery img").first.click()
    wait_for(lambda: page.locator("#history-selected input").input_value() == str(run_id))
    page.locator("#history-outputs img").first.wait_for()


class HeldRerun:
    """runner.run (what the queue calls for a Re-run) that waits before it starts and after its first report."""

    def __init__(self, runner):
        self.real = runner.run
        self.start, self.first_step = threading.Event(), threading.Event()
        self.reported = threading.Event()

    def __call__(self, request, on_progress=None, **kwargs):
        self.start.wait(60)

        def report(progress):
            on_progress(progress)
            if not self.reported.is_set():
                self.reported.set()
                self.first_step.wait(60)

        return self.real(request, on_progress=report, **kwargs)

    def release(self):
        self.start.set()
        self.first_step.set()


def test_selected_run_is_empty_before_a_selection_and_restore_asks_for_one(page, services):
    services.runner.run(fast_request())
    page.get_by_role("tab", name="History").click()
    selected = page.locator("#history-selected input")
    selected.wait_for()
    assert selected.input_value() == ""
    page.locator("#history-restore").click()
    page.get_by_text("select a run first").first.wait_for()
    # the failed restore's error belongs on the History tab, not on the shared model header
    assert "Error" not in page.locator("#model-select").inner_text()


def test_details_table_starts_with_a_header_then_real_rows(page, services):
    record = services.runner.run(fast_request(prompt="a green triangle"))
    open_history_and_select(page, record.run_id)
    headers = page.locator("#history-details thead th").all_inner_texts()
    assert [text.strip() for text in headers] == ["Setting", "Value"]
    cells = page.locator("#history-details tbody tr").first.locator("td").all_inner_texts()
    first_row = [text.strip() for text in cells]
    assert first_row == ["Run", f"#{record.run_id} (done)"]
    assert "a green triangle" in page.locator("#history-details").inner_text()


def test_outputs_show_the_whole_picture_without_scrolling(page, services):
    # one wide output: the gallery draws a single picture as wide as the column
    record = services.runner.run(fast_request(width=128, height=64))
    open_history_and_select(page, record.run_id)
    image = page.locator("#history-outputs img").first
    wait_for(lambda: image.evaluate("(img) => img.complete && img.naturalWidth > 0"))
    layout = page.evaluate(DRAWN_PICTURES_JS, "#history-outputs")
    box = layout["container"]
    assert not box["scrollable"], layout
    [picture] = layout["pictures"]
    assert picture["right"] - picture["left"] > 100, layout  # drawn at a useful size, not a thumbnail
    assert (picture["left"] >= box["left"] - 1 and picture["right"] <= box["right"] + 1
            and picture["top"] >= box["top"] - 1 and picture["bottom"] <= box["bottom"] + 1), layout


def test_history_tab_stays_quiet_while_idle_and_while_a_rerun_runs(page, services, monkeypatch):
    record = services.runner.run(fast_request())
    open_history_and_select(page, record.run_id)
    # measured: 0-2 mutations in 2 s when idle
    assert quiet_seconds(page) < 50

    held = HeldRerun(services.runner)
    monkeypatch.setattr(services.runner, "run", held)
    try:
        page.locator("#history-rerun").click()
        page.wait_for_timeout(1000)
        # waiting for the device: Gradio's full progress drew a spinner and a ticking timer on each of the
        # eight outputs (about 2000 mutations in 2 s); its minimal one on the progress bar makes about 20
        assert quiet_seconds(page) < 300
        held.start.set()
        assert held.reported.wait(60)
        page.wait_for_timeout(1000)
        # generating: the full progress kept a pulsing border (an infinite CSS animation) on eight outputs
        assert page.evaluate(RUNNING_ANIMATIONS_JS) == 0
        assert quiet_seconds(page) < 50
    finally:
        held.release()
    wait_for(lambda: services.history.count() == 2 and services.history.search()[0].status == "done")
    wait_for(lambda: "re-run" in page.locator("#history-progress").inner_text())
    assert page.locator("#history-selected input").input_value() == str(services.history.search()[0].id)


def call_api(url: str, name: str, data: list) -> tuple[str, str]:
    """One call of a named endpoint over Gradio's HTTP API: (last event name, its data)."""
    request = urllib.request.Request(f"{url}gradio_api/call/{name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{name}/{event_id}", timeout=120) as response:
        lines = response.read().decode().splitlines()
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return events[-1], payloads[-1]


def test_restore_and_rerun_endpoints_take_the_selected_run(live_server, services):
    record = services.runner.run(fast_request())
    filters = ["", "all", "all", False]
    for empty in (None, ""):
        for name, data in (("restore_run", [empty]), ("rerun_run", [empty, *filters])):
            event, payload = call_api(live_server, name, data)
            assert event == "error" and "select a run first" in payload, (name, empty, payload)
    # the box holds text now; callers that send the id as a number keep working
    for run_id in (record.run_id, str(record.run_id)):
        event, payload = call_api(live_server, "restore_run", [run_id])
        assert event == "complete" and f"Restored run #{record.run_id}" in payload
    event, _payload = call_api(live_server, "rerun_run", [record.run_id, *filters])
    assert event == "complete"
    assert services.history.search()[0].rerun_of == record.run_id


def test_a_damaged_output_is_named_when_its_run_is_selected(page, services):
    record = services.runner.run(fast_request())
    path = record.outputs[0].path
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    open_history_and_select(page, record.run_id)
    status = page.locator("#history-status")
    status.get_by_text("is damaged").wait_for()
    text = status.inner_text()
    assert f"run #{record.run_id}: output 1 ({path}) is damaged" in text and "no longer matches its hash" in text
