"""Benchmark of the browser's cost on the History tab (not a test: numbers go to a JSON file).

Drives Debian's chromium (headless, the browser tests' flags) against a live studio on the tiny
built-in-code model and measures, on the txt2img tab and on History:
- idle: CPU seconds of the browser's processes (utime + stime from /proc) over --seconds, with a
  few runs in the history, the list loaded and one run selected;
- during a run: the same window while a Generate (txt2img) or a Re-run (History) waits to start
  (queued, or loading its model) and while it samples. The run is held there so the window is the
  same length whatever the machine's speed; requestAnimationFrame callbacks and DOM mutations in
  the window say what the page itself is doing (CSS animations cost paint time but neither of those);
- the same request generated from its tab and re-run from History: wall seconds until the tab
  shows the result, and the server's own sampling seconds (the browser competes with it for CPU).

Usage: .venv/bin/python bench/history_tab_cpu.py [--out bench/results/history_tab_cpu.json] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from studio.app import build
from studio.micro.tiny import save_tiny_model
from studio.requests import Txt2ImgRequest
from studio.settings import Settings
from studio.ui.server import launch

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
TICKS = os.sysconf("SC_CLK_TCK")

# Counts what the page does; installed before Gradio's own scripts run.
PROBE_JS = r"""
window.__probe = {raf: 0, mutations: 0};
const rawRaf = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => rawRaf((t) => { window.__probe.raf++; callback(t); });
new MutationObserver((records) => { window.__probe.mutations += records.length; })
  .observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""
RUNNING_ANIMATIONS_JS = "() => document.getAnimations().filter((a) => a.playState === 'running').length"


