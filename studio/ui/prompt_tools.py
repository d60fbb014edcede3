"""The prompt tools under every generating tab's prompt: LoRA picker, styles, and the prompt builder.

The LoRA picker only writes A1111's `<lora:name:weight>` into the prompt: the tag is what runs, what
is recorded and what a pasted A1111 prompt already carries, so there is one way to ask for a LoRA.
Styles are a request field (applied when the run starts, recorded by name); the prompt builder
composes structured fields into the prompt, which stays editable.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio.engine.loras import MAX_WEIGHT, TAG, LoraTag
from studio.errors import InputError
from studio.templates import TEMPLATE_FIELDS, compose
from studio.ui.guard import guarded, name_input


@dataclass
class PromptTools:
    lora: gr.Dropdown
    styles: gr.Dropdown  # the request's `styles` field
    template_fields: dict


def insert_tag(prompt: str, name: str | None, weight: float) -> str:
    """The prompt with this LoRA's tag at the end, or its weight updated where it is tagged already."""
    if not name:
        raise InputError("pick a LoRA first", field="lora")
    tag = LoraTag(name, float(weight)).text
    prompt = prompt or ""
    for match in TAG.finditer(prompt):
        if match.group(1).strip() == name:
            return prompt[:match.start()] + tag + prompt[match.end():]
    return f"{prompt.rstrip()} {tag}".strip()


def build(ctx, prefix: str, prompt: gr.Textbox, negative: gr.Textbox) -> PromptTools:
    lora = _lora_picker(ctx, prefix, prompt)
    styles = _styles(ctx, prefix, prompt, negative)
    fields = _builder(ctx, prefix, prompt)
    return PromptTools(lora, styles, fields)


def _lora_picker(ctx, prefix: str, prompt: gr.Textbox) -> gr.Dropdown:
    library = ctx.services.registry.loras
    with gr.Accordion("LoRA", open=False, elem_id=f"{prefix}-lora-tools"):
        with gr.Row(equal_height=True):
            lora = gr.Dropdown(library.names(), value=None, label="LoRA", scale=3, elem_id=f"{prefix}-lora",
                               info=f"from {library.folder}; adds <lora:name:weight> to the prompt")
            weight = gr.Slider(-2, 2, value=1.0, step=0.05, label="Weight", scale=2, elem_id=f"{prefix}-lora-weight")
            add = gr.Button("Add to prompt", size="sm", scale=1, elem_id=f"{prefix}-lora-add")
            refresh = gr.Button("Rescan", size="sm", scale=1, elem_id=f"{prefix}-lora-refresh")
    name_input(lora, "lora", empty_ok=True)
    name_input(weight, "lora weight")
    assert MAX_WEIGHT >= 2  # the slider stays inside what a tag may say

    @guarded
    def on_add(text, name, value):
        return insert_tag(text, name, value)

    add.click(on_add, inputs=[prompt, lora, weight], outputs=prompt, api_name=False, queue=False)
    refresh.click(lambda: gr.update(choices=library.names()), outputs=lora, api_name=False, queue=False)
    return lora


def _styles(ctx, prefix: str, prompt: gr.Textbox, negative: gr.Textbox) -> gr.Dropdown:
    book = ctx.services.runner.styles
    with gr.Accordion("Styles", open=False, elem_id=f"{prefix}-style-tools"):
        styles = gr.Dropdown(book.names(), value=[], multiselect=True, label="Styles", elem_id=f"{prefix}-styles",
                             info=f"from {book.path} (A1111's styles.csv); applied in order when the run starts")
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Style name", scale=3, elem_id=f"{prefix}-style-name")
            save = gr.Button("Save the prompts as a style", size="sm", scale=1, elem_id=f"{prefix}-style-save")
            refresh = gr.Button("Rescan", size="sm", scale=1, elem_id=f"{prefix}-style-refresh")
        with gr.Row(equal_height=True):
            source = gr.Textbox(label="Import from an A1111 install (its folder or styles.csv)", scale=4,
                                elem_id=f"{prefix}-style-import-path")
            load = gr.Button("Import", size="sm", scale=1, elem_id=f"{prefix}-style-import")
        status = gr.Markdown(elem_id=f"{prefix}-style-status")
    name_input(styles, "styles")
    name_input(name, "style_name")
    name_input(source, "styles_file")

    @guarded
    def on_save(style_name, text, negative_text, chosen):
        style = book.save(style_name or "", text, negative_text)
        # the other tabs' pickers see it on their Rescan (or the next page load)
        return {status: f"Saved style **{style.name}**.", styles: gr.update(choices=book.names())}

    save.click(on_save, inputs=[name, prompt, negative, styles], outputs=[status, styles],
               api_name=False, queue=False)

    @guarded
    def on_import(path):
        from pathlib import Path

        if not path:
            raise InputError("give the path of an A1111 folder or its styles.csv", field="styles_file")
        counts = book.import_from(Path(path).expanduser())
        return {status: f"Imported: {counts.added} added, {counts.renamed} added as “(imported)”, {counts.skipped} "
                        "already here.", styles: gr.update(choices=book.names())}

    load.click(on_import, inputs=source, outputs=[status, styles], api_name=False, queue=False)
    refresh.click(lambda: gr.update(choices=book.names()), outputs=styles, api_name=False, queue=False)
    return styles


def _builder(ctx, prefix: str, prompt: gr.Textbox) -> dict:
    book = ctx.services.templates
    with gr.Accordion("Prompt builder", open=False, elem_id=f"{prefix}-builder"):
        fields = {}
        for row in (TEMPLATE_FIELDS[:3], TEMPLATE_FIELDS[3:]):
            with gr.Row():
                for key, label in row:
                    fields[key] = gr.Textbox(label=label, elem_id=f"{prefix}-builder-{key}")
                    name_input(fields[key], f"template.{key}")
        with gr.Row(equal_height=True):
            write = gr.Button("Write into the prompt", variant="secondary", size="sm", elem_id=f"{prefix}-builder-write")
            chosen = gr.Dropdown(book.names(), value=None, label="Template", scale=2, elem_id=f"{prefix}-template")
            load = gr.Button("Load", size="sm", elem_id=f"{prefix}-template-load")
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Template name", scale=3, elem_id=f"{prefix}-template-name")
            save = gr.Button("Save as template", size="sm", scale=1, elem_id=f"{prefix}-template-save")
        status = gr.Markdown(elem_id=f"{prefix}-template-status")
    name_input(chosen, "template", empty_ok=True)
    name_input(name, "template_name")
    keys = list(fields)

    @guarded
    def on_write(*values):
        return compose(dict(zip(keys, values)))

    write.click(on_write, inputs=list(fields.values()), outputs=prompt, api_name=False, queue=False)

    @guarded
    def on_load(template):
        if not template:
            raise InputError("pick a template first", field="template")
        values = book.get(template)
        return {fields[key]: values[key] for key in keys}

    load.click(on_load, inputs=chosen, outputs=list(fields.values()), api_name=False, queue=False)

    @guarded
    def on_save(template_name, *values):
        book.save(template_name or "", dict(zip(keys, values)))
        return {status: f"Saved template **{template_name.strip()}**.", chosen: gr.update(choices=book.names())}

    save.click(on_save, inputs=[name, *fields.values()], outputs=[status, chosen], api_name=False, queue=False)
    return fields
