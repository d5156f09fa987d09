"""Enrolment: a stream of (key, image, metadata) to durable records, in batches."""

import asyncio
import contextlib
import hashlib
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from service.core.streams import Window, answered_in_batches
from service.media.imaging import ImageError
from service.media.preprocess import Described
from service.storage.collections import name_problem
from service.storage.records import MAX_KEY_BYTES, Enrolment, stored_name
from service.storage.store import Store
from service.triton.client import Hasher

SHOWN_KEY_CHARS = 40  # of a bad key, in messages and logs
INVALID = "INVALID"  # besides the store's ENROLLED, UPDATED and UNCHANGED
BATCHES_IN_FLIGHT = 2  # of one stream: the next is decoded and hashed while the one before is in Triton


@dataclass(frozen=True)
class EnrollItem:
    key: str
    image: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # set when the request itself could not be read: the item is INVALID
    collection: str = ""

    @property
    def name(self) -> tuple[str, str]:
        """What is unique in the store: the key within its collection."""
        return self.collection, self.key

    @property
    def size(self) -> int:
        """Roughly what the item holds in memory while it waits, in bytes."""
        return len(self.image) + len(self.key) + sum(len(k) + len(v) for k, v in self.metadata.items())


@dataclass(frozen=True)
class ItemLimits:
    max_metadata_entries: int = 64
    max_metadata_bytes: int = 8192


@dataclass(frozen=True)
class EnrollOutcome:
    key: str
    status: str  # ENROLLED, UPDATED, UNCHANGED or INVALID
    id: int = 0
    error: str = ""  # why, when INVALID


@dataclass
class Item:
    request: EnrollItem
    sha256: bytes = b""
    canvas: np.ndarray | None = None
    keypoints: bytes = b""
    reference: bytes = b""
    reference_points: bytes = b""
    small_canvas: np.ndarray | None = None
    result: EnrollOutcome | None = None


def key_problem(key: str) -> str | None:
    """Why a key cannot be stored, or None. Keys are stored exactly as sent, so they must be in
    Unicode NFC (one spelling per key: "é" composed, not e + accent); clients normalise."""
    if not key:
        return "key is empty: every image needs the caller's identifier (a path, a URL)"
    if len(key.encode()) > MAX_KEY_BYTES:
        return f"key {shown(key)} is {len(key.encode())} bytes of UTF-8; at most {MAX_KEY_BYTES}"
    if "\0" in key:
        return f"key {shown(key)} holds a NUL character"
    if not unicodedata.is_normalized("NFC", key):
        return f"key {shown(key)} is not in Unicode NFC form: normalise it (unicodedata.normalize('NFC', key))"
    return None


def shown(key: str, prefix: int = SHOWN_KEY_CHARS) -> str:
    """At most a short prefix of a caller's key, for messages and logs."""
    return repr(key[:prefix] + ("..." if len(key) > prefix else ""))


def item_problem(item: EnrollItem, limits: ItemLimits) -> str | None:
    """Why an item cannot be enrolled whatever its image, or None."""
    if item.problem:
        return item.problem
    if problem := key_problem(item.key) or name_problem(item.collection):
        return problem
    if len(stored_name(item.collection, item.key)) > MAX_KEY_BYTES:
        return f"key {shown(item.key)} and collection {item.collection!r} are {MAX_KEY_BYTES} bytes or more together"
    if len(item.metadata) > limits.max_metadata_entries:
        return f"metadata has {len(item.metadata)} entries; at most {limits.max_metadata_entries}"
    size = sum(len(k.encode()) + len(v.encode()) for k, v in item.metadata.items())
    if size > limits.max_metadata_bytes:
        return f"metadata is {size} bytes of UTF-8; at most {limits.max_metadata_bytes}"
    return None


