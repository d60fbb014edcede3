"""The txt2img tab: prompt, settings, live progress, results with their parameters."""

from __future__ import annotations

import gradio as gr

from studio import plots
from studio.requests import Txt2ImgRequest
from studio.ui import prompt_tools
from studio.ui.context import ImageSender, TabRestore, UIContext
from studio.ui.guard import name_input
from studio.ui.widgets import field_widget, generation_panel, result_widgets, selected_image, tab_header, wire_results


def hires_fix(ctx: UIContext) -> dict:
    """A1111's Hires. fix panel: request field -> widget."""
    cls = Txt2ImgRequest
    upscalers = ctx.services.registry.upscalers
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img-hires"):
        fields = {"enable_hr": field_widget(cls, "enable_hr", elem_id="txt2img-enable-hr")}
        with gr.Row():
            fields["hr_upscaler"] = gr.Dropdown(upscalers.names(), value=cls.hr_upscaler, label="Upscaler",
                                                elem_id="txt2img-hr-upscaler",
                                                info="latent modes resize the latents; the others the pixels")
            fields["hr_second_pass_steps"] = field_widget(cls, "hr_second_pass_steps", elem_id="txt2img-hr-steps")
            fields["hr_denoise_strength"] = field_widget(cls, "hr_denoise_strength", elem_id="txt2img-hr-strength")
        with gr.Row():
            fields["hr_scale"] = field_widget(cls, "hr_scale", elem_id="txt2img-hr-scale")
            fields["hr_resize_x"] = field_widget(cls, "hr_resize_x", elem_id="txt2img-hr-resize-x")
            fields["hr_resize_y"] = field_widget(cls, "hr_resize_y", elem_id="txt2img-hr-resize-y")
    for name, component in fields.items():
        name_input(component, name)
    return fields


def plot_panel():
    """A1111's X/Y/Z plot script as a plain panel: three axes (type and values) and its own Generate button."""
    widgets = {}
    with gr.Accordion("X/Y/Z plot", open=False, elem_id="txt2img-xyz"):
        gr.Markdown("Values: comma lists (`DPM++ 2M, Euler`), ranges `1-5`, `10-30 (+5)`, `1-10 [5]`. Prompt S/R: "
                    "the first value is the text to replace. Each cell is its own run in the History; the grid's "
                    "run is their parent.")
        for axis in ("x", "y", "z"):
            with gr.Row(equal_height=True):
                widgets[f"{axis}_type"] = gr.Dropdown(list(plots.AXIS_CHOICES), value="Nothing", scale=1,
                                                      label=f"{axis.upper()} type", elem_id=f"txt2img-{axis}-type")
                widgets[f"{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", scale=3,
                                                       elem_id=f"txt2img-{axis}-values")
        button = gr.Button("Generate the plot", variant="primary", elem_id="txt2img-xyz-generate")
    for name, widget in widgets.items():
        name_input(widget, name)
    return widgets, button


def build(ctx: UIContext, native_size: int) -> None:
    with gr.Tab("txt2img", id="txt2img"):
        prompt, negative, generate, interrupt = tab_header("txt2img")
        tools = prompt_tools.build(ctx, "txt2img", prompt, negative)
        with gr.Row():
            with gr.Column(scale=1):
                panel = generation_panel("txt2img", ctx.model, ctx.vae, native_size, prompt, negative, tools.styles)
                panel.fields.update(hires_fix(ctx))
                plot, plot_button = plot_panel()
            with gr.Column(scale=1):
                progress, preview, gallery, info = result_widgets("txt2img")
                with gr.Row():
                    to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="txt2img-send-inpaint")
                    to_outpaint = gr.Button("Send to outpaint", size="sm", elem_id="txt2img-send-outpaint")
                    to_extras = gr.Button("Upscale (Extras)", size="sm", elem_id="txt2img-send-extras")
        last = gr.State(None)

    def start_plot(data):
        request = plots.PlotRequest(base=Txt2ImgRequest(**panel.values(data)),
                                    **{name: data[widget] for name, widget in plot.items()})
        plots.check_plot(ctx.services.runner, request)  # a bad axis is refused now, not when its turn comes
        return request

    wire_results(ctx.services, lambda data: Txt2ImgRequest(**panel.values(data)), generate, interrupt,
                 panel, dict(progress=progress, preview=preview, gallery=gallery, info=info, last=last),
                 api_name="txt2img", more=((plot_button, start_plot, plot.values(), "xyz_plot"),))
    ctx.restorers["txt2img"] = TabRestore("txt2img", list(panel.fields.values()), panel.updates)

    def restore_plot(request):
        return {**panel.updates(request.base), **{widget: getattr(request, name) for name, widget in plot.items()}}

    ctx.restorers["xyz"] = TabRestore("txt2img", [*panel.fields.values(), *plot.values()], restore_plot)
    ctx.size_sliders.append((panel.fields["width"], panel.fields["height"]))
    ctx.senders.append(ImageSender(to_inpaint, "inpaint", [last], selected_image))
    ctx.senders.append(ImageSender(to_outpaint, "outpaint", [last], selected_image))
    ctx.senders.append(ImageSender(to_extras, "extras", [last], selected_image))
