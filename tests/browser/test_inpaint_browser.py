"""In a real browser: paint a mask stroke on the editor canvas, inpaint, and check where pixels changed."""

import io
import time

import numpy as np
import pytest
from PIL import Image
from tests_support import wait_for

pytestmark = pytest.mark.browser


def textured(size=(200, 136), seed=3):
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.full((h, w, 3), (40, 160, 90), dtype=float) + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _dark_box(page, selector: str):
    """Where dark pixels (our test pictures) fill most of a row/column of the editor's canvas, or None."""
    canvas = page.locator(f"{selector} canvas").first
    box = canvas.bounding_box()
    if box is None:
        return None
    shot = np.array(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    dark = shot.min(axis=-1) < 200
    rows = np.where(dark.mean(axis=1) > 0.3)[0]
    cols = np.where(dark.mean(axis=0) > 0.3)[0]
    if rows.size == 0 or cols.size == 0:
        return None
    scale_x = box["width"] / shot.shape[1]
    scale_y = box["height"] / shot.shape[0]
    return (float(box["x"] + cols.min() * scale_x), float(box["y"] + rows.min() * scale_y),
            float(box["x"] + (cols.max() + 1) * scale_x), float(box["y"] + (rows.max() + 1) * scale_y))


def displayed_image_box(page, selector: str, timeout_s: float = 30.0) -> tuple[float, float, float, float]:
    """Where the picture sits on screen inside the editor, found in screenshots.

    The editor's empty surroundings are white or light grey; our test pictures are darker, so
    the rows and columns mostly made of dark pixels are the picture. On a cold, busy machine the
    upload takes a while to be drawn (and the editor may still re-fit it), so this waits until
    the picture is there and its box is the same in two screenshots in a row.
    """
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        current = _dark_box(page, selector)
        if current is not None and current == previous:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"the editor did not show the picture within {timeout_s} s (last box: {current})")
        previous = current
        page.wait_for_timeout(300)


def upload_to_editor(page, selector: str, path) -> tuple[float, float, float, float]:
    """Upload a picture into an image editor and return where it is drawn on screen.

    The editor reads the file in the browser and draws it with WebGL (software-rendered here);
    a file given while it is still setting up its canvas is sometimes dropped, and the editor
    stays empty. A user would upload again; so does this, up to three times.
    """
    page.locator(selector).get_by_text("Upload an image").wait_for()
    page.locator(f"{selector} canvas").first.wait_for()
    for attempt in range(3):
        page.locator(f"{selector} input[type=file]").set_input_files(str(path))
        try:
            return displayed_image_box(page, selector, timeout_s=15.0)
        except AssertionError:
            if attempt == 2:
                raise


def paint_stroke(page, screen_box, image_size, start, end):
    """Drag the brush from one image-pixel point to another."""
    left, top, right, bottom = screen_box
    sx = (right - left) / image_size[0]
    sy = (bottom - top) / image_size[1]
    page.mouse.move(left + start[0] * sx, top + start[1] * sy)
    page.mouse.down()
    for t in np.linspace(0, 1, 12):
        x = start[0] + (end[0] - start[0]) * t
        y = start[1] + (end[1] - start[1]) * t
        page.mouse.move(left + x * sx, top + y * sy)
    page.mouse.up()


def test_painted_stroke_is_where_the_image_changes(page, services, tmp_path):
    picture = textured()
    path = tmp_path / "picture.png"
    picture.save(path)
    page.get_by_role("tab", name="Inpaint").click()
    screen_box = upload_to_editor(page, "#inpaint-editor", path)
    # a stroke in the upper-left part only: a flip or an offset would move the change elsewhere
    paint_stroke(page, screen_box, picture.size, (30, 35), (90, 35))
    page.locator("#inpaint-prompt textarea").fill("a blue square")
    page.locator("#inpaint-strength input[type=number]").fill("1")
    page.locator("#inpaint-strength input[type=number]").press("Enter")
    page.locator("#inpaint-generate").click()
    wait_for(lambda: services.history.count() == 1 and services.history.search()[0].status == "done")
    record = services.history.search()[0]
    assert record.mode == "inpaint"
    inputs = services.history.load_inputs(record)
    painted = np.array(inputs["mask"]) > 0
    rows, cols = np.where(painted)
    assert 20 <= rows.mean() <= 50 and 40 <= cols.mean() <= 80, "the mask is not where the stroke was drawn"
    assert np.array_equal(np.array(inputs["image"]), np.array(picture))
    out = np.array(Image.open(record.outputs[0].path).convert("RGB")).astype(int)
    changed = np.any(out != np.array(picture).astype(int), axis=-1)
    assert changed.any()
    ys, xs = np.where(changed)
    assert ys.max() < 80 and xs.max() < 130, "pixels changed away from the stroke"
    grown = np.zeros_like(painted)
    margin = 4 * 3  # mask blur 4 spreads about 3 sigma
    for dy in range(-margin, margin + 1, 2):
        for dx in range(-margin, margin + 1, 2):
            grown |= np.roll(np.roll(painted, dy, axis=0), dx, axis=1)
    assert not (changed & ~grown).any(), "a pixel outside the painted stroke (plus blur) changed"
    assert changed[painted].mean() > 0.9


