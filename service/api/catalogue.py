"""The catalogue's RPCs, part of NearDupServicer: collection settings (core/collections.py), the
"not a duplicate" memory (core/dismissing.py) and the duplicate groups (core/catalogue.py)."""

import asyncio
import logging

from service.api import scope
from service.api.errors import grpc_errors
from service.core.collections import CollectionStats
from service.core.dismissing import Dismissal
from service.core.grouping import Progress
from service.proto.neardup.v1 import neardup_pb2 as pb

log = logging.getLogger(__name__)


def collection_message(stats: CollectionStats) -> pb.CollectionStats:
    return pb.CollectionStats(
        name=stats.name,
        records=stats.records,
        rule=stats.rule,
        threshold=stats.threshold,
        own_settings=stats.own_settings,
        mirror=stats.mirror,
    )


def _message(entry: Dismissal) -> pb.Dismissal:
    message = pb.Dismissal(id=entry.id, key=entry.key, collection=entry.collection, created_at=entry.created_at)
    message.created.FromNanoseconds(round(entry.created_at * 1e9))
    return message


class CatalogueMethods:
    """Mixed into NearDupServicer (its settings, checker, catalogue, collections and dismissing)."""

    @grpc_errors
    async def SetCollection(self, request: pb.SetCollectionRequest, context) -> pb.CollectionStats:
        scope.require(request.collection)
        configure = self.collections.configure
        stats = await asyncio.to_thread(
            configure, request.collection, request.rule, request.threshold, request.reset, request.mirror
        )
        return collection_message(stats)

    @grpc_errors
    async def Dismiss(self, request: pb.DismissRequest, context) -> pb.Dismissal:
        scope.require(request.collection)
        if request.query_key:
            scope.require(request.query_collection)
        entry = await self.dismissing.dismiss(
            request.key,
            request.collection,
            lambda: self._triton_timeout(context),
            request.image,
            request.query_key,
            request.query_collection,
        )
        return _message(entry)

    @grpc_errors
    async def ListDismissals(self, request: pb.ListDismissalsRequest, context) -> pb.ListDismissalsResponse:
        if request.key:
            scope.require(request.collection)
        live = await asyncio.to_thread(self.dismissing.listed, request.key, request.collection)
        return pb.ListDismissalsResponse(dismissals=[_message(e) for e in live if scope.reaches(e.collection)])

    @grpc_errors
    async def RemoveDismissal(self, request: pb.RemoveDismissalRequest, context) -> pb.Dismissal:
        return _message(await asyncio.to_thread(self.dismissing.remove, request.id, scope.reaches))

    @grpc_errors
    async def FindDuplicates(self, request: pb.FindDuplicatesRequest, context):
        if request.collection:
            scope.require(request.collection)
        else:
            scope.whole_catalogue_allowed("FindDuplicates")
        collection = request.collection or None
        found = self.catalogue.groups(collection)
        await asyncio.to_thread(self.checker.up_to_date)
        checked = total = 0
        groups = 0
        async for item in found:
            if isinstance(item, Progress):
                checked, total = item.checked, item.total
                yield pb.DuplicateGroup(records_checked=checked, records_total=total)
                continue
            groups += 1
            yield pb.DuplicateGroup(
                keys=[key for _, key in item.names],
                collections=[c for c, _ in item.names],
                scores=[score for _, _, score in item.pairs],
                pairs=[pb.DuplicatePair(first=a, second=b, score=score) for a, b, score in item.pairs],
                records_checked=checked,
                records_total=total,
            )
        log.info("FindDuplicates%s: %d records, %d groups", f" in {collection!r}" if collection else "", total, groups)
