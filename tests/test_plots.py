"""X/Y/Z plots as runs: cells are child rows of the grid's row, Interrupt keeps them, re-run repeats them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tests_support import fast_request

from studio.errors import InputError
from studio.plots import PlotRequest


def plot(**axes) -> PlotRequest:
    return PlotRequest(base=fast_request(seed=-1), **axes)


def test_every_cell_is_a_child_run_and_the_grid_is_recorded(services):
    result = services.queue.run(plot(x_type="Steps", x_values="1-2", y_type="Sampler", y_values="Euler, DDIM"))
    grid_row = services.history.get(result.run_id)
    children = [r for r in services.history.search() if r.parent_id == result.run_id]
    assert grid_row.mode == "xyz" and grid_row.status == "done" and len(grid_row.outputs) == 1
    assert sorted((r.steps, r.sampler) for r in children) == [(1, "DDIM"), (1, "Euler"), (2, "DDIM"), (2, "Euler")]
    # one seed for every cell (A1111: the axes are the only difference), the one the grid records
    assert {r.seed for r in children} == {grid_row.seed}
    assert "X Type: Steps, X Values: 1-2, Y Type: Sampler" in result.infotexts[0]
    # a cell is exactly the run its settings make alone
    euler_2 = next(r for r in children if (r.steps, r.sampler) == (2, "Euler"))
    alone = services.runner.run(fast_request(seed=grid_row.seed, steps=2, sampler="Euler"))
    with Image.open(euler_2.outputs[0].path) as recorded:
        assert np.array_equal(np.array(alone.images[0]), np.array(recorded.convert("RGB")))
    # the grid: 2 x 2 cells of 64 px plus label bands
    grid = result.images[0]
    assert grid.width > 128 and grid.height > 128


def test_restore_brings_the_plot_back_and_a_rerun_repeats_every_cell(services):
    result = services.queue.run(plot(x_type="Seed", x_values="-1, 5", y_type="CFG Scale", y_values="3, 9"))
    restored = services.runner.restore(result.run_id)
    assert isinstance(restored, PlotRequest) and restored.y_values == "3, 9"
    drawn = restored.x_values.split(", ")
    assert drawn[1] == "5" and drawn[0] != "-1"  # the drawn seed is written down, so a re-run repeats it
    again = services.runner.rerun(result.run_id)
    assert len(again.images) == len(result.images) == 5
    for first, second in zip(result.images, again.images):
        assert np.array_equal(np.array(first), np.array(second))
    assert services.history.get(again.run_id).rerun_of == result.run_id


def test_interrupt_keeps_the_finished_cells_and_greys_the_rest(services):
    job = None

    def stop_at_third_cell(progress):
        if progress.message.startswith("cell 3/"):
            job.cancel.cancel()

    job = services.queue.submit(plot(x_type="Steps", x_values="1, 2, 3, 4"), on_progress=stop_at_third_cell)
    result = services.queue.wait(job)
    grid_row = services.history.get(result.run_id)
    children = [r for r in services.history.search() if r.parent_id == result.run_id]
    assert grid_row.status == "interrupted"
    assert [r.status for r in sorted(children, key=lambda r: r.id)] == ["done", "done", "interrupted"]
    grid = np.array(result.images[0])
    assert (grid == 128).all(axis=2).sum() >= 64 * 64  # the fourth cell never ran: a grey square


def test_a_bad_plot_is_refused_naming_its_axis_and_nothing_is_recorded(services):
    from studio.plots import check_plot

    cases = [(plot(x_type="Steps", x_values="1-"), "x_values", "not a range"),
             (plot(x_type="Steps", x_values="1-20", y_type="CFG Scale", y_values="1-6"), "axes", "over the limit of 100"),
             (plot(x_type="Checkpoint name", x_values="nope"), "x_values", "nope"),
             (plot(y_type="Prompt S/R", y_values="blue, green"), "y_values", "neither the prompt")]
    for request, field, words in cases:
        with pytest.raises(InputError, match=words) as caught:
            check_plot(services.runner, request)
        assert caught.value.field == field
    with pytest.raises(InputError) as caught:
        services.queue.submit(plot(x_type="Steps", x_values="ten"))
    assert caught.value.field == "x_values"
    assert services.history.search() == []


def test_a_lora_weight_plot_and_its_rerun_check_the_lora_file(services):
    from studio.micro.lora_files import random_factors, save_lora
    from studio.micro.tiny import tiny_pipeline

    path = save_lora(services.settings.models_dir / "Lora" / "outline.safetensors",
                     random_factors(tiny_pipeline(0), seed=3, std=0.4))
    request = PlotRequest(base=fast_request(prompt="a cube <lora:outline:1>"), x_type="LoRA weight", x_values="0, 1")
    result = services.queue.run(request)
    cells = [r for r in services.history.search() if r.parent_id == result.run_id]
    assert sorted(r.prompt for r in cells) == ["a cube <lora:outline:0>", "a cube <lora:outline:1>"]
    assert not np.array_equal(np.array(result.images[1]), np.array(result.images[2]))
    save_lora(path, random_factors(tiny_pipeline(0), seed=4))
    with pytest.raises(InputError, match="'outline' changed since run"):
        services.runner.rerun(result.run_id)
