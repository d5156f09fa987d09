"""The "not a duplicate" memory as callers use it: Dismiss, ListDismissals, RemoveDismissal, and
what a Delete forgets. The entries themselves are storage/dismissals.py's; the Judge
(core/judging.py) applies them to every answer."""

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable

import numpy as np

from service.core.collections import require_name
from service.core.enrollment import shown
from service.core.errors import KeyNotFound, QuotaReached, RequestError
from service.storage.dismissals import Dismissal as Dismissal  # what every method answers with
from service.storage.dismissals import Dismissals
from service.storage.store import Store

log = logging.getLogger(__name__)

# A picture's feature, as a Check's query would have it: (image bytes, Triton timeout in s) -> feature.
Embed = Callable[[bytes, float], Awaitable[np.ndarray]]


class Dismissing:
    def __init__(self, store: Store, dismissals: Dismissals, embed: Embed, reach: float, per_key: int) -> None:
        """`reach`: the cosine similarity within which an entry covers a query (--dismissal-similarity);
        `per_key`: the most entries against one key (--max-dismissals-per-key)."""
        self.store = store
        self.dismissals = dismissals
        self.embed = embed
        self.reach = reach
        self.per_key = per_key

    async def dismiss(
        self,
        key: str,
        collection: str,
        timeout_s: Callable[[], float],
        image: bytes = b"",
        query_key: str = "",
        query_collection: str = "",
    ) -> Dismissal:
        """Remembers that a picture (`image`, or the one enrolled under `query_key`) is not a
        duplicate of the image enrolled under `key`; `timeout_s()` bounds its embedding."""
        require_name(key, collection)
        if query_key:
            require_name(query_key, query_collection)
        elif not image:
            raise RequestError("send the picture that is not a duplicate: image, or query_key of an enrolled one")
        with self.store.read() as view:
            target = view.by_key(key, collection)
            query = view.by_key(query_key, query_collection) if query_key else None
        if target is None:
            raise KeyNotFound(f"no image is enrolled under key {shown(key)} in {collection!r}")
        if len(self.listed(key, collection)) >= self.per_key:
            raise QuotaReached(
                f"{shown(key)} has {self.per_key} 'not a duplicate' entries, the most one key may hold "
                "(--max-dismissals-per-key): remove some with RemoveDismissal first"
            )
        if query_key and query is None:
            raise KeyNotFound(f"no image is enrolled under query_key {shown(query_key)}")
        if query is not None:
            feature = query.feature
        elif hashlib.sha256(image).digest() == target.sha256:
            raise RequestError("the image is the enrolled image itself: it cannot be dismissed against its own key")
        else:
            feature = await self.embed(image, timeout_s())
        similarity = float(np.asarray(feature, np.float32) @ target.feature.astype(np.float32))
        if similarity >= self.reach:  # the entry would cover the key's own picture, and every copy of it
            raise RequestError(
                f"the picture is {shown(key)}'s own (cosine similarity {similarity:.3f} to it, within the "
                f"{self.reach} a dismissal covers): it cannot be dismissed against that key; Delete the key instead"
            )
        entry = await asyncio.to_thread(self.dismissals.add, feature, collection, key, target.sha256)
        log.info("dismissal %d against %s in collection %r", entry.id, shown(key), collection)
        return entry

    def listed(self, key: str = "", collection: str = "") -> list[Dismissal]:
        """The entries against a key (every entry when `key` is empty) that still apply."""
        if key:
            require_name(key, collection)
            entries = self.dismissals.of_key(collection, key)
        else:
            entries = self.dismissals.every()
        return self._drop_inert(entries)

    def _drop_inert(self, entries: list[Dismissal]) -> list[Dismissal]:
        """Entries whose key now holds another image (re-enrolled) no longer apply: removed."""
        with self.store.read() as view:
            holding = {(e.collection, e.key): view.by_key(e.key, e.collection) for e in entries}
        live = [e for e in entries if (record := holding[e.collection, e.key]) and record.sha256 == e.sha256]
        kept = {entry.id for entry in live}
        for entry in entries:
            if entry.id not in kept:
                self.dismissals.remove(entry.id)
        return live

    def remove(self, id_: int, reachable: Callable[[str], bool]) -> Dismissal:
        """Removes entry `id_` if the caller reaches its collection (else: as if it were absent)."""
        if (entry := self.dismissals.remove(id_, reachable)) is None:
            raise KeyNotFound(f"no dismissal has id {id_}")
        return entry

    def forget(self, collection: str, key: str) -> int:
        """Removes every entry against a key (it was deleted); returns how many."""
        return self.dismissals.forget(collection, key)
