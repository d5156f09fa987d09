"""Embedding: the query's canvas (its one decode) embedded by Triton, and its similarity to the
background set. Decides nothing; every later stage but `identical` needs it."""

import asyncio

from service.core.query import Query
from service.core.stages.state import CheckState
from service.storage.background import Background
from service.triton.client import Hasher


class Embedding:
    name = "embedding"

    def __init__(self, hasher: Hasher, background: Background, views: int):
        self.hasher = hasher
        self.background = background
        self.views = views  # per Check (--check-views)

    def applies(self, query: Query, state: CheckState) -> bool:
        return True

    async def run(self, query: Query, state: CheckState) -> None:
        # The canvas, and whether it is near-blank (a later stage asks), worked out off the event loop.
        canvas, _ = await asyncio.to_thread(lambda: (query.canvas, query.low_information))
        [descriptor] = await self.hasher.hash(canvas[None], [self.views], state.timeout_s())
        state.feature = descriptor.feature
        state.background_similarity = self.background.similarity(descriptor.feature)
        state.views = self.views
