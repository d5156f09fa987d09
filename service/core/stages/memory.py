"""The "not a duplicate" memory: duplicates the caller dismissed for this picture (Dismiss), or for
one at least --dismissal-similarity close to it, are listed as dismissed instead."""

import asyncio

from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.state import CheckState


class Memory:
    name = "memory"

    def __init__(self, judge: Judge):
        self.judge = judge

    def applies(self, query: Query, state: CheckState) -> bool:
        return self.judge.dismissals is not None and any(state.whole.decision.each)

    async def run(self, query: Query, state: CheckState) -> None:
        kept = await asyncio.to_thread(self.judge.without_dismissed, state.feature, state.whole)
        state.judged(self.name, kept)
