"""The X/Y/Z plot core: A1111's range syntax, the plan of cells (validated requests) and the drawn grid."""

import random

import pytest
from PIL import Image, ImageFont

from studio.errors import InputError
from studio.requests import InpaintRequest, Txt2ImgRequest, validate
from studio.xyz import (
    MISSING,
    PlotAxis,
    draw_grid,
    label_font_size,
    parse_values,
    plan_cells,
    row_label_width,
    split_values,
)

BASE = Txt2ImgRequest(prompt="a cat in a hat <lora:style:0.3>", negative_prompt="blurry cat", seed=42)


def inpaint(**values):
    return InpaintRequest(prompt="a cat", image=Image.new("RGB", (64, 64)), mask=Image.new("L", (64, 64), 255),
                          seed=1, **values)


@pytest.mark.parametrize(("text", "values"), [
    ("1-5", (1, 2, 3, 4, 5)),
    ("1-10 (+3)", (1, 4, 7, 10)),
    ("10-1 (-3)", (10, 7, 4, 1)),  # inclusive both ways (A1111's range() stops at 4)
    ("1-10 (3)", (1, 4, 7, 10)),  # an unsigned step follows the range
    ("10-1 (3)", (10, 7, 4, 1)),
    ("1-10 [5]", (1, 3, 5, 7, 10)),  # A1111: int(np.linspace(1, 10, 5))
    ("10-1 [4]", (10, 7, 4, 1)),
    ("5-1", (5, 4, 3, 2, 1)),
    ("7-7", (7,)),
    ("1-10 [1]", (1,)),
    ("  1 -  10  (  +3 )  ", (1, 4, 7, 10)),
    ("1-10[5]", (1, 3, 5, 7, 10)),
    ("20, 1-3, 40", (20, 1, 2, 3, 40)),
    ("007, 8", (7, 8)),
])
def test_int_ranges(text, values):
    assert parse_values("Steps", text, Txt2ImgRequest) == values
    assert all(type(v) is int for v in parse_values("Steps", text, Txt2ImgRequest))


@pytest.mark.parametrize(("kind", "text", "values"), [
    ("CFG Scale", "1-2 (+0.25)", (1.0, 1.25, 1.5, 1.75, 2.0)),
    ("CFG Scale", "1-1.3 (+0.1)", (1.0, 1.1, 1.2, 1.3)),  # exact: no 1.2000000000000002, and 1.3 is reached
    ("CFG Scale", "2-1 (-0.5)", (2.0, 1.5, 1.0)),
    ("CFG Scale", "1-4", (1.0, 2.0, 3.0, 4.0)),
    ("CFG Scale", "4 - 12 [ 5 ]", (4.0, 6.0, 8.0, 10.0, 12.0)),
    ("CFG Scale", "7, 7.5, 8.", (7.0, 7.5, 8.0)),
    ("Denoising", "0.5-1 [3]", (0.5, 0.75, 1.0)),
    ("Denoising", ".25-.75 [3]", (0.25, 0.5, 0.75)),
    ("Denoising", "0-0.3 (+0.1)", (0.0, 0.1, 0.2, 0.3)),
    ("Denoising", "5e-1", (0.5,)),
    ("LoRA weight", "-1-1 [3]", (-1.0, 0.0, 1.0)),
    ("LoRA weight", "-1--0.5 (+0.25)", (-1.0, -0.75, -0.5)),
])
def test_float_ranges(kind, text, values):
    assert parse_values(kind, text, InpaintRequest) == values
    assert all(type(v) is float for v in parse_values(kind, text, InpaintRequest))


def test_quoted_and_multiline_lists_read_as_csv():
    assert split_values('"a, b", c', "x_values") == ["a, b", "c"]
    assert split_values('a,  "b, c" ,d', "x_values") == ["a", "b, c", "d"]
    assert split_values('"a, b" , c', "x_values") == ["a, b", "c"]
    assert split_values("1, 2\n3", "x_values") == ["1", "2", "3"]
    assert parse_values("Prompt S/R", 'cat, "tabby, striped cat"', Txt2ImgRequest) == ("cat", "tabby, striped cat")