class Enroller:
    """Hashes and stores batches of enrolment requests.

    Per batch: items whose key already holds the same bytes are UNCHANGED without hashing; the
    rest are decoded in threads, embedded in one Triton request and written in one LMDB
    transaction. Results are returned only after that transaction commits, so an
    acknowledged item is durable.
    """

    def __init__(
        self,
        hasher: Hasher,
        store: Store,
        describe: Callable[[bytes], Described],
        model_identity: str,
        views: int,
        limits: ItemLimits = ItemLimits(),
    ):
        self.hasher = hasher
        self.store = store
        self.describe = describe  # bytes -> the canvas and what is stored beside the feature
        self.model_identity = model_identity
        self.views = views
        self.limits = limits

    async def stream(
        self,
        requests: AsyncIterator[EnrollItem],
        window: Window,
        batch_size: int,
        timeout_s: Callable[[], float],
    ) -> AsyncIterator[EnrollOutcome]:
        """Answers a request stream in order. At most `window` requests (in count and in bytes)
        are read ahead of the answers, so a client sending faster than the service hashes is
        held back by gRPC flow control instead of filling memory; a stream that sends nothing
        for `window.idle_s` ends with StreamIdle."""
        # Two batches in flight: the next one is decoded and hashed while the one before is still
        # in Triton. Each commits after the one before it (whose keys are uncommitted until it is
        # done); answers keep stream order.
        before: tuple[asyncio.Future | None, frozenset[tuple[str, str]]] = (None, frozenset())

        def enrolled_after_the_one_before(batch: list[EnrollItem]) -> asyncio.Future:
            nonlocal before
            after, its_keys = before
            uncommitted = its_keys if after is not None and not after.done() else frozenset()
            task = asyncio.ensure_future(self.enroll(batch, timeout_s(), after, uncommitted))
            before = task, frozenset(request.name for request in batch)
            return task

        answering = answered_in_batches(requests, window, BATCHES_IN_FLIGHT, batch_size, enrolled_after_the_one_before)
        async with contextlib.aclosing(answering) as batches:
            async for results in batches:
                for result in results:
                    yield result

    async def enroll(
        self,
        requests: list[EnrollItem],
        timeout_s: float,
        after: asyncio.Future | None = None,
        uncommitted: frozenset[tuple[str, str]] = frozenset(),
    ) -> list[EnrollOutcome]:
        """Enrols one batch; its LMDB transaction waits for `after` (the previous batch's, which
        writes the keys `uncommitted`) to commit."""
        await asyncio.to_thread(self.store.check_model, self.model_identity)
        items = [Item(request) for request in requests]
        for item in items:
            problem = item_problem(item.request, self.limits)
            item.result = self._invalid(item, problem) if problem else None
            item.sha256 = hashlib.sha256(item.request.image).digest()
        pending = await asyncio.to_thread(self._skip_unchanged, items, uncommitted)
        await asyncio.gather(*(self._decode(item) for item in pending))
        to_hash = [item for item in pending if item.result is None]
        descriptors, small_views = [], []
        if to_hash:  # each canvas, then the small views' (in the same request)
            small = [item.small_canvas for item in to_hash if item.small_canvas is not None]
            canvases = np.stack([item.canvas for item in to_hash] + small)
            descriptors = await self.hasher.hash(canvases, [self.views] * len(canvases), timeout_s, wait=True)
            descriptors, small_descriptors = descriptors[: len(to_hash)], iter(descriptors[len(to_hash) :])
            small_views = [
                next(small_descriptors).feature if item.small_canvas is not None else None for item in to_hash
            ]
        if after is not None:
            await after
        if to_hash:
            enrolments = [
                Enrolment(
                    item.request.key,
                    item.sha256,
                    d.feature,
                    d.threshold,
                    dict(item.request.metadata),
                    item.keypoints,
                    d.runtime,
                    item.request.collection,
                    item.reference,
                    item.reference_points,
                    small_view,
                )
                for item, d, small_view in zip(to_hash, descriptors, small_views, strict=True)
            ]
            written = await asyncio.to_thread(self.store.enroll, self.model_identity, enrolments)
            for item, outcome in zip(to_hash, written, strict=True):
                item.result = EnrollOutcome(item.request.key, outcome.status, outcome.record.id)
        return [item.result for item in items]

    def _skip_unchanged(self, items: list[Item], uncommitted: frozenset[tuple[str, str]]) -> list[Item]:
        """Answers the items whose key already holds these bytes; returns the others.

        A key written before it in this batch or in the uncommitted one before may hold other
        bytes by the time this batch commits, so such an item is left to the store to judge."""
        pending = []
        written_before = set(uncommitted)
        with self.store.read() as view:
            for item in items:
                if item.result is not None:
                    continue
                existing = view.by_key(item.request.key, item.request.collection)
                if item.request.name not in written_before and existing is not None and existing.sha256 == item.sha256:
                    item.result = EnrollOutcome(item.request.key, "UNCHANGED", existing.id)
                else:
                    pending.append(item)
                written_before.add(item.request.name)
        return pending

    async def _decode(self, item: Item) -> None:
        try:
            described = await asyncio.to_thread(self.describe, item.request.image)
            item.canvas, item.keypoints, item.reference = described.canvas, described.keypoints, described.reference
            item.reference_points, item.small_canvas = described.reference_points, described.small_canvas
        except ImageError as error:
            item.result = self._invalid(item, str(error))

    @staticmethod
    def _invalid(item: Item, error: str) -> EnrollOutcome:
        return EnrollOutcome(item.request.key, INVALID, error=error)
