"""The txt2img tab: prompt, settings, live progress, results with their parameters."""

from __future__ import annotations

import gradio as gr

from studio.requests import Txt2ImgRequest
from studio.ui import prompt_tools
from studio.ui.context import ImageSender, TabRestore, UIContext
from studio.ui.widgets import generation_panel, result_widgets, selected_image, tab_header, wire_results


def build(ctx: UIContext, native_size: int) -> None:
    with gr.Tab("txt2img", id="txt2img"):
        prompt, negative, generate, interrupt = tab_header("txt2img")
        prompt_tools.build(ctx, "txt2img", prompt)
        with gr.Row():
            with gr.Column(scale=1):
                panel = generation_panel("txt2img", ctx.model, ctx.vae, native_size, prompt, negative)
            with gr.Column(scale=1):
                progress, preview, gallery, info = result_widgets("txt2img")
                with gr.Row():
                    to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="txt2img-send-inpaint")
                    to_outpaint = gr.Button("Send to outpaint", size="sm", elem_id="txt2img-send-outpaint")
        last = gr.State(None)

    wire_results(ctx.services, lambda data: Txt2ImgRequest(**panel.values(data)), generate, interrupt,
                 panel, dict(progress=progress, preview=preview, gallery=gallery, info=info, last=last),
                 api_name="txt2img")
    ctx.restorers["txt2img"] = TabRestore("txt2img", list(panel.fields.values()), panel.updates)
    ctx.size_sliders.append((panel.fields["width"], panel.fields["height"]))
    ctx.senders.append(ImageSender(to_inpaint, "inpaint", [last], selected_image))
    ctx.senders.append(ImageSender(to_outpaint, "outpaint", [last], selected_image))