@pytest.mark.parametrize(("kind", "text", "says"), [
    ("Steps", "1-", "write 1-5, 1-10 (+2), 1-10 [5] or a comma list"),
    ("Steps", "1-10 (", "is not a range"),
    ("Steps", "1-10 [5", "is not a range"),
    ("Steps", "1-10 (+2.5)", "is not a range"),
    ("Steps", "1-2-3", "is not a range"),
    ("CFG Scale", "1-", "write 0.5-1 [3], 1-2 (+0.25) or a comma list"),
    ("Steps", "7.5", "is not a whole number; Steps takes values like"),
    ("Steps", "abc", "is not a number; write Steps values like 10, 20"),
    ("CFG Scale", "nan", "is not a number"),
    ("CFG Scale", "inf", "is not a number"),
    ("Steps", "", "is empty; write the Steps values"),
    ("Steps", "   ", "is empty"),
    ("Steps", "10,,20", "value 2 is empty (a stray comma?)"),
    ("Steps", "10, 20,", "value 3 is empty"),
    ("Steps", "200", "200 is out of range for Steps; use 1 to 150"),
    ("Steps", "0", "out of range for Steps; use 1 to 150"),
    ("Steps", "100-200 (+50)", "200 is out of range"),
    ("CFG Scale", "0.5", "out of range for CFG Scale; use 1 to 30"),
    ("Seed", "4294967296", "use -1 to 4294967295"),
    ("Seed", "1-4294967295", "gives 4,294,967,295 values, over the plot's limit of 100 cells"),
    ("Steps", "1-150 [101]", "over the plot's limit of 100"),
    ("LoRA weight", "20", "out of range for LoRA weight; use -10 to 10"),
    ("Steps", "1-10 (+0)", "has a step of 0"),
    ("Steps", "1-10 [0]", "asks for no values"),
    ("Steps", "1-10 (-2)", "steps away from 10; write 1-10 (+2)"),
    ("Steps", "10-1 (+2)", "write 10-1 (-2)"),
    ("Steps", "1-3 [5]", "would repeat values: only 3 whole numbers lie from 1 to 3; write 1-3 [3]"),
    ("CFG Scale", "1.5-2", "gives only 1.5: the step is larger than the range"),
    ("Steps", '"10, 20', "has an unclosed quote"),
    ("Steps", '"10"0', "has a quote in the middle of a value"),
    ("Sampler", "Eulr", "is not a sampler; choose from DPM++ 2M"),
    ("Sampler", "DPM++ 2M Karras", "write DPM++ 2M and use a Schedule type axis"),
    ("Schedule type", "Exponential", "choose Automatic or Karras"),
    ("Prompt S/R", ", dog", "starts with an empty value; the first value is the text to replace"),
    ("Steps", "1\x002", "NUL"),
    ("Seed", "9" * 5000, "is too long for a number or a range"),
    ("CFG Scale", "1e999", "inf is out of range"),
])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_bad_values_name_their_axis_and_the_fix(kind, text, says, position):
    axes = [PlotAxis("Nothing")] * 3
    axes[position] = PlotAxis(kind, text)
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, axes)
    assert caught.value.field == ("x_values", "y_values", "z_values")[position]
    assert says in caught.value.message
    assert "\n" not in caught.value.message


def test_unknown_axis_type_and_the_same_type_twice():
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, [PlotAxis("Steps", "1"), PlotAxis("Clip skip", "1, 2")])
    assert caught.value.field == "y_type" and "choose one of Nothing, Seed, Steps" in caught.value.message
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, [PlotAxis("Steps", "10"), PlotAxis("CFG Scale", "7"), PlotAxis("steps", "20")])
    assert (caught.value.field, caught.value.message) == ("z_type", "Steps is already the X axis; choose another "
                                                          "type for Z")
    assert plan_cells(BASE, [PlotAxis("Nothing"), PlotAxis("Nothing", "ignored"), PlotAxis("Steps", "5")]).shape == \
        (1, 1, 1)
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, [PlotAxis("Steps", "1")] * 4)
    assert caught.value.field == "axes"


