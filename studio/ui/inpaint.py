"""The inpaint tab: paint a mask with a brush over the image (or upload one) and repaint it."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from studio.engine import imaging
from studio.errors import InputError
from studio.requests import InpaintRequest
from studio.ui import prompt_tools
from studio.ui.context import ImageReceiver, ImageSender, TabRestore, UIContext
from studio.ui.guard import guarded, name_input
from studio.ui.widgets import field_widget, generation_panel, result_widgets, selected_image, tab_header, wire_results

MASK_MODES = ("Inpaint masked", "Inpaint not masked")

# Part of the app's startup script. Gradio 6.31's ImageEditor sizes a layer it loads from the server (a restored
# mask) by the bounds of everything on its canvas and centres a smaller layer picture in them. Those bounds include
# the brush's transparent preview, which keeps the size the canvas had when the brush was set up: 800x800 on a fresh
# page or after Clear, or an earlier, bigger picture. A restored mask then landed off the picture: not shown, and
# cut away from the layers the editor sends back. While it loads a layer, the editor measures the picture (its
# background layer) instead. Gradio sets window.editor to each editor it mounts, which is how this reaches their
# classes; a Gradio without these methods is left alone (and tests/browser/test_inpaint_browser.py fails).
RESTORED_LAYERS_JS = """
  const fitLoadedLayersToPicture = (manager) => {
    const proto = Object.getPrototypeOf(manager);
    if (proto.studioFitsPicture || typeof proto.add_layer_from_url !== 'function') return;
    proto.studioFitsPicture = true;
    const addLayer = proto.add_layer_from_url;
    proto.add_layer_from_url = function (url) {
      const container = this.image_container, picture = this.background_layer;
      if (!container || !picture) return addLayer.call(this, url);
      // it reads the bounds before its first await: the stand-in is needed only for that synchronous part
      container.getLocalBounds = () => picture.getLocalBounds();
      try { return addLayer.call(this, url); } finally { delete container.getLocalBounds; }
    };
  };
  const patchEditor = (editor) => {
    const proto = editor && Object.getPrototypeOf(editor);
    if (!proto || proto.studioFitsPicture || typeof proto.add_layers_from_url !== 'function') return;
    proto.studioFitsPicture = true;
    const addLayers = proto.add_layers_from_url;
    proto.add_layers_from_url = function (urls) {
      // the layer manager exists only once the editor is set up, which it is by the time it loads layers
      if (this.layer_manager) fitLoadedLayersToPicture(this.layer_manager);
      return addLayers.call(this, urls);
    };
  };
  let mountedEditor = window.editor;
  patchEditor(mountedEditor);
  Object.defineProperty(window, 'editor', {configurable: true, get: () => mountedEditor,
                                           set: (editor) => { mountedEditor = editor; patchEditor(editor); }});
"""


def mask_layer(mask: Image.Image) -> Image.Image:
    """A mask as an editor layer: white paint whose alpha is the mask."""
    layer = Image.new("RGBA", mask.size, (255, 255, 255, 0))
    layer.putalpha(mask.convert("L"))
    return layer


def editor_value(image: Image.Image, mask: Image.Image | None = None) -> dict:
    return {"background": image, "layers": [mask_layer(mask)] if mask is not None else [], "composite": None}


def image_and_mask(editor: dict | None, uploaded_mask: Image.Image | None) -> tuple[Image.Image, Image.Image]:
    """The picture and the painted (or uploaded) mask from the editor's value."""
    background = (editor or {}).get("background")
    if background is None:
        raise InputError("upload an image to inpaint (or send one from another tab)", field="image")
    if uploaded_mask is not None:
        return background.convert("RGB"), uploaded_mask
    try:
        mask = imaging.mask_from_editor(background, (editor or {}).get("layers") or [])
    except ValueError as error:
        raise InputError(str(error)) from error
    return background.convert("RGB"), mask


