"""The Enroll pipeline's ordering, with a stand-in for Triton whose earlier calls answer last.

The real Triton answers in about the order it is asked, so this is the way to show that a batch
hashed sooner than the one before it still commits and answers after it.
"""

import asyncio
import hashlib

import numpy as np
import pytest

from service.core.enrollment import Enroller, EnrollItem, EnrollOutcome
from service.core.streams import Window
from service.media.preprocess import Described
from service.storage.store import Store
from service.triton.client import Descriptor

MODEL = "stand-in@224"


class SlowerFirstHasher:
    """Answers call n after (5 - n) x 20 ms: the first batches come back last."""

    def __init__(self) -> None:
        self.calls = 0

    async def hash(
        self, canvases: np.ndarray, views: list[int], timeout_s: float, wait: bool = False
    ) -> list[Descriptor]:
        self.calls += 1
        await asyncio.sleep(max(5 - self.calls, 0) * 0.02)
        return [Descriptor(unit_vector(canvas), 0.1) for canvas in canvases]


def unit_vector(canvas: np.ndarray) -> np.ndarray:
    vector = np.random.default_rng(int(canvas[0, 0, 0])).normal(size=512).astype(np.float32)
    return vector / np.linalg.norm(vector)


def describe(image: bytes) -> Described:
    return Described(np.full((8, 8, 3), image[0], np.uint8), b"", b"")


async def enroll_all(enroller: Enroller, requests: list[EnrollItem]) -> list[EnrollOutcome]:
    async def stream():
        for request in requests:
            yield request

    return [
        result async for result in enroller.stream(stream(), Window(items=64), batch_size=4, timeout_s=lambda: 10.0)
    ]


def new_enroller(tmp_path) -> tuple[Enroller, Store, SlowerFirstHasher]:
    store = Store(tmp_path / "data")
    hasher = SlowerFirstHasher()
    return Enroller(hasher, store, describe, MODEL, views=1), store, hasher


def test_batches_hashed_out_of_order_commit_and_answer_in_stream_order(tmp_path):
    enroller, store, hasher = new_enroller(tmp_path)
    # Twenty images over four keys: each key is written five times, in five different batches.
    requests = [EnrollItem(f"key/{n % 4}", bytes([n])) for n in range(20)]
    results = asyncio.run(enroll_all(enroller, requests))

    assert hasher.calls == 5
    assert [r.key for r in results] == [r.key for r in requests]
    assert [r.status for r in results] == ["ENROLLED"] * 4 + ["UPDATED"] * 16
    ids = [r.id for r in results]
    assert ids == sorted(ids) and len(set(ids)) == 20  # committed in stream order
    with store.read() as view:
        for key_number in range(4):
            assert view.by_key(f"key/{key_number}").id == ids[16 + key_number]  # the last write wins
    store.close()


@pytest.mark.parametrize("where", ["the batch before", "the same batch"])
def test_bytes_a_key_already_holds_are_not_skipped_when_an_earlier_write_changes_it(tmp_path, where):
    """The key holds X; the stream writes Y and then X again: the key must end up holding X."""
    enroller, store, _ = new_enroller(tmp_path)
    x, y = bytes([1]), bytes([2])
    asyncio.run(enroll_all(enroller, [EnrollItem("a", x)]))
    filler = [EnrollItem(f"other/{n}", bytes([10 + n])) for n in range(3)]
    first, again = EnrollItem("a", y), EnrollItem("a", x)
    stream = [first, *filler, again] if where == "the batch before" else [first, again]
    results = asyncio.run(enroll_all(enroller, stream))

    assert [r.status for r in results if r.key == "a"] == ["UPDATED"] * 2
    with store.read() as view:
        assert view.by_key("a").sha256 == hashlib.sha256(x).digest()
    store.close()
