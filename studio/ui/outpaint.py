"""The outpaint tab: extend the canvas on any side and paint the new area."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from studio.engine import imaging
from studio.errors import InputError
from studio.requests import OutpaintRequest
from studio.ui import prompt_tools
from studio.ui.context import ImageReceiver, ImageSender, TabRestore, UIContext
from studio.ui.guard import guarded, name_input
from studio.ui.widgets import field_widget, generation_panel, result_widgets, selected_image, tab_header, wire_results

SIDES = ("left", "right", "top", "bottom")


def build(ctx: UIContext, native_size: int) -> None:
    cls = OutpaintRequest
    with gr.Tab("Outpaint", id="outpaint"):
        prompt, negative, generate, interrupt = tab_header("outpaint")
        tools = prompt_tools.build(ctx, "outpaint", prompt, negative)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", format="png", label="Image to extend", sources=["upload", "clipboard"],
                                 elem_id="outpaint-image", height=320)
                with gr.Row():
                    preset = gr.Dropdown(list(imaging.outpaint_presets), label="Preset", scale=3,
                                         elem_id="outpaint-preset")
                    apply_preset = gr.Button("Apply", size="sm", scale=1, elem_id="outpaint-apply-preset")
                with gr.Row():
                    sides = {side: field_widget(cls, side, elem_id=f"outpaint-{side}") for side in SIDES}
                infill = field_widget(cls, "infill", elem_id="outpaint-infill")
                with gr.Row():
                    overlap = field_widget(cls, "overlap", elem_id="outpaint-overlap")
                    feather = field_widget(cls, "feather", elem_id="outpaint-feather")
                strength = field_widget(cls, "denoise_strength", elem_id="outpaint-strength")
                panel = generation_panel("outpaint", ctx.model, ctx.vae, native_size, prompt, negative, tools.styles,
                                         show_size=False)
            with gr.Column(scale=1):
                show_canvas = gr.Button("Preview the canvas and mask", size="sm", elem_id="outpaint-show-canvas")
                canvas_preview = gr.Image(label="Canvas (infilled) with the repaint mask in red", type="pil",
                                          format="png", interactive=False, height=240, elem_id="outpaint-canvas")
                progress, preview, gallery, info = result_widgets("outpaint")
                with gr.Row():
                    again = gr.Button("Outpaint this result again", size="sm", elem_id="outpaint-again")
                    to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="outpaint-send-inpaint")
                    to_extras = gr.Button("Upscale (Extras)", size="sm", elem_id="outpaint-send-extras")
        last = gr.State(None)

    settings = dict(image=image, infill=infill, overlap=overlap, feather=feather, strength=strength,
                    **{f"side_{name}": widget for name, widget in sides.items()})
    panel.extra.update(settings)
    for name, component in dict(image=image, infill=infill, overlap=overlap, feather=feather, denoise_strength=strength,
                                **sides).items():
        name_input(component, name)
    name_input(preset, "preset", empty_ok=True)  # Apply without a choice gets its own message

    def make_request(data: dict) -> OutpaintRequest:
        if data[image] is None:
            raise InputError("upload an image to extend (or send one from another tab)", field="image")
        return OutpaintRequest(**panel.values(data), image=data[image].convert("RGB"), infill=data[infill],
                               overlap=int(data[overlap]), feather=int(data[feather]),
                               denoise_strength=float(data[strength]),
                               **{side: int(data[widget]) for side, widget in sides.items()})

    wire_results(ctx.services, make_request, generate, interrupt, panel,
                 dict(progress=progress, preview=preview, gallery=gallery, info=info, last=last),
                 api_name="outpaint")

    @guarded
    def on_preset(name, picture):
        if not name or picture is None:
            raise gr.Error("choose a preset and upload an image first")
        values = imaging.outpaint_presets[name](picture.size)
        return dict(zip(sides.values(), values))

    apply_preset.click(on_preset, inputs=[preset, image], outputs=list(sides.values()), api_name=False)

    @guarded
    def on_show_canvas(data: dict):
        request = make_request(data)
        try:
            canvas, mask = imaging.extend_canvas(request.image, request.left, request.right, request.top,
                                                 request.bottom, request.infill, request.overlap, request.feather,
                                                 seed=0, max_pixels=ctx.services.settings.max_pixels)
        except ValueError as error:  # imaging says "field: what is wrong"
            raise InputError(str(error)) from error
        red = Image.new("RGB", canvas.size, (255, 0, 0))
        return Image.composite(Image.blend(canvas, red, 0.5), canvas, mask)

    show_canvas.click(on_show_canvas, inputs=panel.inputs | set(settings.values()), outputs=canvas_preview,
                      api_name=False)

    def restore(request: OutpaintRequest) -> dict:
        updates = panel.updates(request)
        updates.update({image: request.image, infill: request.infill, overlap: request.overlap,
                        feather: request.feather, strength: request.denoise_strength})
        updates.update({widget: getattr(request, side) for side, widget in sides.items()})
        return updates

    ctx.restorers["outpaint"] = TabRestore("outpaint", [*panel.fields.values(), *settings.values()], restore)
    ctx.receivers["outpaint"] = ImageReceiver("outpaint", [image], lambda picture: {image: picture.convert("RGB")})
    ctx.senders.append(ImageSender(again, "outpaint", [last], selected_image))
    ctx.senders.append(ImageSender(to_inpaint, "inpaint", [last], selected_image))
    ctx.senders.append(ImageSender(to_extras, "extras", [last], selected_image))
