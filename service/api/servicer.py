"""The gRPC servicer: validates requests, calls the core, and maps to and from protobuf."""

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from service import metrics, scheduling
from service.api import scope
from service.api.catalogue import CatalogueMethods, collection_message
from service.api.errors import CALLER_MISTAKES, RequestError, grpc_errors, status_of
from service.api.health import Readiness
from service.api.interceptors import Malformed
from service.config import Settings
from service.core.catalogue import Catalogue
from service.core.checking import Checker, CheckResult
from service.core.collections import Collections, name_problem
from service.core.dismissing import Dismissing
from service.core.enrollment import Enroller, EnrollItem
from service.core.streams import Window, answered_in_order
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.proto.neardup.v1 import neardup_pb2_grpc as pb_grpc
from service.triton import contract

# CheckStream items checked at once (their Triton requests batch together).
CHECK_STREAM_PARALLEL = 8

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NearDup"].full_name
# Leave the caller this much of its deadline to receive our answer.
DEADLINE_MARGIN_S = 0.05


@dataclass(frozen=True)
class StreamedCheck:
    """One CheckStream item: a request, or why its message could not be parsed."""

    request: pb.CheckRequest | None
    problem: str = ""

    @property
    def size(self) -> int:
        return len(self.request.image) if self.request is not None else 0


def stage_stats(totals: metrics.StageTotals) -> pb.StageStats:
    decided = totals.decided
    return pb.StageStats(
        name=totals.name,
        runs=totals.runs,
        seconds=totals.seconds,
        duplicates=decided.get("duplicate", 0),
        not_duplicates=decided.get("new", 0),
        identical=decided.get("identical", 0),
    )


