"""Mirror images as a policy: with --mirror distinct (the service's, or a collection's), a duplicate
the query shows mirrored (media/verification.py's shows_mirrored) is another picture."""

import asyncio

from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.state import CheckState


class Mirror:
    name = "mirror"

    def __init__(self, judge: Judge):
        self.judge = judge

    def applies(self, query: Query, state: CheckState) -> bool:
        whole = state.whole
        return any(
            duplicate and state.policy_of(record.collection).mirror == "distinct"
            for (record, _), duplicate in zip(whole.nearest, whole.decision.each, strict=True)
        )

    async def run(self, query: Query, state: CheckState) -> None:
        def judged():
            return self.judge.without_mirrored(state.whole, lambda: query.verification_picture, state.policy_of)

        state.judged(self.name, await asyncio.to_thread(judged))
