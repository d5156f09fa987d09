"""Small views: a thumbnail (a query under --small-query-side) that the pictures as enrolled did not
confirm is searched among their small views (each picture shrunk to --small-view-side at enrolment,
storage/small_views.py), and is a duplicate only when verification confirms it (core/judging.py)."""

import asyncio

from service.core.decision import Policy
from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.search import NEIGHBOURS
from service.core.stages.state import CheckState
from service.storage.small_views import SmallViews
from service.storage.store import Store


class SmallViewSearch:
    name = "small_views"

    def __init__(self, small_views: SmallViews | None, store: Store, judge: Judge, policy: Policy):
        self.small_views = small_views  # None: not enrolled
        self.store = store
        self.judge = judge
        self.policy = policy

    def applies(self, query: Query, state: CheckState) -> bool:
        return self.small_views is not None and not state.is_duplicate and self.policy.is_small(query.side)

    async def run(self, query: Query, state: CheckState) -> None:
        def searched():
            found = self.small_views.nearest(state.feature, max(state.top_k, NEIGHBOURS), state.collections)
            with self.store.read() as view:
                nearest = [(record, distance) for id_, distance in found if (record := view.by_id(id_)) is not None]
            return self.judge.through_small_views(
                state.feature, nearest, state.background_similarity, lambda: query.verification_picture
            )

        small = await asyncio.to_thread(searched)
        if not small.decision.is_duplicate:
            return
        state.confirmed(self.name, small, small_view=True)
