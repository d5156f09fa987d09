"""The boxes pasted on a picture, where the region stage looks for a copy shown inside it."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from service.media import insets
from service.media.imaging import Limits, decode
from service.media.preprocess import REGIONS, WINDOW_MARGIN, Preprocessor
from service.triton import contract
from tests.conftest import encode_jpeg, picture
from tests.test_verification import clock

HOST = "gnome-truchet.jpg"
SHOWN = "stamp-animals-mammals-deer-caribou.jpg"


def pasted(canvas: Image.Image, shown: Image.Image, left: int, top: int, side: int) -> tuple[Image.Image, tuple]:
    """The canvas with `shown` pasted at (left, top), its longest side `side`; and the true box."""
    shown = shown.copy()
    shown.thumbnail((side, side))
    canvas = canvas.copy()
    canvas.paste(shown, (left, top))
    width, height = canvas.size
    box = (left / width, top / height, shown.width / width, shown.height / height)
    return Image.open(io.BytesIO(encode_jpeg(canvas, 85))).convert("RGB"), box


LAYOUTS = {
    "on a picture": lambda: ImageOps.fit(picture(HOST), (512, 512)),
    "in a plain frame": lambda: Image.new("RGB", (512, 512), (30, 160, 120)),
    "on a collage": lambda: _collage(),
}


def _collage() -> Image.Image:
    canvas = Image.new("RGB", (512, 512))
    for corner, name in zip(((0, 0), (256, 0), (0, 256), (256, 256)), ["gnome-wood.jpg", HOST] * 2, strict=True):
        canvas.paste(ImageOps.fit(picture(name), (256, 256)), corner)
    return canvas


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("left", "top", "side"), [(300, 40, 180), (60, 250, 240)])
def test_a_pasted_picture_is_boxed(layout, left, top, side):
    """Not every one is (docs/quality.md measures how many): where the host is as light as the
    picture's edge along most of it, that edge does not step."""
    query, truth = pasted(LAYOUTS[layout](), picture(SHOWN), left, top, side)
    assert max(insets._overlap(found, truth) for found in insets.boxes(query)) >= 0.8


def test_a_drawing_on_white_has_no_box():
    assert insets.boxes(clock(3)) == []


def test_the_region_stage_cuts_the_boxes_and_the_grid_and_the_windows_when_asked():
    query, truth = pasted(LAYOUTS["on a picture"](), picture(SHOWN), 300, 40, 180)
    data = encode_jpeg(query)
    preprocessor = Preprocessor(224, Limits(min_side=32), None, keypoints=False)
    regions = preprocessor.regions(preprocessor.decode(data), with_grid=False)
    boxes, canvases = regions.boxes, regions.canvases
    assert boxes and canvases.shape == (len(boxes), 224, 224, 3) and canvases.dtype == np.uint8
    assert regions.window_canvas is None
    width, height = decode(data, 448, Limits(min_side=32)).size  # the picture cut: at least twice the canvas
    assert regions.picture.size == (width, height)
    sides = [
        (round((x + w) * width) - round(x * width), round((y + h) * height) - round(y * height)) for x, y, w, h in boxes
    ]
    assert [regions.crop(i).size for i in range(len(boxes))] == sides
    with_grid = preprocessor.regions(preprocessor.decode(data), with_grid=True)
    assert with_grid.boxes == boxes + REGIONS and len(with_grid.canvases) == len(boxes) + len(REGIONS)
    with_windows = preprocessor.regions(preprocessor.decode(data), with_grid=False, with_windows=True)
    assert with_windows.boxes == boxes + contract.window_boxes() and len(with_windows.canvases) == len(boxes)
    side = contract.canvas_size(contract.WINDOW_INPUT)
    assert with_windows.window_canvas.shape == (side, side, 3)
    first_window = len(boxes)  # (0, 0, 4/14, 4/14): cut with its margin, as far as the picture reaches
    grown = contract.window_boxes()[0][2] * (1 + WINDOW_MARGIN)
    assert with_windows.crop(first_window).size == (round(grown * width), round(grown * height))
    plain = preprocessor.regions(preprocessor.decode(encode_jpeg(clock(3))), with_grid=False)
    assert plain.boxes == [] and plain.canvases.shape == (0, 224, 224, 3)