def test_samplers_schedules_and_checkpoints():
    assert parse_values("Sampler", "euler A, dpm++ 2m, k_lms, PLMS", Txt2ImgRequest) == (
        "Euler a", "DPM++ 2M", "LMS", "PNDM")
    assert parse_values("schedule TYPE", "karras, Automatic", Txt2ImgRequest) == (True, False)
    models = ["sd-v1-5.safetensors", "SDXL base", "sdxl-turbo"]
    plan = plan_cells(BASE, [PlotAxis("Checkpoint name", "sd-v1-5.safetensors, sdxl base, v1-5")], known_models=models)
    assert [c.request.model for c in plan.cells] == ["sd-v1-5.safetensors", "SDXL base", "sd-v1-5.safetensors"]
    assert plan.axes[0].labels == ("sd-v1-5.safetensors", "SDXL base", "sd-v1-5.safetensors")
    for text, says in (("sdxl", "matches several models (SDXL base, sdxl-turbo); write the full name"),
                       ("flux", "is not a model here; choose from sd-v1-5.safetensors, SDXL base")):
        with pytest.raises(InputError) as caught:
            plan_cells(BASE, [PlotAxis("Steps", "20"), PlotAxis("Checkpoint name", text)], known_models=models)
        assert caught.value.field == "y_values" and says in caught.value.message
    with pytest.raises(ValueError):
        plan_cells(BASE, [PlotAxis("Checkpoint name", "x")])


def test_prompt_search_and_replace_as_a1111():
    plan = plan_cells(BASE, [PlotAxis("Prompt S/R", 'cat, dog, "red fox", ')])
    assert plan.axes[0].labels == ("cat", "dog", "red fox", "(removed)")
    prompts = [(c.request.prompt, c.request.negative_prompt) for c in plan.cells]
    assert prompts == [
        ("a cat in a hat <lora:style:0.3>", "blurry cat"),  # the first value: the prompt unchanged
        ("a dog in a hat <lora:style:0.3>", "blurry dog"),  # both prompts, every occurrence
        ("a red fox in a hat <lora:style:0.3>", "blurry red fox"),
        ("a  in a hat <lora:style:0.3>", "blurry "),
    ]
    assert plan_cells(BASE, [PlotAxis("Prompt S/R", "blurry, sharp")]).cells[1].request.negative_prompt == "sharp cat"
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, [PlotAxis("Steps", "20"), PlotAxis("Prompt S/R", "dog, cat")])
    assert caught.value.field == "y_values"
    assert caught.value.message.startswith("'dog' (the first value: the text to replace) is in neither the prompt")


def test_lora_weight_rewrites_every_tag():
    base = Txt2ImgRequest(prompt="<lora:ink>, a castle <lora:paper:0.4>, <lora:old:0.5:0.7>", seed=1)
    plan = plan_cells(base, [PlotAxis("LoRA weight", "0-1 [3]")])
    assert [c.request.prompt for c in plan.cells] == [
        "<lora:ink:0>, a castle <lora:paper:0>, <lora:old:0>",
        "<lora:ink:0.5>, a castle <lora:paper:0.5>, <lora:old:0.5>",
        "<lora:ink:1>, a castle <lora:paper:1>, <lora:old:1>"]
    assert plan.axes[0].labels == ("LoRA weight: 0", "LoRA weight: 0.5", "LoRA weight: 1")
    with pytest.raises(InputError) as caught:
        plan_cells(Txt2ImgRequest(prompt="a castle"), [PlotAxis("LoRA weight", "0, 1")])
    assert caught.value.field == "x_values" and "no <lora:NAME:weight> tag" in caught.value.message


