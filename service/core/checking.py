"""Checking: is an image a near-duplicate of an enrolled one, and of which?

A Check makes the caller's bytes a Query (decoded once, core/query.py) and runs the decision's
pipeline of stages on it (core/pipeline.py, core/stages/): identical bytes, the embedding, the
search and each collection's rule, verification, the "not a duplicate" memory, near-blank
pictures, the geometric check, thumbnails' small views and regions, in that order, each run only
when it can change the answer. The answer names the stage that decided it."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from service import metrics
from service.core.decision import Policy
from service.core.judging import Judge
from service.core.pipeline import Pipeline, check_pipeline
from service.core.query import Query
from service.core.stages.state import CheckResult, CheckState
from service.media.preprocess import Preprocessor
from service.storage.background import Background
from service.storage.small_views import SmallViews
from service.storage.store import Store
from service.storage.vector_index import VectorIndex
from service.triton.client import Descriptor, Hasher


@dataclass(frozen=True)
class Checker:
    hasher: Hasher
    store: Store
    index: VectorIndex
    preprocessor: Preprocessor
    model_identity: str
    judge: Judge
    pipeline: Pipeline
    small_views: SmallViews | None = None  # caught up with the store before each Check (None: not enrolled)

    async def embed(self, image: bytes, views: int, timeout_s: float) -> Descriptor:
        """The image's descriptor alone (Hash, Dismiss): no decision."""
        canvas = await asyncio.to_thread(self.preprocessor.canvas, image)
        [descriptor] = await self.hasher.hash(canvas[None], [views], timeout_s)
        return descriptor

    def up_to_date(self) -> None:
        """The store holds our model's features, and the index has every change committed so
        far, by this process or by another worker on the same data directory (a cheap read when
        there is nothing new)."""
        self.store.check_model(self.model_identity)
        self.index.apply_changes()
        if self.small_views is not None:
            self.small_views.catch_up()

    async def check(
        self,
        image: bytes,
        top_k: int,
        timeout_s: Callable[[], float],
        collections: frozenset[str] | None = None,
    ) -> CheckResult:
        """`timeout_s()` is what is left for Triton now (the region stage asks again); only
        `collections` are searched (None: all)."""
        await asyncio.to_thread(self.up_to_date)
        state = CheckState(top_k, collections, timeout_s, self.index.stats().generation, self.judge.policies())
        return await self.pipeline.run(Query(image, self.preprocessor), state)


def build_checker(
    hasher: Hasher,
    store: Store,
    index: VectorIndex,
    preprocessor: Preprocessor,
    background: Background,
    policy: Policy,
    model_identity: str,
    views: int,
    judge: Judge,
    small_views: SmallViews | None = None,
) -> Checker:
    """The service's Checker: its pipeline of stages made from the decision's settings."""
    pipeline = check_pipeline(hasher, store, index, background, policy, judge, views, small_views)
    metrics.start_stages(pipeline.names)
    return Checker(hasher, store, index, preprocessor, model_identity, judge, pipeline, small_views)
