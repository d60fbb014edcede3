"""The History tab: every past run, newest first; search, filter, star, delete, restore, re-run, lineage."""

from __future__ import annotations

import html
from functools import lru_cache

import gradio as gr
from PIL import Image, ImageDraw

from studio.errors import InputError, StudioError
from studio.requests import REQUEST_TYPES, parse_run_id
from studio.ui.context import ImageSender, UIContext
from studio.ui.guard import guarded, name_input
from studio.ui.widgets import follow_job, progress_html

ALL = "all"
PAGE_SIZE = 60


@lru_cache(maxsize=8)
def status_tile(status: str) -> Image.Image:
    """A grey tile standing in for a run without an output image (failed, interrupted early)."""
    tile = Image.new("RGB", (96, 96), (60, 60, 60))
    ImageDraw.Draw(tile).text((10, 40), status, fill=(230, 230, 230))
    return tile


def run_caption(record) -> str:
    star = "★ " if record.starred else ""
    return f"{star}#{record.id} · {record.mode} · {record.prompt[:48]}"


def details_markdown(record) -> str:
    rows = [
        ("Run", f"#{record.id} ({record.status})"), ("Mode", record.mode), ("Prompt", record.prompt),
        ("Negative prompt", record.negative_prompt), ("Model", f"{record.model_name} [{record.short_hash}]"),
        ("VAE", record.vae or "model's own"),
        ("Sampler", f"{record.sampler}{' Karras' if record.karras else ''} ({record.scheduler.get('class')})"),
        ("Steps", record.steps), ("CFG scale", record.cfg_scale), ("Size", f"{record.width}x{record.height}"),
        ("Seeds", ", ".join(str(s) for s in record.seeds)),
        ("Batch", f"{record.batch_count} x {record.batch_size}"),
        ("Started", record.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        ("Duration", f"{record.duration_s:.2f} s" if record.duration_s else "-"),
        ("Device", f"{record.device} / {record.dtype}"),
        ("Source", {"ui": "web UI", "cli": "command line", "api": "HTTP API"}.get(record.source or "", "-")),
        ("Versions", ", ".join(f"{k} {v}" for k, v in record.versions.items())),
    ]
    if record.worker:  # farm mode: the worker that ran it
        rows.append(("Worker", record.worker))
    extra = {k: v for k, v in record.params.items()
             if k not in {"mode", "prompt", "negative_prompt", "model", "vae", "sampler", "karras", "steps",
                          "cfg_scale", "width", "height", "seed", "batch_size", "batch_count", "parent_run_id"}}
    rows += [(k.replace("_", " ").capitalize(), v) for k, v in extra.items()]
    if record.parent_id:
        rows.append(("Derived from", f"run #{record.parent_id}"))
    if record.rerun_of:
        rows.append(("Re-run of", f"run #{record.rerun_of}"))
    if record.inputs:
        rows.append(("Inputs", ", ".join(ref.name for ref in record.inputs)))
    if record.error:
        rows.append(("Error", record.error))
    lines = ["| Setting | Value |", "|---|---|"]
    lines += [f"| {name} | {html.escape(str(value)).replace('|', '&#124;').replace(chr(10), ' ')} |"
              for name, value in rows]
    return "\n".join(lines)


def lineage_markdown(ancestors, children) -> str:
    if len(ancestors) <= 1 and not children:
        return "No earlier or later versions."
    chain = " → ".join(f"#{r.id} {r.mode}" for r in ancestors)
    text = f"**Lineage** (root first): {chain}"
    if children:
        text += "\n\n**Branches from here**: " + ", ".join(f"#{r.id} {r.mode}" for r in children)
    return text


def build(ctx: UIContext) -> None:
    services = ctx.services
    history, runner = services.history, services.runner
    with gr.Tab("History", id="history"):
        with gr.Row():
            search = gr.Textbox(label="Search prompts", scale=3, elem_id="history-search")
            mode = gr.Dropdown([ALL, *REQUEST_TYPES], value=ALL, label="Mode", scale=1, elem_id="history-mode")
            model = gr.Dropdown([ALL], value=ALL, label="Model", scale=1, allow_custom_value=True,
                                elem_id="history-model")
            starred = gr.Checkbox(label="Starred only", scale=1, elem_id="history-starred")
            refresh = gr.Button("Refresh", scale=1, elem_id="history-refresh")
        with gr.Row():
            with gr.Column(scale=3):
                # fit_columns off: with a short list one run would otherwise fill the whole box
                runs = gr.Gallery(label="Runs", columns=6, height=520, type="filepath", format="png",
                                  allow_preview=False, elem_id="history-gallery", object_fit="cover",
                                  fit_columns=False)
            with gr.Column(scale=2):
                # text, not a gr.Number: Gradio draws an empty Number as 0, which reads as a run id
                selected = gr.Textbox(label="Selected run", lines=1, max_lines=1, interactive=False,
                                      placeholder="none: pick a run in the list", elem_id="history-selected")
                with gr.Row():
                    restore = gr.Button("Restore", variant="primary", elem_id="history-restore")
                    rerun = gr.Button("Re-run", elem_id="history-rerun")
                    star = gr.Button("★ Star / unstar", elem_id="history-star")
                    delete = gr.Button("Delete", variant="stop", elem_id="history-delete")
                status = gr.Markdown(elem_id="history-status")
                progress = gr.HTML(progress_html(0, ""), elem_id="history-progress")
                # a fixed height cut a single output (drawn as wide as the column) to its top half
                outputs = gr.Gallery(label="Outputs", columns=2, type="filepath", format="png",
                                     elem_id="history-outputs", height="auto", object_fit="contain")
                details = gr.Markdown(elem_id="history-details")
                lineage = gr.Markdown(elem_id="history-lineage")
                with gr.Row():
                    parent_button = gr.Button("Go to parent", size="sm", elem_id="history-parent")
                    to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="history-send-inpaint")
                    to_outpaint = gr.Button("Send to outpaint", size="sm", elem_id="history-send-outpaint")
                    to_extras = gr.Button("Upscale (Extras)", size="sm", elem_id="history-send-extras")
        with gr.Accordion("Import parameters from a PNG (this studio or A1111)", open=False):
            png = gr.Image(type="pil", label="PNG", format="png", sources=["upload"], elem_id="history-png")
            import_button = gr.Button("Restore parameters from PNG", elem_id="history-import")
        shown = gr.State([])
    for component, field in ((search, "search"), (mode, "mode"), (model, "model"), (starred, "starred"),
                             (selected, "run"), (png, "png")):
        name_input(component, field, empty_ok=True if component in (model, selected) else None)
    # the run box takes a number or its digits from API callers too; parse_run_id says what is wrong
    selected.studio_any_scalar = True

    @guarded
    def load_runs(text, mode_value, model_value, starred_only):
        records = history.search(text or None, mode=None if mode_value == ALL else mode_value,
                                 model=None if model_value in (ALL, None, "") else model_value,
                                 starred=True if starred_only else None, limit=PAGE_SIZE)
        items = []
        for record in records:
            thumb = str(record.outputs[0].path) if record.outputs else status_tile(record.status)
            items.append((thumb, run_caption(record)))
        models = [ALL, *history.distinct_values("model_name")]
        return items, [r.id for r in records], gr.update(choices=models)

    filters = [search, mode, model, starred]
    for trigger in (refresh.click, search.submit, mode.change, starred.change):
        trigger(load_runs, inputs=filters, outputs=[runs, shown, model], api_name=False)
    model.input(load_runs, inputs=filters, outputs=[runs, shown, model], api_name=False)

    def show(run_id):
        if run_id in (None, ""):
            return {status: "Select a run."}
        try:
            record = history.get(parse_run_id(run_id))
        except StudioError as error:
            return {status: str(error)}
        ancestors, children = history.lineage(record.id)
        # a file cut short or changed on disk is said here, for this run, not found later by a failed restore
        warnings = [f"**Damaged:** {damage.describe()}" for damage in history.damaged_files(record)]
        return {selected: record.id, details: details_markdown(record), lineage: lineage_markdown(ancestors, children),
                outputs: [(str(r.path), f"seed {r.seed}") for r in record.outputs if r.path.is_file()],
                status: "  \n".join(warnings)}

    @guarded
    def on_select(ids, event: gr.SelectData):
        return show(ids[event.index]) if event.index < len(ids) else {status: "Refresh the list."}

    detail_outputs = [selected, details, lineage, outputs, status]
    runs.select(on_select, inputs=shown, outputs=detail_outputs, api_name=False)

    @guarded
    def go_parent(run_id):
        if run_id in (None, ""):
            return {status: "Select a run."}
        parent = history.get(parse_run_id(run_id)).parent_id
        return show(parent) if parent else {status: "This run has no parent: it is the root of its lineage."}

    parent_button.click(go_parent, inputs=selected, outputs=detail_outputs, api_name=False)

    restore_outputs = [ctx.tabs, status]
    for binding in ctx.restorers.values():
        restore_outputs += binding.outputs

    def restore_request(request, note: str):
        binding = ctx.restorers.get(request.mode)
        if binding is None:
            raise gr.Error(f"runs of mode {request.mode!r} cannot be restored in this version")
        return {ctx.tabs: gr.Tabs(selected=binding.tab_id), status: note, **binding.updates(request)}

    @guarded
    def on_restore(run_id):
        run_id = parse_run_id(run_id)
        return restore_request(runner.restore(run_id), f"Restored run #{run_id} into its tab.")

    # restore_outputs hold every tab's widgets: progress and errors belong on this tab's status line, not on
    # the model header and dozens of fields (an error left an "Error" badge on each until dismissed)
    restore.click(on_restore, inputs=selected, outputs=restore_outputs, api_name="restore_run",
                  show_progress_on=status)

    @guarded
    def on_import(image):
        if image is None:
            raise InputError("upload a PNG first", field="png")
        request = runner.request_from_png(image)
        return restore_request(request, "Restored the parameters embedded in the PNG.")

    import_button.click(on_import, inputs=png, outputs=restore_outputs, api_name=False, show_progress_on=status)

    @guarded
    def on_rerun(run_id, *filter_values):
        run_id = parse_run_id(run_id)
        job = services.queue.submit(runner.restore(run_id), "ui", rerun_of=run_id)
        for kind, payload in follow_job(services.queue, job, progress, None):
            if kind == "progress":
                yield payload
            else:
                result = payload
                items, ids, models = load_runs(*filter_values)
                yield {**show(result.run_id), runs: items, shown: ids, model: models,
                       progress: progress_html(1, f"re-run #{result.run_id} {result.status}")}

    # Gradio's default ("full") progress covers every output for the whole run, eight here with the Runs gallery:
    # a spinner and a ticking timer while it waits (~1000 DOM mutations/s), then a pulsing border, an endless CSS
    # animation repainted every frame. The browser then takes the CPU the sampler needs; the tab's own bar is enough.
    # the job queue serialises device work: a Re-run pressed while a job runs waits its turn there
    rerun.click(on_rerun, inputs=[selected, *filters], outputs=[*detail_outputs, runs, shown, model, progress],
                concurrency_limit=None, trigger_mode="multiple", api_name="rerun_run", show_progress="minimal",
                show_progress_on=progress)

    @guarded
    def on_star(run_id, *filter_values):
        record = history.get(parse_run_id(run_id))
        history.star(record.id, not record.starred)
        items, ids, models = load_runs(*filter_values)
        return {**show(record.id), runs: items, shown: ids, model: models}

    star.click(on_star, inputs=[selected, *filters], outputs=[*detail_outputs, runs, shown, model], api_name=False)

    @guarded
    def on_delete(run_id, *filter_values):
        run_id = parse_run_id(run_id)
        removed = history.delete(run_id)
        items, ids, models = load_runs(*filter_values)
        return {runs: items, shown: ids, model: models, selected: "", details: "", lineage: "", outputs: [],
                status: f"Deleted run #{run_id} and {len(removed)} file(s) only it used."}

    delete.click(on_delete, inputs=[selected, *filters], outputs=[*detail_outputs, runs, shown, model],
                 api_name=False)

    @guarded
    def first_output(run_id):
        """The selected run's first output: "go back to this version and branch from it"."""
        if run_id in (None, ""):
            return None
        record = history.get(parse_run_id(run_id))
        return history.load_image(record.outputs[0]) if record.outputs else None

    ctx.senders.append(ImageSender(to_inpaint, "inpaint", [selected], first_output))
    ctx.senders.append(ImageSender(to_outpaint, "outpaint", [selected], first_output))
    ctx.senders.append(ImageSender(to_extras, "extras", [selected], first_output))
