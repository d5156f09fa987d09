"""The geometric check (the seed's): a score within --geometric-band under the threshold is a
duplicate of its nearest record when ORB keypoints of the query and the record's stored ones agree
on a RANSAC homography with at least MIN_INLIERS inliers. Off by default (docs/quality.md)."""

import asyncio
from dataclasses import replace

from service.core.decision import Policy, is_borderline
from service.core.query import Query
from service.core.stages.state import CheckState
from service.media import geometry
from service.storage.store import Store


class Geometric:
    name = "geometric"

    def __init__(self, store: Store, policy: Policy):
        self.store = store
        self.policy = policy

    def applies(self, query: Query, state: CheckState) -> bool:
        whole = state.whole
        return bool(self.policy.geometric_band and is_borderline(self.policy, whole.decision)) and (
            0 not in whole.dismissed
        )

    async def run(self, query: Query, state: CheckState) -> None:
        record = state.whole.nearest[0][0]

        def inliers() -> int:
            with self.store.read() as view:
                stored = view.keypoints(record.id)
            return geometry.inliers(query.picture, stored)

        state.inliers = await asyncio.to_thread(inliers)
        if state.inliers >= geometry.MIN_INLIERS:
            whole = state.whole
            each = [True, *whole.decision.each[1:]]
            state.judged(self.name, replace(whole, decision=replace(whole.decision, each=each)))
