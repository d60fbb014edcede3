"""The Models tab: checkpoints found and added, adding by path or hub id, unloading."""

from __future__ import annotations

import gradio as gr

from studio.errors import StudioError
from studio.ui.context import UIContext
from studio.ui.guard import guarded, name_input

COLUMNS = ["name", "source", "family", "loaded", "location", "description", "problem"]


def model_rows(services) -> list[list]:
    rows = []
    for entry in services.registry.entries().values():
        row = services.models.describe(entry)
        # a model whose files are bad stays listed, marked unloadable with the reason
        row["problem"] = f"cannot be loaded: {row['error']}" if row.get("error") else ""
        rows.append([row.get(column, "") for column in COLUMNS])
    return rows


def controlnet_rows(services) -> list[list]:
    registry = services.registry
    return [[e.name, e.source, e.location, e.description,
             f"cannot be loaded: {reason}" if (reason := registry.controlnet_problem(e)) else ""]
            for e in registry.controlnet_entries().values()]


LORA_COLUMNS = ["LoRA", "hash", "size", "location", "problem"]


def lora_rows(services) -> list[list]:
    return [[row["name"], row["hash"] or "", f"{row['size_bytes'] / 1e6:.2f} MB", row["path"],
             f"cannot be used: {row['problem']}" if row["problem"] else ""]
            for row in services.registry.loras.describe()]


UPSCALER_COLUMNS = ["upscaler", "kind", "scale", "size", "location", "problem"]


def upscaler_rows(services) -> list[list]:
    return [[row["name"], row["kind"], row.get("scale") or "", f"{row['size_bytes'] / 1e6:.2f} MB" if row["size_bytes"]
             else "", row["path"] or "built in", f"cannot be used: {row['problem']}" if row.get("problem") else ""]
            for row in services.registry.upscalers.describe()]


def model_choices(services) -> list[tuple[str, str]]:
    return [(entry.label, entry.name) for entry in services.registry.entries().values()]


def vae_choices(services) -> list[str]:
    return ["Automatic", *services.registry.vae_names()]


WORKER_COLUMNS = ["worker", "device", "free memory", "loaded models", "model loads", "job", "seen"]


def worker_rows(services) -> list[list]:
    """Farm mode: each worker's last report (they expire a few seconds after a worker stops)."""
    import time

    reports = services.queue.workers() if hasattr(services.queue, "workers") else []
    rows = []
    for report in reports:
        free = report.get("free_memory_bytes")
        rows.append([report.get("name", "?"), report.get("device", "?"),
                     f"{free / 2**30:.1f} GiB" if free else "-", ", ".join(report.get("loaded_models") or []) or "-",
                     report.get("model_loads", "-"), report.get("job") or "idle",
                     f"{max(0.0, time.time() - report.get('reported_at', 0)):.0f} s ago"])
    return rows


def build(ctx: UIContext) -> None:
    services = ctx.services
    models, registry = services.models, services.registry
    with gr.Tab("Models", id="models"):
        gr.Markdown(f"Checkpoints are read from `{registry.checkpoints_dir}`, VAEs from `{registry.vae_dir}`, "
                    f"ControlNets from `{registry.controlnet_dir}`, LoRAs from `{registry.loras.folder}`, upscalers "
                    "from `ESRGAN/`, `RealESRGAN/`, `SwinIR/`, `DAT/` and `upscale_models/` there (A1111 layout). "
                    "Pick the active model and VAE at the top of the page.")
        table = gr.Dataframe(model_rows(services), headers=COLUMNS, interactive=False, wrap=True,
                             elem_id="models-table")
        controlnets = gr.Dataframe(controlnet_rows(services), headers=["ControlNet", "source", "location",
                                                                       "description", "problem"],
                                   interactive=False, wrap=True, elem_id="models-controlnets")
        loras = gr.Dataframe(lora_rows(services), headers=LORA_COLUMNS, interactive=False, wrap=True,
                             elem_id="models-loras")
        upscalers = gr.Dataframe(upscaler_rows(services), headers=UPSCALER_COLUMNS, interactive=False, wrap=True,
                                 elem_id="models-upscalers")
        with gr.Row():
            path = gr.Textbox(label="Add a model: path to a .safetensors file or diffusers folder, or a hub id "
                                    "(online machines only)", scale=4, elem_id="models-path")
            name = gr.Textbox(label="Name (optional)", scale=1, elem_id="models-name")
            add = gr.Button("Add", variant="primary", scale=1, elem_id="models-add")
        workers = gr.Dataframe(worker_rows(services), headers=WORKER_COLUMNS, interactive=False, wrap=True,
                               label="Farm workers (Rescan refreshes)", visible=hasattr(services.queue, "workers"),
                               elem_id="models-workers")
        with gr.Row():
            refresh = gr.Button("Rescan folders", elem_id="models-refresh")
            unload = gr.Button("Unload all models from memory", elem_id="models-unload")
        status = gr.Markdown(elem_id="models-status")

    name_input(path, "path")
    name_input(name, "name")

    @guarded
    def on_add(location, chosen_name):
        try:
            entry = registry.add(location or "", chosen_name or None)
        except StudioError as error:
            return {status: f"**Not added.** {error}"}
        return {status: f"Added **{entry.name}** ({entry.source}).", table: model_rows(services),
                ctx.model: gr.update(choices=model_choices(services), value=entry.name)}

    add.click(on_add, inputs=[path, name], outputs=[status, table, ctx.model], api_name=False)

    @guarded
    def on_refresh():
        return {table: model_rows(services), controlnets: controlnet_rows(services), loras: lora_rows(services),
                upscalers: upscaler_rows(services), workers: worker_rows(services),
                ctx.model: gr.update(choices=model_choices(services)), ctx.vae: gr.update(choices=vae_choices(services))}

    refresh.click(on_refresh, outputs=[table, controlnets, loras, upscalers, workers, ctx.model, ctx.vae],
                  api_name=False)

    @guarded
    def on_unload():
        gone = models.unload()
        return {status: f"Unloaded: {', '.join(gone) or 'nothing was loaded'}.", table: model_rows(services)}

    unload.click(on_unload, outputs=[status, table], api_name=False)