def test_cell_limit_names_the_axes_and_counts():
    three = [PlotAxis("Steps", "1-3"), PlotAxis("CFG Scale", "1-5"), PlotAxis("Seed", "1-10")]
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, three)
    assert caught.value.field == "axes"
    assert caught.value.message == ("3 x 5 x 10 = 150 cells is over the limit of 100; shorten the X (Steps), "
                                    "Y (CFG Scale) or Z (Seed) values")
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, [PlotAxis("Nothing"), PlotAxis("Steps", "1-20"), PlotAxis("Seed", "1-6")])
    assert caught.value.message == ("20 x 6 = 120 cells is over the limit of 100; shorten the Y (Steps) or "
                                    "Z (Seed) values")
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, [PlotAxis("Seed", ", ".join(map(str, range(12))))], max_cells=10)
    assert caught.value.message == "12 cells is over the limit of 10; shorten the X (Seed) values"
    with pytest.raises(InputError) as caught:  # a range is measured before it is built
        plan_cells(BASE, [PlotAxis("Seed", "1-12")], max_cells=10)
    assert caught.value.field == "x_values" and "'1-12' gives 12 values" in caught.value.message
    assert len(plan_cells(BASE, [PlotAxis("Steps", "1-10"), PlotAxis("Seed", "1-10")]).cells) == 100


def test_plan_cells_indices_labels_and_valid_requests():
    plan = plan_cells(BASE, [PlotAxis("Steps", "10, 20"), PlotAxis("CFG Scale", "5, 7.5, 9"),
                             PlotAxis("Sampler", "Euler a, ddim")])
    assert plan.shape == (2, 3, 2) and len(plan.cells) == 12
    assert {(c.x, c.y, c.z) for c in plan.cells} == {(x, y, z) for x in range(2) for y in range(3) for z in range(2)}
    cell = plan.cell(1, 2, 1)
    assert (cell.request.steps, cell.request.cfg_scale, cell.request.sampler) == (20, 9.0, "DDIM")
    assert cell.labels == ("Steps: 20", "CFG Scale: 9", "DDIM")
    assert plan.axes[1].labels == ("CFG Scale: 5", "CFG Scale: 7.5", "CFG Scale: 9")
    for c in plan.cells:
        assert validate(c.request) is c.request
        assert (c.request.prompt, c.request.seed) == (BASE.prompt, 42)
    # A1111's loop order: z outermost, then y, then x
    assert [(c.x, c.y, c.z) for c in plan.cells[:3]] == [(0, 0, 0), (1, 0, 0), (0, 1, 0)]


def test_a_checkpoint_axis_is_looped_outermost():
    plan = plan_cells(BASE, [PlotAxis("Checkpoint name", "a, b"), PlotAxis("Steps", "1, 2"), PlotAxis("Seed", "1, 2")],
                      known_models=["a", "b"])
    models = [c.request.model for c in plan.cells]
    assert models == ["a"] * 4 + ["b"] * 4  # each model loads once
    assert [(c.x, c.y, c.z) for c in plan.cells[:3]] == [(0, 0, 0), (0, 1, 0), (0, 0, 1)]  # then z, then y


def test_seeds_follow_a1111():
    base = Txt2ImgRequest(prompt="p", seed=-1)
    plan = plan_cells(base, [PlotAxis("Steps", "1-4")], rng=random.Random(1))
    seeds = {c.request.seed for c in plan.cells}
    assert len(seeds) == 1 and seeds.pop() >= 0  # drawn once, shared: the axis is the only difference
    plan = plan_cells(base, [PlotAxis("Seed", "-1, 7, -1")], rng=random.Random(1))
    seeds = [c.request.seed for c in plan.cells]
    assert seeds[1] == 7 and seeds[0] >= 0 and seeds[2] >= 0 and seeds[0] != seeds[2]
    assert plan.axes[0].labels == tuple(f"Seed: {s}" for s in seeds)  # the label shows the seed that ran
    assert plan.infotext_params() == {"Script": "X/Y/Z plot", "X Type": "Seed", "X Values": "-1, 7, -1",
                                      "Fixed X Values": ", ".join(map(str, seeds))}
    assert plan_cells(base, [PlotAxis("Steps", "1")], rng=random.Random(5)).cells[0].request.seed == \
        plan_cells(base, [PlotAxis("Steps", "1")], rng=random.Random(5)).cells[0].request.seed


