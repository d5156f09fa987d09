"""The contract between the front service and the Triton models in model_repository/, in one place.

The model code runs inside Triton (the NGC image has no `service` package), so
model_repository/*/1/model.py and config.pbtxt restate these values; tests/test_contract.py
checks that they agree.
"""

MODELS = ("sscd", "sscd_distilled")

# Tensors of one request: square RGB canvases and the number of views to embed of each.
IMAGE = "IMAGE"  # uint8 [batch, S, S, 3]
VIEWS = "VIEWS"  # int32 [batch, 1]
FEATURE = "FEATURE"  # float32 [batch, DIMENSIONS], unit length
THRESHOLD = "THRESHOLD"  # float32 [batch, 1]: the farthest view's distance from the mean
RUNTIME = "RUNTIME"  # bytes [batch, 1]: what made the feature ("onnxruntime 1.20.1 CPUExecutionProvider int8")

DIMENSIONS = 512
MAX_BATCH = 16  # max_batch_size in config.pbtxt
MIN_CANVAS = 32  # the smallest canvas side the model accepts
# The seed's crops are cut from a resize to 1.1 x the network input, so the canvas is that size.
CANVAS_SCALE = 1.1


def canvas_size(input_size: int) -> int:
    """Side of the square canvas the front service sends for a network input side."""
    return round(input_size * CANVAS_SCALE)


def view_problem(views: int) -> str | None:
    """Why a view count is not one the model makes, or None if it is."""
    if views in (1, 2) or (views >= 10 and views % 10 == 0):
        return None
    return f"views must be 1, 2 or a multiple of 10 (50 is the seed's recipe), got {views}"