def browser_pids() -> list[int]:
    """Chromium processes started under this process (Playwright's driver is their parent)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    found, todo = [], list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("chrom"):
                found.append(pid)
        except OSError:
            pass
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended took its time with it; the window is then an underestimate
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def window(page, seconds: float) -> dict:
    page.evaluate("() => { window.__probe.raf = 0; window.__probe.mutations = 0; }")
    pids = browser_pids()
    start = cpu_seconds(pids)
    time.sleep(seconds)
    probe = page.evaluate("() => window.__probe")
    return {"cpu_s": round(cpu_seconds(pids) - start, 3), "raf_per_s": round(probe["raf"] / seconds, 1),
            "dom_mutations_per_s": round(probe["mutations"] / seconds, 1),
            "running_css_animations": page.evaluate(RUNNING_ANIMATIONS_JS)}


class HeldRuns:
    """Wraps runner.run so a run can be paused before it starts or after its first progress report."""

    def __init__(self, runner):
        self.runner, self.real = runner, runner.run
        self.hold = None
        self.reached, self.resume = threading.Event(), threading.Event()
        runner.run = self.run

    def run(self, request, on_progress=None, *args, **kwargs):
        if self.hold is None or on_progress is None:
            return self.real(request, on_progress, *args, **kwargs)
        if self.hold == "start":
            self.reached.set()
            self.resume.wait(120)
            return self.real(request, on_progress, *args, **kwargs)
        first = []

        def report(progress):
            on_progress(progress)
            if not first:
                first.append(progress)
                self.reached.set()
                self.resume.wait(120)

        return self.real(request, report, *args, **kwargs)

    def arm(self, stage: str):
        self.hold = stage
        self.reached.clear()
        self.resume.clear()

    def release(self):
        self.hold = None
        self.resume.set()


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not get there in time")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/history_tab_cpu.json"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=6, help="runs in the history before the page opens")
    parser.add_argument("--steps", type=int, default=40, help="steps of the timed generate / re-run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", default_model="tiny", device="cpu",
                            annotators_dir=tmp / "annotators")
        services = build(settings)
        services.registry.add(str(save_tiny_model(tmp / "tiny", seed=0)), name="tiny")
        for index in range(args.runs):
            services.runner.run(Txt2ImgRequest(prompt=f"a red circle, run {index}", steps=2, width=64, height=64,
                                               seed=index, sampler="Euler"))
        timed = Txt2ImgRequest(prompt="a blue square at the top", steps=args.steps, width=128, height=128, seed=7,
                               sampler="Euler")
        timed_id = services.runner.run(timed).run_id
        held = HeldRuns(services.runner)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            settings.port = sock.getsockname()[1]
        demo, url = launch(services, block=False)
        results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                               "load_average_at_start": os.getloadavg()[0], "python": platform.python_version()},
                   "seconds": args.seconds, "runs_in_history": args.runs + 1}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                context.add_init_script(PROBE_JS)
                page = context.new_page()
                page.set_default_timeout(120_000)
                page.goto(url)
                page.wait_for_selector("body[data-studio-shortcuts=ready]", state="attached")
                history_tab = page.get_by_role("tab", name="History")
                txt2img_tab = page.get_by_role("tab", name="txt2img")
                progress_of = {"txt2img": page.locator("#txt2img-progress"),
                               "history": page.locator("#history-progress")}

                # the timed request in both tabs: History selects it, Restore puts it into txt2img
                history_tab.click()
                page.locator("#history-refresh").click()
                page.locator("#history-gallery img").first.wait_for()
                page.locator("#history-gallery img").first.click()
                wait_until(lambda: page.locator("#history-selected input").input_value() == str(timed_id))
                page.locator("#history-restore").click()
                wait_until(lambda: page.locator("#txt2img-prompt textarea").input_value() == timed.prompt)
                time.sleep(1)
                results["txt2img_idle"] = window(page, args.seconds)
                history_tab.click()
                time.sleep(1)
                results["history_idle"] = window(page, args.seconds)

                def held_window(tab, button: str, stage: str) -> dict:
                    (history_tab if tab == "history" else txt2img_tab).click()
                    time.sleep(1)
                    count = services.history.count()
                    held.arm(stage)
                    page.locator(button).click()
                    if not held.reached.wait(120):
                        raise TimeoutError("the run did not start")
                    time.sleep(0.5)
                    measured = window(page, args.seconds)
                    held.release()
                    wait_until(lambda: services.history.count() > count
                               and services.history.search()[0].status == "done"
                               and f"#{count + 1}" in progress_of[tab].inner_text())
                    return measured

                for stage, label in (("start", "waiting"), ("first_step", "sampling")):
                    results[f"txt2img_generate_{label}"] = held_window("txt2img", "#txt2img-generate", stage)
                    results[f"history_rerun_{label}"] = held_window("history", "#history-rerun", stage)

                def timed_run(tab, button: str) -> tuple[float, float]:
                    (history_tab if tab == "history" else txt2img_tab).click()
                    time.sleep(1)
                    count = services.history.count()
                    start = time.perf_counter()
                    page.locator(button).click()
                    wait_until(lambda: f"#{count + 1}" in progress_of[tab].inner_text())
                    wall = time.perf_counter() - start
                    return wall, services.history.search()[0].timings["sample_s"]

                walls: dict[str, list] = {"generate_from_txt2img": [], "rerun_from_history": []}
                samples: dict[str, list] = {"generate_from_txt2img": [], "rerun_from_history": []}
                for _ in range(args.repeats):  # alternated, so a noisy neighbour hits both alike
                    for key, tab, button in (("generate_from_txt2img", "txt2img", "#txt2img-generate"),
                                             ("rerun_from_history", "history", "#history-rerun")):
                        wall, sample = timed_run(tab, button)
                        walls[key].append(wall)
                        samples[key].append(sample)
                results["same_request"] = {
                    "steps": args.steps, "size": 128, "repeats": args.repeats,
                    **{f"{key}_wall_s": round(statistics.median(values), 3) for key, values in walls.items()},
                    **{f"{key}_sample_s": round(statistics.median(values), 3) for key, values in samples.items()}}
                browser.close()
        finally:
            demo.close()
            services.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