def test_denoising_needs_a_mode_that_has_it():
    with pytest.raises(InputError) as caught:
        plan_cells(BASE, [PlotAxis("Steps", "20"), PlotAxis("Denoising", "0.5")])
    assert caught.value.field == "y_type"
    assert caught.value.message == ("Denoising does not apply to txt2img (it has no denoising strength); choose "
                                    "another Y type, or plot it in inpaint, outpaint, control")
    plan = plan_cells(inpaint(), [PlotAxis("Denoising", "0.25-1 [4]")])
    assert [c.request.denoise_strength for c in plan.cells] == [0.25, 0.5, 0.75, 1.0]
    assert plan.axes[0].labels[0] == "Denoising: 0.25"


def test_a_cell_the_request_refuses_names_the_cell():
    with pytest.raises(InputError) as caught:  # 0.1 x 5 steps is no denoising step at all
        plan_cells(inpaint(steps=5), [PlotAxis("Steps", "5, 20"), PlotAxis("Denoising", "0.1, 0.5")])
    assert caught.value.field == "y_values"
    assert caught.value.message.startswith("in the cell Steps: 5, Denoising: 0.1: 0.1 x 5 steps leaves no")
    with pytest.raises(InputError) as caught:  # the base request's own fault is reported as it is
        plan_cells(InpaintRequest(prompt="a cat"), [PlotAxis("Denoising", "0.5")])
    assert (caught.value.field, caught.value.message) == ("image", "is missing; upload an image")


CELL = (128, 96)


def tile(colour, size=CELL):
    return Image.new("RGB", size, colour)


def band_metrics(cell=CELL):
    size = label_font_size(*cell)
    font = ImageFont.load_default(size=size)
    return size, sum(font.getmetrics()), size // 2


def ink(image, box):
    """Pixels in box that are not the white background."""
    return sum(1 for p in image.crop(box).getdata() if p != (255, 255, 255))


