"""The Extras tab (A1111's name): upscale any image with an upscaler and a factor, recorded as its own run.

Results and History send their image here; the upscale's run names the source image's run as its
parent, so the History shows where the big version came from, and Re-run repeats it byte for byte.
"""

from __future__ import annotations

import gradio as gr

from studio.requests import UpscaleRequest
from studio.ui.context import ImageReceiver, TabRestore, UIContext
from studio.ui.guard import guarded, name_input
from studio.ui.widgets import field_widget, follow_job, progress_html


def image_upscalers(services) -> list[str]:
    upscalers = services.registry.upscalers
    return [name for name in upscalers.names() if not upscalers.is_latent(name)]


def build(ctx: UIContext) -> None:
    services = ctx.services
    choices = image_upscalers(services)
    with gr.Tab("Extras", id="extras"):
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", type="pil", format="png", sources=["upload", "clipboard"],
                                 elem_id="extras-image")
                upscaler = gr.Dropdown(choices, value=choices[-1] if len(choices) > 2 else "Lanczos",
                                       label="Upscaler", elem_id="extras-upscaler",
                                       info="models come from models/ESRGAN, RealESRGAN, SwinIR, DAT, upscale_models")
                scale = field_widget(UpscaleRequest, "scale", elem_id="extras-scale")
                button = gr.Button("Upscale", variant="primary", elem_id="extras-upscale")
            with gr.Column(scale=1):
                progress = gr.HTML(progress_html(0, "idle"), elem_id="extras-progress")
                result = gr.Image(label="Upscaled", type="filepath", format="png", interactive=False,
                                  elem_id="extras-result")
                info = gr.Textbox(label="Parameters", interactive=False, elem_id="extras-info")
    name_input(image, "image")
    name_input(upscaler, "upscaler")
    name_input(scale, "scale")

    @guarded
    def on_upscale(picture, name, factor):
        job = services.queue.submit(UpscaleRequest(image=picture, upscaler=name, scale=float(factor)), "ui")
        for kind, payload in follow_job(services.queue, job, progress, None):
            if kind == "progress":
                yield payload
                continue
            done = payload
            size = done.images[0].size
            yield {result: str(done.outputs[0].path), info: done.infotexts[0],
                   progress: progress_html(1, f"run #{done.run_id}: {size[0]}x{size[1]} in {done.duration_s:.1f} s")}

    button.click(on_upscale, inputs=[image, upscaler, scale], outputs=[result, info, progress], concurrency_limit=None,
                 trigger_mode="multiple", show_progress="minimal", show_progress_on=progress, api_name="upscale")
    ctx.receivers["extras"] = ImageReceiver("extras", [image], lambda picture: {image: picture})
    ctx.restorers["upscale"] = TabRestore("extras", [image, upscaler, scale], lambda request: {
        image: request.image, upscaler: request.upscaler, scale: request.scale})
