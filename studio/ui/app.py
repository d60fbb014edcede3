"""Assembles the Blocks app: the shared model header, then one tab per mode, History and Models."""

from __future__ import annotations

import html

import gradio as gr

from studio.app import Services
from studio.ui import control, extras, history, inpaint, models, outpaint, queue_panel, txt2img
from studio.ui.context import UIContext
from studio.ui.guard import StudioBlocks, guarded
from studio.ui.models import model_choices, vae_choices

# Ctrl+Enter (Cmd+Enter) presses the Generate button of the visible tab, as in A1111.
SHORTCUTS_JS = """
() => {
  document.addEventListener('keydown', (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === 'Enter') {
      const buttons = [...document.querySelectorAll('.studio-generate')].filter((b) => b.offsetParent !== null);
      if (buttons.length) { event.preventDefault(); buttons[0].click(); }
    }
  });
""" + inpaint.RESTORED_LAYERS_JS + """
  // a mark that the shortcuts (and the editor fix) are live: Gradio runs this after the first paint, and on a busy
  // machine a key pressed before then does nothing (the browser tests wait for this mark)
  document.body.dataset.studioShortcuts = 'ready';
}
"""

CSS = """
.studio-progress { position: relative; height: 22px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); border-radius: 4px; overflow: hidden; }
.studio-progress-bar { position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft); }
.studio-progress span { position: relative; padding-left: 8px; font-size: 0.85em; }
.studio-model-note { font-size: 0.85em; opacity: 0.85; }
"""


def model_note(services: Services, name: str | None) -> str:
    entry = services.registry.entries().get(name or "")
    if entry is None:
        return ""
    text = f"**{html.escape(entry.label)}**: {html.escape(entry.description or entry.location)}"
    if entry.example_prompts:
        text += "  \nTry: " + " · ".join(f"“{html.escape(p)}”" for p in entry.example_prompts[:3])
    return text


def wire_senders(ctx: UIContext) -> None:
    """Connect every "Send to ..." button to the tab that receives the image."""
    for sender in ctx.senders:
        receiver = ctx.receivers[sender.target]

        @guarded
        def send(*values, sender=sender, receiver=receiver):
            image = sender.pick(*values)
            if image is None:
                raise gr.Error("there is no image to send yet: generate or select one first")
            return {ctx.tabs: gr.Tabs(selected=receiver.tab_id), **receiver.receive(image)}

        sender.button.click(send, inputs=sender.inputs, outputs=[ctx.tabs, *receiver.outputs], api_name=False)


def build_ui(services: Services) -> gr.Blocks:
    default = services.registry.default_name()
    native = services.models.native_size(services.registry.resolve(default))
    with StudioBlocks(title="studio") as demo:
        with gr.Row(equal_height=True):
            model = gr.Dropdown(model_choices(services), value=default, label="Model", scale=3,
                                elem_id="model-select")
            vae = gr.Dropdown(vae_choices(services), value="Automatic", label="VAE", scale=2, elem_id="vae-select")
        note = gr.Markdown(model_note(services, default), elem_id="model-note", elem_classes=["studio-model-note"])
        tabs = gr.Tabs(selected="txt2img", render=False)
        ctx = UIContext(services, model, vae, tabs)
        queue_panel.build(ctx)  # above the tabs: the same queue whichever tab is open
        with tabs.render():
            txt2img.build(ctx, native)
            inpaint.build(ctx, native)
            outpaint.build(ctx, native)
            control.build(ctx, native)
            extras.build(ctx)
            history.build(ctx)
            models.build(ctx)
        wire_senders(ctx)

        @guarded
        def on_model_change(name):
            size = services.models.native_size(services.registry.resolve(name)) if name else native
            update = {note: model_note(services, name)}
            for width, height in ctx.size_sliders:
                update[width] = size
                update[height] = size
            return update

        size_outputs = [note] + [slider for pair in ctx.size_sliders for slider in pair]
        model.input(on_model_change, inputs=model, outputs=size_outputs, api_name=False)
    return demo