def build(ctx: UIContext, native_size: int) -> None:
    cls = InpaintRequest
    with gr.Tab("Inpaint", id="inpaint"):
        prompt, negative, generate, interrupt = tab_header("inpaint")
        tools = prompt_tools.build(ctx, "inpaint", prompt, negative)
        with gr.Row():
            with gr.Column(scale=1):
                editor = gr.ImageEditor(
                    type="pil", image_mode="RGBA", format="png", layers=True, label="Image: paint the mask",
                    brush=gr.Brush(default_size=24, colors=["#ffffff"], color_mode="fixed"),
                    eraser=gr.Eraser(default_size=24), sources=["upload", "clipboard"], elem_id="inpaint-editor",
                    height=420)
                mask_upload = gr.Image(type="pil", image_mode="L", format="png", sources=["upload"],
                                       label="Or upload a mask (white = repaint)", elem_id="inpaint-mask-upload",
                                       height=160)
                with gr.Row():
                    mask_blur = field_widget(cls, "mask_blur", elem_id="inpaint-mask-blur")
                    mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode",
                                         elem_id="inpaint-mask-mode")
                masked_content = field_widget(cls, "masked_content", elem_id="inpaint-masked-content")
                with gr.Row():
                    area = field_widget(cls, "inpaint_area", elem_id="inpaint-area")
                    padding = field_widget(cls, "padding", elem_id="inpaint-padding")
                strength = field_widget(cls, "denoise_strength", elem_id="inpaint-strength")
                panel = generation_panel("inpaint", ctx.model, ctx.vae, native_size, prompt, negative, tools.styles)
            with gr.Column(scale=1):
                show_mask = gr.Button("Preview the mask as it will be applied", size="sm",
                                      elem_id="inpaint-show-mask")
                mask_preview = gr.Image(label="Mask preview (after blur, invert, crop, 8x latent grid)",
                                        type="pil", format="png", interactive=False, height=240,
                                        elem_id="inpaint-mask-preview")
                progress, preview, gallery, info = result_widgets("inpaint")
                with gr.Row():
                    again = gr.Button("Inpaint this result again", size="sm", elem_id="inpaint-again")
                    to_outpaint = gr.Button("Send to outpaint", size="sm", elem_id="inpaint-send-outpaint")
                    to_extras = gr.Button("Upscale (Extras)", size="sm", elem_id="inpaint-send-extras")
        last = gr.State(None)

    settings = dict(mask_blur=mask_blur, mask_mode=mask_mode, masked_content=masked_content, area=area,
                    padding=padding, strength=strength, editor=editor, mask_upload=mask_upload)
    panel.extra.update(settings)
    for name, component in dict(mask_blur=mask_blur, mask_mode=mask_mode, masked_content=masked_content,
                                inpaint_area=area, padding=padding, denoise_strength=strength, image=editor,
                                mask=mask_upload).items():
        name_input(component, name)

    def make_request(data: dict) -> InpaintRequest:
        image, mask = image_and_mask(data[editor], data[mask_upload])
        return InpaintRequest(**panel.values(data), image=image, mask=mask, mask_blur=int(data[mask_blur]),
                              invert_mask=data[mask_mode] == MASK_MODES[1], masked_content=data[masked_content],
                              inpaint_area=data[area], padding=int(data[padding]),
                              denoise_strength=float(data[strength]))

    wire_results(ctx.services, make_request, generate, interrupt, panel,
                 dict(progress=progress, preview=preview, gallery=gallery, info=info, last=last), api_name="inpaint")

    @guarded
    def on_show_mask(data: dict):
        request = make_request(data)
        try:
            mask, _notice = imaging.load_mask(request.mask, request.image.size)
            return imaging.mask_preview(request.image, mask, request.mask_blur, request.invert_mask,
                                        request.inpaint_area, request.padding,
                                        (request.width or native_size, request.height or native_size))
        except ValueError as error:  # imaging says "field: what is wrong"
            raise InputError(str(error)) from error

    show_mask.click(on_show_mask, inputs=panel.inputs | set(settings.values()), outputs=mask_preview,
                    api_name=False)

    @guarded
    def on_new_image(value):
        background = (value or {}).get("background")
        if background is None:
            return {}
        width, height = imaging.snap_size(*background.size)
        return {panel.fields["width"]: width, panel.fields["height"]: height}

    editor.upload(on_new_image, inputs=editor, outputs=[panel.fields["width"], panel.fields["height"]],
                  api_name=False)

    def restore(request: InpaintRequest) -> dict:
        updates = panel.updates(request)
        updates.update({editor: editor_value(request.image, request.mask), mask_upload: None,
                        mask_blur: request.mask_blur, mask_mode: MASK_MODES[int(request.invert_mask)],
                        masked_content: request.masked_content, area: request.inpaint_area,
                        padding: request.padding, strength: request.denoise_strength})
        return updates

    ctx.restorers["inpaint"] = TabRestore("inpaint", [*panel.fields.values(), *settings.values()], restore)

    def receive(image: Image.Image) -> dict:
        width, height = imaging.snap_size(*image.size)
        return {editor: editor_value(image.convert("RGB")), mask_upload: None, panel.fields["width"]: width,
                panel.fields["height"]: height}

    ctx.receivers["inpaint"] = ImageReceiver("inpaint", [editor, mask_upload, panel.fields["width"],
                                                         panel.fields["height"]], receive)
    ctx.senders.append(ImageSender(again, "inpaint", [last], selected_image))
    ctx.senders.append(ImageSender(to_outpaint, "outpaint", [last], selected_image))
    ctx.senders.append(ImageSender(to_extras, "extras", [last], selected_image))
