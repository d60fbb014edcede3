"""The txt2img tab: prompt, settings, live progress, results with their parameters."""

from __future__ import annotations

import gradio as gr

from studio.requests import Txt2ImgRequest
from studio.ui.context import DEVICE_QUEUE, TabRestore, UIContext
from studio.ui.widgets import (RANDOM_SEED, action_buttons, generation_panel, progress_html, prompt_boxes,
                               stream_run)


def gallery_items(result) -> list[tuple[str, str]]:
    return [(str(ref.path), f"seed {ref.seed}") for ref in result.outputs]


def last_run_state(result) -> dict:
    return {"run_id": result.run_id, "seeds": result.seeds, "infotexts": result.infotexts,
            "paths": [str(ref.path) for ref in result.outputs], "selected": 0}


def build(ctx: UIContext, native_size: int) -> None:
    runner = ctx.services.runner
    with gr.Tab("txt2img", id="txt2img"):
        with gr.Row():
            with gr.Column(scale=5):
                prompt, negative = prompt_boxes("txt2img")
            with gr.Column(scale=1, min_width=180):
                generate, interrupt = action_buttons("txt2img")
        with gr.Row():
            with gr.Column(scale=1):
                panel = generation_panel("txt2img", ctx.model, ctx.vae, native_size, prompt, negative)
            with gr.Column(scale=1):
                progress = gr.HTML(progress_html(0, "idle"), elem_id="txt2img-progress")
                preview = gr.Image(label="Live preview", type="pil", format="png", interactive=False,
                                   height=192, elem_id="txt2img-preview")
                gallery = gr.Gallery(label="Results", format="png", type="filepath", columns=4,
                                     elem_id="txt2img-gallery", object_fit="contain", height="auto")
                info = gr.Textbox(label="Generation parameters", lines=4, interactive=False,
                                  elem_id="txt2img-info", buttons=["copy"])
        last = gr.State(None)

    def on_generate(data: dict):
        request = Txt2ImgRequest(**panel.values(data))
        for kind, payload in stream_run(lambda report: runner.run(request, on_progress=report), progress, preview):
            if kind == "progress":
                yield payload
            else:
                result = payload
                yield {gallery: gallery_items(result), info: result.infotexts[0] if result.infotexts else "",
                       last: last_run_state(result),
                       progress: progress_html(1, f"run #{result.run_id} {result.status} in "
                                                  f"{result.duration_s:.1f} s")}

    generate.click(on_generate, inputs=panel.inputs, outputs=[gallery, info, last, progress, preview],
                   concurrency_id=DEVICE_QUEUE, concurrency_limit=1, show_progress="minimal",
                   api_name="txt2img")
    interrupt.click(lambda: runner.cancel() and None, queue=False, api_name=False)

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
    ctx.restorers["txt2img"] = TabRestore("txt2img", list(panel.fields.values()), panel.updates)
    ctx.size_sliders.append((panel.fields["width"], panel.fields["height"]))