class NearDupServicer(CatalogueMethods, pb_grpc.NearDupServicer):
    def __init__(
        self,
        settings: Settings,
        checker: Checker,
        enroller: Enroller,
        catalogue: Catalogue,
        collections: Collections,
        dismissing: Dismissing,
        readiness: Readiness,
    ):
        self.settings = settings
        self.readiness = readiness
        self.checker = checker
        self.enroller = enroller
        self.catalogue = catalogue
        self.collections = collections
        self.dismissing = dismissing

    def _triton_timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.settings.triton.timeout_s
        return min(self.settings.triton.timeout_s, remaining - DEADLINE_MARGIN_S)

    @grpc_errors
    async def Hash(self, request: pb.HashRequest, context: grpc.aio.ServicerContext) -> pb.HashResponse:
        views = request.views or self.settings.triton.enroll_views
        problem = contract.view_problem(views)
        if problem:
            raise RequestError(problem)
        if views > self.settings.limits.max_views:
            raise RequestError(f"views must be at most {self.settings.limits.max_views}, got {views}")
        if views > self.settings.triton.check_views:
            scheduling.become_bulk()  # more model work than a Check: not ahead of bulk work
        descriptor = await self.checker.embed(request.image, views, self._triton_timeout(context))
        return pb.HashResponse(
            feature=descriptor.feature.tolist(),
            threshold=descriptor.threshold,
            model=self.settings.model_name,
            views=views,
            input_size=self.settings.triton.input_size,
        )

    @grpc_errors
    async def Check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        return await self._check(request, context)

    async def _check(self, request: pb.CheckRequest, context: grpc.aio.ServicerContext) -> pb.CheckResponse:
        top_k = request.top_k or 1
        if not 1 <= top_k <= self.settings.limits.max_top_k:
            raise RequestError(f"top_k must be between 1 and {self.settings.limits.max_top_k}, got {top_k}")
        for name in request.collections:
            if problem := name_problem(name):
                raise RequestError(problem)
        collections = scope.searched(frozenset(request.collections) or None)
        result = await self.checker.check(request.image, top_k, lambda: self._triton_timeout(context), collections)
        decision = "identical" if result.identical else "duplicate" if result.is_duplicate else "new"
        metrics.DECISIONS.labels(decision).inc()
        return self._check_response(result)

    def _check_response(self, result: CheckResult) -> pb.CheckResponse:
        matches = [
            pb.Match(
                key=match.record.key,
                id=match.record.id,
                distance=match.distance,
                threshold=match.record.threshold,
                is_duplicate=match.is_duplicate,
                metadata=match.record.metadata,
                inliers=match.inliers,
                nearest_similarity=match.nearest_similarity,
                collection=match.record.collection,
                dismissed=match.dismissed,
            )
            for match in result.matches
        ]
        region = (
            pb.Region(**dict(zip(("left", "top", "width", "height"), result.region, strict=True)))
            if result.region
            else None
        )
        searched_regions = result.region_score > float("-inf")
        return pb.CheckResponse(
            is_duplicate=result.is_duplicate,
            matches=matches,
            model=self.settings.model_name,
            index_generation=result.index_generation,
            identical=result.identical,
            score=result.score if math.isfinite(result.score) else 0.0,  # no match compared: no score
            decision_rule=result.rule or self.settings.decision.rule,
            background_similarity=result.background_similarity,
            low_information=result.low_information,
            region=region,
            region_score=result.region_score if searched_regions else None,
            residual=result.residual,
            views=result.views,
            small_view=result.small_view,
            decided_by=result.decided_by,
        )

    @grpc_errors
    async def Enroll(self, requests: AsyncIterator[pb.EnrollRequest], context: grpc.aio.ServicerContext):
        async def items() -> AsyncIterator[EnrollItem]:
            async for request in requests:
                if isinstance(request, Malformed):
                    yield EnrollItem("", b"", problem=request.reason)
                elif refused := scope.problem(request.collection):
                    yield EnrollItem(request.key, b"", problem=f"PERMISSION_DENIED: {refused}")
                else:
                    yield EnrollItem(request.key, request.image, dict(request.metadata), collection=request.collection)

        limits = self.settings.limits
        window = Window(limits.enroll_window, limits.enroll_window_bytes, limits.stream_idle_s)
        outcomes = self.enroller.stream(items(), window, limits.enroll_batch, lambda: self._triton_timeout(context))
        async for outcome in outcomes:
            metrics.ENROLLED.labels(outcome.status).inc()
            yield pb.EnrollResult(
                key=outcome.key, status=pb.EnrollResult.Status.Value(outcome.status), id=outcome.id, error=outcome.error
            )

    @grpc_errors
    async def CheckStream(self, requests: AsyncIterator[pb.CheckRequest], context: grpc.aio.ServicerContext):
        """Each item answered as Check would answer it; a caller's mistake (a bad image or field)
        is that item's `error`, a failure of ours (Triton down, overload) ends the stream with
        its status, as it would end a Check."""

        async def answer(item: StreamedCheck) -> pb.CheckResponse:
            if item.problem:
                return pb.CheckResponse(error=f"INVALID_ARGUMENT: {item.problem}")
            try:
                return await self._check(item.request, context)
            except CALLER_MISTAKES as error:
                return pb.CheckResponse(error=f"{status_of(error).name}: {error}")

        async def items() -> AsyncIterator[StreamedCheck]:
            async for request in requests:
                if isinstance(request, Malformed):
                    yield StreamedCheck(None, request.reason)
                else:
                    yield StreamedCheck(request)

        limits = self.settings.limits
        window = Window(limits.enroll_window, limits.enroll_window_bytes, limits.stream_idle_s)
        async for response in answered_in_order(items(), window, CHECK_STREAM_PARALLEL, answer):
            yield response

    @grpc_errors
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        scope.require(request.collection)
        await asyncio.to_thread(self.catalogue.delete, request.key, request.collection)
        return pb.DeleteResponse()

    @grpc_errors
    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        stats = await asyncio.to_thread(self.catalogue.stats)
        index = stats.index
        triton = self.settings.triton
        return pb.StatsResponse(
            records=stats.records,
            index_generation=index.generation,
            index_size=index.snapshot_size,
            unindexed_records=index.unindexed,
            removed_records=index.removed,
            not_ready=[f"{name}: {why}" for name, why in self.readiness.problems.items()],
            runtime=self.checker.hasher.runtime,
            stored_runtimes=[f"{runtime}: {count}" for runtime, count in stats.runtimes.items()],
            model=self.settings.model_name,
            bytes_on_disk=stats.bytes_on_disk,
            input_size=triton.input_size,
            views_per_check=triton.check_views,
            views_per_enroll=triton.enroll_views,
            collections=[collection_message(c) for c in stats.collections if scope.reaches(c.name)],
            stages=[stage_stats(totals) for totals in metrics.stage_totals()],
        )

    @grpc_errors
    async def ReloadIndex(self, request: pb.ReloadIndexRequest, context) -> pb.ReloadIndexResponse:
        done = await asyncio.to_thread(self.catalogue.reload_index)
        return pb.ReloadIndexResponse(index_generation=done.generation, reloaded=done.reloaded)
