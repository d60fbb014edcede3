"""Shared widgets: the generation settings panel built from the request spec, progress, errors.

Handlers receive widget values as a dict keyed by component (never by position), so adding a
widget never shifts the others.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from studio.errors import NotFound
from studio.requests import CONTROL_UNIT_SPEC, Txt2ImgRequest, field_spec
from studio.ui.guard import guarded, name_input, user_error

RANDOM_SEED = -1


def spec_widget(meta: dict, default, kind: str | None = None, **kwargs):
    """The widget a field's spec describes: a slider for a range, a radio (or dropdown) for choices, a checkbox."""
    info = meta.get("help") or None
    if meta.get("choices"):
        labels = meta.get("choice_labels") or meta["choices"]
        widget = gr.Dropdown if kind == "dropdown" else gr.Radio
        return widget(list(zip(labels, meta["choices"])), value=default, label=meta["label"], info=info, **kwargs)
    if meta.get("min") is not None:
        return gr.Slider(minimum=meta["min"], maximum=meta["max"], step=meta["step"], value=default,
                         label=meta["label"], info=info, **kwargs)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=meta["label"], info=info, **kwargs)
    raise ValueError(f"no widget for a field like {meta['label']!r}")


def field_widget(cls: type, name: str, value=None, kind: str | None = None, **kwargs):
    """The widget of a request field, its label, range or choices and default read from the request spec."""
    default = value if value is not None else next(f.default for f in dataclasses.fields(cls) if f.name == name)
    return spec_widget(field_spec(cls, name), default, kind, **kwargs)


def unit_widget(key: str, value=None, **kwargs):
    """The widget of a control unit setting, from CONTROL_UNIT_SPEC."""
    meta = CONTROL_UNIT_SPEC[key]
    return spec_widget(meta, meta["default"] if value is None else value, **kwargs)


@dataclass
class GenerationPanel:
    """The txt2img settings every generating tab shares, keyed by request field name."""

    fields: dict[str, gr.components.Component]
    generate: gr.Button
    interrupt: gr.Button
    reuse_seed: gr.Button
    random_seed: gr.Button
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> set:
        return set(self.fields.values())

    def values(self, data: dict) -> dict[str, Any]:
        """Request field values from a handler's {component: value} dict."""
        out = {name: data[component] for name, component in self.fields.items() if component in data}
        for name in ("steps", "width", "height", "seed", "batch_size", "batch_count", "hr_second_pass_steps",
                     "hr_resize_x", "hr_resize_y"):
            if out.get(name) is not None:
                out[name] = int(out[name])
        for name in ("model", "vae"):
            if name in out and out[name] in ("", "Automatic", None):
                out[name] = None
        return out

    def updates(self, request) -> dict:
        """Widget values that show a request (Restore)."""
        result = {}
        for name, component in self.fields.items():
            if hasattr(request, name):
                value = getattr(request, name)
                if name == "vae" and value is None:
                    value = "Automatic"
                if name == "model" and value is None:
                    continue
                if isinstance(value, tuple):  # a multiselect (styles) takes a list; a tuple reads as one choice
                    value = list(value)
                result[component] = value
        return result


def prompt_boxes(prefix: str) -> tuple[gr.Textbox, gr.Textbox]:
    prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt (Ctrl+Enter to generate)",
                        elem_id=f"{prefix}-prompt", elem_classes=["studio-prompt"])
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}-negative")
    return prompt, negative