def txt2img_then_inpaint(page, services, stroke):
    """Generate a picture, send it to inpaint, paint one stroke on it and inpaint: (source, edit, picture)."""
    page.locator("#txt2img-prompt textarea").fill("a red circle")
    page.locator("#txt2img-generate").click()
    page.wait_for_selector("#txt2img-gallery img")
    wait_for(lambda: services.history.count() == 1 and services.history.search()[0].status == "done")
    source = services.history.search()[0]
    page.locator("#txt2img-send-inpaint").click()
    wait_for(lambda: page.locator("#inpaint-editor canvas").first.is_visible())
    picture = Image.open(source.outputs[0].path).convert("RGB")
    screen_box = displayed_image_box(page, "#inpaint-editor")
    paint_stroke(page, screen_box, picture.size, *stroke)
    page.locator("#inpaint-prompt textarea").fill("a blue square")
    page.locator("#inpaint-generate").click()
    wait_for(lambda: services.history.count() == 2 and services.history.search()[0].status == "done")
    return source, services.history.search()[0], picture


def test_send_a_txt2img_result_to_inpaint_and_keep_the_lineage(page, services):
    source, edit, picture = txt2img_then_inpaint(page, services, ((10, 32), (50, 32)))
    assert edit.mode == "inpaint" and edit.parent_id == source.id
    assert np.array_equal(np.array(services.history.load_inputs(edit)["image"]), np.array(picture))


def mask_on_screen(page, selector: str, picture: Image.Image, mask: Image.Image) -> tuple[float, float]:
    """How the editor draws a mask over its picture, read from a screenshot at each image pixel's centre.

    Returns the share of masked pixels drawn white (the brush paint) and the share of the other pixels
    drawn as the picture; pixels within 3 of the mask's edge count for neither.
    """
    canvas = page.locator(f"{selector} canvas").first
    left, top, right, bottom = displayed_image_box(page, selector)
    box = canvas.bounding_box()
    shot = np.array(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    scale_x, scale_y = shot.shape[1] / box["width"], shot.shape[0] / box["height"]
    w, h = picture.size
    xs = ((left - box["x"] + (np.arange(w) + 0.5) * (right - left) / w) * scale_x).astype(int)
    ys = ((top - box["y"] + (np.arange(h) + 0.5) * (bottom - top) / h) * scale_y).astype(int)
    seen = shot[np.clip(ys, 0, shot.shape[0] - 1)][:, np.clip(xs, 0, shot.shape[1] - 1)]
    painted = np.array(mask) > 0
    near_edge = np.zeros_like(painted)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            near_edge |= np.roll(np.roll(painted, dy, axis=0), dx, axis=1) != painted
    white = seen.min(axis=-1) > 230
    as_picture = np.abs(seen - np.array(picture).astype(int)).max(axis=-1) < 40
    return float(white[painted & ~near_edge].mean()), float(as_picture[~painted & ~near_edge].mean())


@pytest.mark.parametrize("before_restore", ["clear the editor", "open a fresh page"])
def test_restore_shows_the_mask_as_an_editable_layer_and_reruns_the_same_pixels(page, services, before_restore):
    # 128 px: the brush (24 px radius) then covers a band of the picture, not all of it
    for field in ("width", "height"):
        page.locator(f"#txt2img-{field} input[type=number]").fill("128")
        page.locator(f"#txt2img-{field} input[type=number]").press("Enter")
    _source, edit, picture = txt2img_then_inpaint(page, services, ((30, 40), (70, 40)))
    assert picture.size == (128, 128)
    mask = services.history.load_inputs(edit)["mask"]
    assert np.array(mask).any() and not np.array(mask).all()

    # the two ways the editor's brush is left set up for an 800x800 canvas, which hid the restored mask
    if before_restore == "clear the editor":
        page.locator("#inpaint-editor").get_by_label("Clear canvas").click()
        page.locator("#inpaint-editor").get_by_text("Upload an image").wait_for()
    else:
        page.reload()
        page.wait_for_selector("body[data-studio-shortcuts=ready]", state="attached")
    page.get_by_role("tab", name="History").click()
    page.locator("#history-refresh").click()
    page.locator("#history-gallery img").first.click()
    wait_for(lambda: page.locator("#history-selected input").input_value() == str(edit.id))
    page.locator("#history-restore").click()
    page.locator("#inpaint-editor canvas").first.wait_for()

    # (a) the mask is drawn as white paint exactly where the stroke was, the picture elsewhere
    shares = []
    try:
        wait_for(lambda: shares.append(mask_on_screen(page, "#inpaint-editor", picture, mask))
                 or min(shares[-1]) > 0.95, timeout=30)
    except AssertionError:
        raise AssertionError(f"the restored mask is not shown (white where masked, picture elsewhere): "
                             f"{shares[-1] if shares else None}") from None

    # (b) Generate right away repeats the run: the same mask, the same pixels
    page.locator("#inpaint-generate").click()
    wait_for(lambda: services.history.count() == 3 and services.history.search()[0].status == "done")
    again = services.history.search()[0]
    assert again.seed == edit.seed
    assert np.array_equal(np.array(services.history.load_inputs(again)["mask"]), np.array(mask))
    assert again.outputs[0].path.read_bytes() == edit.outputs[0].path.read_bytes()

    # (c) the restored paint is a layer the eraser edits: rub out the middle of the band
    page.locator("#inpaint-editor").get_by_label("Erase").click()
    paint_stroke(page, displayed_image_box(page, "#inpaint-editor"), picture.size, (50, 10), (50, 70))
    page.locator("#inpaint-generate").click()
    wait_for(lambda: services.history.count() == 4 and services.history.search()[0].status == "done")
    erased = np.array(services.history.load_inputs(services.history.search()[0])["mask"]) > 0
    painted = np.array(mask) > 0
    assert not (erased & ~painted).any(), "the eraser added paint"
    rows, cols = np.where(painted & ~erased)
    assert rows.size and 35 <= cols.mean() <= 65, "the eraser did not rub out the middle of the band"
    assert erased[40, :20].any() and erased[40, 80:].any(), "the eraser took the whole band"
