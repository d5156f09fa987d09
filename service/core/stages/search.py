"""Search: the query's nearest records, each collection's candidates decided by its own rule
(core/decision.py), the margin's "other picture" skipping the nearest one's twins (core/judging.py)."""

import asyncio

from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.state import CheckState
from service.storage.vector_index import VectorIndex

# Neighbours a Check decides among, however few it returns: the margin rule needs the nearest
# picture other than the nearest one's twins (the same picture enrolled under other keys).
NEIGHBOURS = 8


class Search:
    name = "search"

    def __init__(self, index: VectorIndex, judge: Judge):
        self.index = index
        self.judge = judge

    def applies(self, query: Query, state: CheckState) -> bool:
        return True

    async def run(self, query: Query, state: CheckState) -> None:
        def searched():
            nearest = self.index.nearest(state.feature, max(state.top_k, NEIGHBOURS), state.collections)
            return self.judge.decided(nearest, state.policy_of, state.background_similarity)

        state.judged(self.name, await asyncio.to_thread(searched))