def generation_panel(prefix: str, model: gr.Dropdown, vae: gr.Dropdown, native_size: int,
                     prompt: gr.Textbox, negative: gr.Textbox, styles: gr.Dropdown | None = None,
                     show_size: bool = True) -> GenerationPanel:
    """Sampler, steps, size, CFG, seed and batch widgets (the A1111 txt2img set)."""
    cls = Txt2ImgRequest
    with gr.Row():
        sampler = field_widget(cls, "sampler", kind="dropdown", elem_id=f"{prefix}-sampler")
        karras = field_widget(cls, "karras", elem_id=f"{prefix}-karras")
        steps = field_widget(cls, "steps", elem_id=f"{prefix}-steps")
    with gr.Row(visible=show_size):
        width = field_widget(cls, "width", value=native_size, elem_id=f"{prefix}-width")
        height = field_widget(cls, "height", value=native_size, elem_id=f"{prefix}-height")
    with gr.Row():
        batch_count = field_widget(cls, "batch_count", elem_id=f"{prefix}-batch-count")
        batch_size = field_widget(cls, "batch_size", elem_id=f"{prefix}-batch-size")
    cfg = field_widget(cls, "cfg_scale", elem_id=f"{prefix}-cfg")
    with gr.Row(equal_height=True):
        seed = gr.Number(value=RANDOM_SEED, label="Seed", precision=0, elem_id=f"{prefix}-seed", scale=4,
                         info="-1 draws a random seed")
        random_seed = gr.Button("Random seed", size="sm", scale=1, elem_id=f"{prefix}-random-seed")
        reuse_seed = gr.Button("Reuse last seed", size="sm", scale=1, elem_id=f"{prefix}-reuse-seed")
    fields = dict(prompt=prompt, negative_prompt=negative, model=model, vae=vae, sampler=sampler, karras=karras,
                  steps=steps, batch_count=batch_count, batch_size=batch_size, cfg_scale=cfg, seed=seed)
    if show_size:
        fields.update(width=width, height=height)
    if styles is not None:
        fields["styles"] = styles
    for name, component in fields.items():
        # empty model/VAE means the default; every other setting must be given
        name_input(component, name, empty_ok=True if name in ("model", "vae") else None)
    return GenerationPanel(fields, generate=None, interrupt=None, reuse_seed=reuse_seed, random_seed=random_seed)


def result_widgets(prefix: str):
    """Progress bar, live preview, results gallery and the parameters of the selected image."""
    progress = gr.HTML(progress_html(0, "idle"), elem_id=f"{prefix}-progress")
    preview = gr.Image(label="Live preview", type="pil", format="png", interactive=False, height=192,
                       elem_id=f"{prefix}-preview")
    gallery = gr.Gallery(label="Results", format="png", type="filepath", columns=4, elem_id=f"{prefix}-gallery",
                         object_fit="contain", height="auto")
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{prefix}-info",
                      buttons=["copy"])
    return progress, preview, gallery, info


def gallery_items(result) -> list[tuple[str, str]]:
    return [(str(ref.path), f"seed {ref.seed}") for ref in result.outputs]


def last_run_state(result) -> dict:
    """What the tab remembers of its last run: seeds, parameters and paths of every image."""
    return {"run_id": result.run_id, "seeds": result.seeds, "infotexts": result.infotexts,
            "paths": [str(ref.path) for ref in result.outputs], "selected": 0}


def selected_image(state: dict | None):
    """The result image the artist selected in a tab's gallery (the first one by default)."""
    from PIL import Image

    if not state or not state.get("paths"):
        return None
    with Image.open(state["paths"][state.get("selected", 0)]) as image:
        image.load()
        return image


