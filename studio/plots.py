"""X/Y/Z plots as runs: one queued job runs every cell as its own history row, then records the labelled grid.

The grid's row is the parent of its cells' rows and holds the plot request (the base request and the
axes), so Restore brings the plot settings back and Re-run repeats every cell with the same seeds.
The cells come from studio/xyz.py (ranges, validation, the grid picture); this module runs them.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from studio.errors import InputError, StudioError
from studio.requests import REQUEST_TYPES, from_record, register_request_type, to_record, validate
from studio.xyz import AXIS_KINDS, PlotAxis, parse_values, plan_cells


@register_request_type
@dataclass(frozen=True, kw_only=True)
class PlotRequest:
    """A base request and up to three axes (A1111's X/Y/Z plot script)."""

    mode: ClassVar[str] = "xyz"

    base: Any
    x_type: str = "Nothing"
    x_values: str = ""
    y_type: str = "Nothing"
    y_values: str = ""
    z_type: str = "Nothing"
    z_values: str = ""

    # what the queue panel and the API show of a job
    @property
    def prompt(self) -> str:
        return self.base.prompt

    @property
    def model(self) -> str | None:
        return self.base.model

    def axes(self) -> list[PlotAxis]:
        return [PlotAxis(self.x_type, self.x_values), PlotAxis(self.y_type, self.y_values),
                PlotAxis(self.z_type, self.z_values)]

    def validate_self(self) -> None:
        """The base request's own checks, then every axis's values (checkpoint names are checked when it runs)."""
        if self.base is None or getattr(self.base, "mode", None) not in REQUEST_TYPES or self.base.mode == "xyz":
            raise InputError("a plot needs the settings of a txt2img, inpaint, outpaint or control run", field="base")
        validate(self.base)
        for prefix, axis in zip("xyz", self.axes()):
            if not isinstance(axis.kind, str) or not isinstance(axis.values_text, str):
                raise InputError("give the axis type and its values as text", field=f"{prefix}_type")
            if axis.kind.lower() in ("checkpoint name", "nothing"):
                continue
            parse_values(axis.kind, axis.values_text, type(self.base), field=f"{prefix}_values")

    def record(self) -> tuple[dict, dict]:
        """JSON-able parameters and the base request's input images (to_record's result for a plot)."""
        base, images = to_record(self.base)
        params = {"mode": self.mode, "base": base}
        params.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "base"})
        return params, images

    @classmethod
    def from_params(cls, params: dict, images: dict) -> PlotRequest:
        names = {f.name for f in dataclasses.fields(cls)} - {"base"}
        return cls(base=from_record(params.get("base") or {}, images), **{k: v for k, v in params.items()
                                                                             if k in names})


@dataclass(frozen=True)
class PlotProgress:
    """A cell's progress as a share of the whole plot."""

    index: int
    count: int

    def fraction(self, inner: float) -> float:
        return (self.index + inner) / max(1, self.count)


def fixed_seed_axes(plot: PlotRequest, plan) -> PlotRequest:
    """The plot with a Seed axis's -1 values written as the seeds drawn, so a re-run repeats them."""
    changes = {}
    for prefix, axis in zip("xyz", plan.axes):
        if axis.kind == "Seed":
            changes[f"{prefix}_values"] = ", ".join(str(value) for value in axis.values)
    return dataclasses.replace(plot, **changes) if changes else plot


def run_plot(runner, plot: PlotRequest, on_progress, cancel, rerun_of: int | None, source: str,
             queued_at: float | None, job: dict | None = None):
    """Every cell, in A1111's order, as its own run; then the grid. Interrupt keeps the finished cells."""
    from studio.jobs import Progress, RunResult

    started = time.perf_counter()
    if rerun_of is not None:  # the cells of a re-run need the LoRA files the first cells used, unchanged
        for child in runner.history.lineage(rerun_of)[1]:
            runner.models.registry.loras.check_recorded(child.loras, child.id)
    base = runner.prepare(plot.base)  # model, size, seed and control maps made concrete once, for every cell
    plan = plan_cells(base, plot.axes(), max_cells=runner.settings.plot_max_cells,
                      known_models=list(runner.models.registry.entries()))
    plot = fixed_seed_axes(dataclasses.replace(plot, base=base), plan)  # what the grid's row records
    grid_id = runner.start_plot_row(plot, rerun_of, source, queued_at, len(plan.cells), job)
    results: dict[tuple[int, int, int], Any] = {}
    cells_done: list = []
    status, error_text = "done", None
    with runner.history.heartbeat(grid_id):
        try:
            for index, cell in enumerate(plan.cells):
                if cancel.cancelled:
                    status = "interrupted"
                    break
                share = PlotProgress(index, len(plan.cells))
                label = ", ".join(text for text in cell.labels if text)

                def report(progress, share=share, label=label):
                    on_progress(Progress(share.fraction(progress.fraction),
                                         f"cell {share.index + 1}/{share.count} ({label}): {progress.message}",
                                         progress.preview, progress.step, progress.total_steps, progress.started))

                request = dataclasses.replace(cell.request, parent_run_id=grid_id)
                result = runner.run(request, on_progress=report, cancel=cancel, source=source)
                if result.images:
                    results[(cell.x, cell.y, cell.z)] = result.images[0]
                    cells_done.append(result)
                if result.status == "interrupted":
                    status = "interrupted"
                    break
        except StudioError as error:
            status, error_text = "failed", str(error)
            failure = error
        except BaseException as error:
            status, error_text = "failed", f"{type(error).__name__}: {error}"
            failure = error
        grid = plan.draw(results)
        params = plan.infotext_params()
        text = runner.plot_infotext(plot, params)
        refs = runner.history.finish(grid_id, [(grid, plot.base.seed, text, plot.record()[0])], status=status,
                                     duration_s=time.perf_counter() - started,
                                     timings={"cells": len(cells_done), "of": len(plan.cells)},
                                     error=error_text or ("interrupted by the user" if status == "interrupted" else None))
    if status == "failed":
        raise failure
    on_progress(Progress(1.0, f"plot {status}: {len(cells_done)} of {len(plan.cells)} cells"))
    return RunResult(grid_id, status, plot, [plot.base.seed, *[r.seeds[0] for r in cells_done]],
                     [grid, *[r.images[0] for r in cells_done]], [*refs, *[r.outputs[0] for r in cells_done]],
                     [text, *[r.infotexts[0] for r in cells_done]], time.perf_counter() - started)


AXIS_CHOICES = tuple(AXIS_KINDS)


def check_plot(runner, plot: PlotRequest):
    """Plan the cells now (nothing runs), so a bad axis or a plot over the cell limit is refused before queuing."""
    validate(plot)
    return plan_cells(plot.base, plot.axes(), max_cells=runner.settings.plot_max_cells,
                      known_models=list(runner.models.registry.entries()))
