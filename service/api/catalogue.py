"""The catalogue's RPCs, part of NearDupServicer: collection settings, the "not a duplicate"
memory (storage/dismissals.py) and the duplicate groups (core/grouping.py)."""

import asyncio
import functools
import hashlib
import logging

import numpy as np

from service.api.collection_stats import collection_stats
from service.api.errors import KeyNotFound, RequestError, grpc_errors
from service.core.decision import settable_rules, with_rule
from service.core.enrollment import key_problem, shown
from service.core.grouping import Progress, find_groups
from service.core.searches import Search
from service.media import verification
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.collections import CollectionSettings, name_problem
from service.storage.collections import set_settings as set_collection_settings
from service.storage.dismissals import Dismissal
from service.storage.records import Record

log = logging.getLogger(__name__)


def require_name(key: str, collection: str) -> None:
    """A request's key and collection, or the RequestError that says what is wrong with them."""
    if problem := key_problem(key) or name_problem(collection):
        raise RequestError(problem)


def _message(entry: Dismissal) -> pb.Dismissal:
    return pb.Dismissal(id=entry.id, key=entry.key, collection=entry.collection, created_at=entry.created_at)


class CatalogueMethods:
    """Mixed into NearDupServicer (its settings, store, checker and dismissals)."""

    @grpc_errors
    async def SetCollection(self, request: pb.SetCollectionRequest, context) -> pb.CollectionStats:
        if problem := name_problem(request.collection):
            raise RequestError(problem)
        chosen = None
        if not request.reset:
            try:
                with_rule(self.settings.decision, request.rule, request.threshold)
            except (KeyError, ValueError):
                rules = ", ".join(settable_rules())
                raise RequestError(f"rule {request.rule!r} cannot be set for a collection; one of {rules}") from None
            chosen = CollectionSettings(request.rule, request.threshold)
        await asyncio.to_thread(set_collection_settings, self.store, request.collection, chosen)
        log.info("collection %r: %s", request.collection, chosen or "the service's settings")
        [stats] = collection_stats(self.store, self.checker.judge.policies(), request.collection)
        return stats

    @grpc_errors
    async def Dismiss(self, request: pb.DismissRequest, context) -> pb.Dismissal:
        require_name(request.key, request.collection)
        if request.query_key:
            require_name(request.query_key, request.query_collection)
        elif not request.image:
            raise RequestError("send the picture that is not a duplicate: image, or query_key of an enrolled one")
        with self.store.read() as view:
            target = view.by_key(request.key, request.collection)
            query = view.by_key(request.query_key, request.query_collection) if request.query_key else None
        if target is None:
            raise KeyNotFound(f"no image is enrolled under key {shown(request.key)} in {request.collection!r}")
        if request.query_key and query is None:
            raise KeyNotFound(f"no image is enrolled under query_key {shown(request.query_key)}")
        if query is not None:
            feature = query.feature
        elif hashlib.sha256(request.image).digest() == target.sha256:
            raise RequestError("the image is the enrolled image itself: it cannot be dismissed against its own key")
        else:
            views, timeout_s = self.settings.triton.check_views, self._triton_timeout(context)
            feature = (await self.checker.embed(request.image, views, timeout_s)).feature
        entry = await asyncio.to_thread(self.dismissals.add, feature, request.collection, request.key, target.sha256)
        log.info("dismissal %d against %s in collection %r", entry.id, shown(request.key), request.collection)
        return _message(entry)

    @grpc_errors
    async def ListDismissals(self, request: pb.ListDismissalsRequest, context) -> pb.ListDismissalsResponse:
        if request.key:
            require_name(request.key, request.collection)
            entries = await asyncio.to_thread(self.dismissals.of_key, request.collection, request.key)
        else:
            entries = await asyncio.to_thread(self.dismissals.every)
        live = await asyncio.to_thread(self._drop_inert, entries)
        return pb.ListDismissalsResponse(dismissals=[_message(entry) for entry in live])

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

    @grpc_errors
    async def RemoveDismissal(self, request: pb.RemoveDismissalRequest, context) -> pb.Dismissal:
        entry = await asyncio.to_thread(self.dismissals.remove, request.id)
        if entry is None:
            raise KeyNotFound(f"no dismissal has id {request.id}")
        return _message(entry)

    def _judged(self, record: Record, others: list[tuple[Record, float]]) -> Search:
        """An enrolled record judged as a query, verified with its own reference for a picture."""
        judge = self.checker.judge
        reference = judge.reference(record)
        picture = functools.cache(lambda: verification.picture_of(reference) if reference else None)
        return judge.judge(record.feature.astype(np.float32), others, 0.0, picture)

    @grpc_errors
    async def FindDuplicates(self, request: pb.FindDuplicatesRequest, context):
        collection = request.collection or None
        if problem := name_problem(request.collection):
            raise RequestError(problem)
        await asyncio.to_thread(self.checker.up_to_date)
        found = find_groups(self.store, self.index, self._judged, collection, self.settings.limits.duplicates_cpu_share)
        checked = total = 0
        groups = 0
        async for item in found:
            if isinstance(item, Progress):
                checked, total = item.checked, item.total
                yield pb.DuplicateGroup(records_checked=checked, records_total=total)
                continue
            groups += 1
            yield pb.DuplicateGroup(
                keys=[key for _, key in item.names], collections=[c for c, _ in item.names], scores=item.scores,
                records_checked=checked, records_total=total,
            )  # fmt: skip
        log.info("FindDuplicates%s: %d records, %d groups", f" in {collection!r}" if collection else "", total, groups)