def wire_results(services, start_request, generate, interrupt, panel, outputs: dict, api_name: str,
                 more: tuple = ()):
    """Connect Generate/Interrupt/gallery selection/seed buttons of a generating tab.

    start_request: {component: value} -> request. outputs: progress, preview, gallery, info, last.
    more: other (button, start_request, inputs, api_name) that queue a job into the same results (a plot).
    Generate queues the job (a press while another job runs waits its turn, it does not block);
    Interrupt cancels this tab's job, or stops it when it is running.
    """
    progress, preview, gallery, info, last = (outputs[k] for k in ("progress", "preview", "gallery", "info", "last"))
    jobs_of_tab = gr.State([])  # this tab's jobs in this browser session, oldest first

    def on_generate(data: dict, start_request=start_request):
        job = services.queue.submit(start_request(data), "ui")
        yield {jobs_of_tab: [*(data[jobs_of_tab] or []), job.id][-20:]}
        for kind, payload in follow_job(services.queue, job, progress, preview):
            if kind == "progress":
                yield payload
                continue
            result = payload
            for notice in result.notices:
                gr.Info(notice)
            yield {gallery: gallery_items(result), info: result.infotexts[0] if result.infotexts else "",
                   last: last_run_state(result),
                   progress: progress_html(1, f"run #{result.run_id} {result.status} in {result.duration_s:.1f} s")}

    # no concurrency limit here: the job queue serialises the device work, so a second press queues
    # trigger_mode "multiple": a press while this tab's job runs queues another (Gradio ignores it otherwise)
    for button, start, inputs, name in ((generate, start_request, set(), api_name), *more):
        button.click(guarded(functools.partial(on_generate, start_request=start)),
                     inputs=panel.inputs | set(panel.extra.values()) | set(inputs) | {jobs_of_tab},
                     outputs=[gallery, info, last, progress, preview, jobs_of_tab], concurrency_limit=None,
                     trigger_mode="multiple",
                     # Gradio's progress on every output keeps the browser busy (spinners, timers, pulsing
                     # borders) while the run needs the CPU; the tab's own progress bar says enough
                     show_progress="minimal", show_progress_on=progress, api_name=name)

    def on_interrupt(job_ids):
        """Stop this tab's running job; with none running, cancel its newest waiting one."""
        job_ids = job_ids or []
        running = services.queue.running
        targets = [running.id] if running is not None and running.id in job_ids else list(reversed(job_ids))
        for job_id in targets:
            try:
                services.queue.cancel(job_id)
                return
            except NotFound:  # finished already
                continue

    interrupt.click(on_interrupt, inputs=jobs_of_tab, queue=False, api_name=False)

    def on_select(state, event: gr.SelectData):
        if not state:
            return gr.update(), state
        state = dict(state, selected=event.index)
        return state["infotexts"][event.index], state

    gallery.select(on_select, inputs=last, outputs=[info, last], api_name=False)

    def reuse(state):
        if not state:
            return gr.update()
        return state["seeds"][state.get("selected", 0)]

    panel.reuse_seed.click(reuse, inputs=last, outputs=panel.fields["seed"], api_name=False)
    panel.random_seed.click(lambda: RANDOM_SEED, outputs=panel.fields["seed"], api_name=False)


def tab_header(prefix: str):
    """The top row of a generating tab: prompt and negative prompt, Generate and Interrupt."""
    with gr.Row():
        with gr.Column(scale=5):
            prompt, negative = prompt_boxes(prefix)
        with gr.Column(scale=1, min_width=180):
            generate, interrupt = action_buttons(prefix)
    return prompt, negative, generate, interrupt


def action_buttons(prefix: str) -> tuple[gr.Button, gr.Button]:
    generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}-generate",
                         elem_classes=["studio-generate"])
    interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{prefix}-interrupt")
    return generate, interrupt


def progress_html(fraction: float, message: str) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="studio-progress"><div class="studio-progress-bar" style="width:{percent:.0f}%"></div>'
            f'<span>{html.escape(message)}</span></div>')


def follow_job(job_queue, job, progress: gr.components.Component,
               preview: gr.components.Component | None) -> Iterator[tuple[str, Any]]:
    """UI updates while a queued job waits and runs: ("progress", {component: value}), then ("result", result).

    Errors of the run are raised here as gr.Error; a job cancelled before it ran ends with a
    progress line saying so and no result.
    """
    updates: queue.Queue = queue.Queue()
    job.listeners.append(updates.put)
    last_wait = None
    while not job.done.is_set():
        try:
            items = [updates.get(timeout=0.5)]
        except queue.Empty:
            if job.status == "waiting":
                ahead = next((row["position"] for row in job_queue.jobs() if row["id"] == job.id), None)
                running = 1 if job_queue.running is not None else 0
                text = f"job #{job.id} waiting in the queue: {(ahead or 0) + running} ahead"
                if text != last_wait:  # only what changed goes to the browser
                    last_wait = text
                    yield "progress", {progress: progress_html(0, text)}
            continue
        # Coalesce what piled up while the browser was busy: show only the newest state.
        while not updates.empty():
            items.append(updates.get_nowait())
        update = {progress: progress_html(items[-1].fraction, items[-1].message)}
        previews = [item.preview for item in items if item.preview is not None]
        if previews and preview is not None:
            update[preview] = previews[-1]
        yield "progress", update
    if job.error is not None:
        raise user_error(job.error)
    if job.result is None:
        yield "progress", {progress: progress_html(0, f"job #{job.id} was cancelled before it ran")}
        return
    yield "result", job.result
