"""Verification: a score near the threshold is checked against the candidate's stored reference
(media/verification.py's residual): a duplicate that does not survive it is refused, a score within
--verification-reach under the threshold is confirmed by a close alignment (core/judging.py)."""

import asyncio

from service.core.decision import Policy
from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.state import CheckState


class Verification:
    name = "verification"

    def __init__(self, judge: Judge, policy: Policy):
        self.judge = judge
        self.policy = policy

    def applies(self, query: Query, state: CheckState) -> bool:
        return bool(self.policy.verification_weight and state.whole.nearest)

    async def run(self, query: Query, state: CheckState) -> None:
        def verified():
            return self.judge.verified(state.whole, lambda: query.verification_picture, state.policy_of, query.side)

        state.judged(self.name, await asyncio.to_thread(verified))
