"""The prompt tools under every generating tab's prompt: a LoRA picker that inserts its tag.

The picker only writes A1111's `<lora:name:weight>` into the prompt: the tag is what runs, what is
recorded and what a pasted A1111 prompt already carries, so there is one way to ask for a LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from studio.engine.loras import MAX_WEIGHT, TAG, LoraTag
from studio.errors import InputError
from studio.ui.guard import guarded, name_input


@dataclass
class PromptTools:
    lora: gr.Dropdown
    lora_weight: gr.Slider
    add_lora: gr.Button
    refresh: gr.Button


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


def build(ctx, prefix: str, prompt: gr.Textbox) -> PromptTools:
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
    return PromptTools(lora, weight, add, refresh)
