"""The queue panel above the tabs: the running job, the waiting ones in order; cancel, move, clear."""

from __future__ import annotations

import gradio as gr

from studio.errors import NotFound
from studio.requests import parse_id
from studio.ui.context import UIContext
from studio.ui.guard import guarded, name_input

COLUMNS = ["job", "status", "position", "mode", "prompt", "source", "progress", "run", "worker"]
REFRESH_S = 1.0


def queue_rows(job_queue) -> list[list]:
    rows = []
    for job in job_queue.jobs():
        position = "" if job["position"] is None else job["position"] + 1
        progress = f"{job['progress']:.0%}" if job["status"] == "running" else ""
        rows.append([job["id"], job["status"], position, job["mode"], job["prompt"][:60], job["source"], progress,
                     "" if job["run_id"] is None else f"#{job['run_id']}", job.get("worker") or ""])
    return rows


def build(ctx: UIContext) -> None:
    job_queue = ctx.services.queue
    with gr.Accordion("Queue", open=True, elem_id="queue-panel"):
        table = gr.Dataframe(queue_rows(job_queue), headers=COLUMNS, interactive=False, wrap=True, max_height=220,
                             elem_id="queue-table")
        with gr.Row(equal_height=True):
            job = gr.Textbox(label="Job", placeholder="click a row, or type a job number", scale=2,
                             elem_id="queue-job")
            cancel = gr.Button("Cancel job", size="sm", scale=1, elem_id="queue-cancel")
            up = gr.Button("Move up", size="sm", scale=1, elem_id="queue-up")
            down = gr.Button("Move down", size="sm", scale=1, elem_id="queue-down")
            clear = gr.Button("Clear the queue", size="sm", variant="stop", scale=1, elem_id="queue-clear")
        status = gr.Markdown(elem_id="queue-status")
        seen = gr.State(None)  # the rows this browser shows
        timer = gr.Timer(REFRESH_S)
    name_input(job, "job", empty_ok=True)
    job.studio_any_scalar = True

    def refresh(shown_rows):
        # unchanged: nothing goes to the browser (a redraw every second would keep it busy)
        rows = queue_rows(job_queue)
        if rows == shown_rows:
            return gr.skip(), shown_rows
        return rows, rows

    timer.tick(refresh, inputs=seen, outputs=[table, seen], show_progress="hidden", api_name=False)

    def on_row(event: gr.SelectData):
        row = event.row_value if event.row_value else None
        return str(row[0]) if row else gr.skip()

    table.select(on_row, outputs=job, api_name=False)

    def acted(message: str):
        rows = queue_rows(job_queue)
        return {table: rows, seen: rows, status: message}

    @guarded
    def on_cancel(value):
        job_id = parse_id(value, "job", "job", "the queue")
        what = job_queue.cancel(job_id)
        return acted(f"Job #{job_id} {'cancelled' if what == 'cancelled' else 'is being interrupted'}.")

    @guarded
    def on_move(value, step: int):
        job_id = parse_id(value, "job", "job", "the queue")
        position = next((row["position"] for row in job_queue.jobs() if row["id"] == job_id), None)
        if position is None:
            raise NotFound(f"job {job_id} is not waiting in the queue", field="job")
        job_queue.move(job_id, position + step)
        return acted(f"Job #{job_id} moved {'up' if step < 0 else 'down'}.")

    @guarded
    def on_clear():
        return acted(f"Cancelled {job_queue.clear()} waiting job(s).")

    outputs = [table, seen, status]
    cancel.click(on_cancel, inputs=job, outputs=outputs, api_name=False)
    up.click(lambda value: on_move(value, -1), inputs=job, outputs=outputs, api_name=False)
    down.click(lambda value: on_move(value, 1), inputs=job, outputs=outputs, api_name=False)
    clear.click(on_clear, outputs=outputs, api_name=False)