def test_draw_grid_size_cells_and_labels():
    size, line, pad = band_metrics()
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    images = [[tile(c) for c in colours]]
    grid = draw_grid(images, ["Steps: 10", "Steps: 20", "Steps: 30"], ["CFG Scale: 5", "CFG Scale: 7"], [""])
    left, top = row_label_width(CELL[0], size), line + 2 * pad  # one line of labels, padded
    assert grid.size == (left + 3 * CELL[0], top + 2 * CELL[1])
    for index, colour in enumerate(colours):  # row by row, from the bottom-right block
        x, y = left + (index % 3) * CELL[0], top + (index // 3) * CELL[1]
        assert grid.getpixel((x, y)) == colour and grid.getpixel((x + CELL[0] - 1, y + CELL[1] - 1)) == colour
    for column in range(3):  # every column label and row label is actually drawn
        assert ink(grid, (left + column * CELL[0], 0, left + (column + 1) * CELL[0], top)) > 20
    for row in range(2):
        assert ink(grid, (0, top + row * CELL[1], left, top + (row + 1) * CELL[1])) > 20
    assert ink(grid, (0, 0, left, top)) == 0  # no titles given: the corner stays empty
    assert size == 12  # the minimum: small cells still get legible labels


def test_draw_grid_missing_cells_are_grey_and_the_rest_stays():
    size, line, pad = band_metrics()
    left, top = row_label_width(CELL[0], size), line + 2 * pad
    grid = draw_grid([[tile((255, 0, 0)), None, tile((0, 0, 255))]], ["a", "b"], ["c", "d"])  # stops short too
    assert grid.size == (left + 2 * CELL[0], top + 2 * CELL[1])
    for index, expected in enumerate([(255, 0, 0), MISSING, (0, 0, 255), MISSING]):
        x, y = left + (index % 2) * CELL[0], top + (index // 2) * CELL[1]
        block = grid.crop((x, y, x + CELL[0], y + CELL[1]))
        assert set(block.getdata()) == {expected}
    with pytest.raises(ValueError):
        draw_grid([[None]], ["a"], ["b"])  # nothing to size the grid by
    assert set(draw_grid([[None]], [""], [""], cell_size=(32, 32)).getdata()) == {MISSING}


def test_draw_grid_z_grids_side_by_side_under_their_labels():
    size, line, pad = band_metrics()
    sub_width = row_label_width(CELL[0], size) + 2 * CELL[0]
    images = [[tile((255, 0, 0))] * 2, [tile((0, 255, 0))] * 2]
    grid = draw_grid(images, ["Steps: 1", "Steps: 2"], ["Seed: 1"], ["Sampler: Euler", "Sampler: DDIM"],
                     x_title="Steps", y_title="Seed")
    z_band, top = line + 2 * pad, 2 * line + 2 * pad  # the corner's "X: Steps" and "Y: Seed" take two lines
    assert grid.size == (2 * sub_width, z_band + top + CELL[1])
    for z in range(2):
        assert ink(grid, (z * sub_width, 0, (z + 1) * sub_width, z_band)) > 20  # the z label
        assert grid.getpixel((z * sub_width + sub_width - 1, z_band + top)) == ((255, 0, 0), (0, 255, 0))[z]
        assert grid.getpixel((z * sub_width + sub_width - 1, z_band + top - 1)) == (255, 255, 255)
    # without titles the column band is one line
    assert draw_grid(images, ["Steps: 1", "Steps: 2"], ["Seed: 1"], ["a", "b"]).size[1] == z_band + z_band + CELL[1]
    grid_titled = draw_grid([[tile((255, 0, 0))] * 2], ["Steps: 1", "Steps: 2"], ["Seed: 1"], x_title="Steps",
                            y_title="Seed")
    assert grid_titled.size[1] == 2 * line + 2 * pad + CELL[1]
    assert ink(grid_titled, (0, 0, row_label_width(CELL[0], size), 2 * line + 2 * pad)) > 20


def test_draw_grid_wraps_long_labels_and_drops_empty_bands():
    size, line, pad = band_metrics()
    long = "a very fluffy dog sitting in a remarkably tall top hat"
    grid = draw_grid([[tile((9, 9, 9))] * 2], ["cat", long], [""])
    assert grid.size[0] == 2 * CELL[0]  # no row labels: no left band
    assert grid.size[1] > 2 * line + 2 * pad + CELL[1] - 1  # the long label took several lines
    assert grid.size[1] <= 4 * line + 2 * pad + CELL[1]  # and at most four
    bare = draw_grid([[tile((9, 9, 9))]], [""], [""], [""])
    assert bare.size == CELL and set(bare.getdata()) == {(9, 9, 9)}


def test_draw_grid_fits_odd_sizes_and_is_deterministic():
    images = [[tile((255, 0, 0)), tile((0, 0, 255), (256, 96)), None]]
    first = draw_grid(images, ["a", "b", "c"], ["d"], x_title="X", y_title="Y")
    assert first.tobytes() == draw_grid(images, ["a", "b", "c"], ["d"], x_title="X", y_title="Y").tobytes()
    size, line, pad = band_metrics()
    left = row_label_width(CELL[0], size)
    top = first.size[1] - CELL[1]
    # the wide image is fitted whole (128 x 48), centred in its cell, background around it
    x0 = left + CELL[0]
    assert first.getpixel((x0 + 64, top + 48)) == (0, 0, 255)
    assert first.getpixel((x0 + 64, top + 5)) == (255, 255, 255)


def test_plan_draw_places_results_by_index():
    plan = plan_cells(BASE, [PlotAxis("Steps", "10, 20"), PlotAxis("Prompt S/R", "cat, dog")])
    results = {(1, 1, 0): tile((0, 255, 0))}
    assert plan.arrange(results) == [[None, None, None, results[(1, 1, 0)]]]
    grid = plan.draw(results)
    assert grid.getpixel((grid.size[0] - 1, grid.size[1] - 1)) == (0, 255, 0)
    assert grid.getpixel((grid.size[0] - CELL[0] - 1, grid.size[1] - 1)) == MISSING
