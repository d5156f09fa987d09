"""Identical bytes: an image byte-identical to enrolled ones is their duplicate under any rule,
found by its SHA-256 before anything is decoded or embedded."""

import asyncio

from service.core.decision import Candidate, Policy, decide
from service.core.query import Query
from service.core.searches import Match
from service.core.stages.state import CheckResult, CheckState
from service.storage.vector_index import VectorIndex


class Identical:
    name = "identical"

    def __init__(self, index: VectorIndex, policy: Policy):
        self.index = index
        self.policy = policy

    def applies(self, query: Query, state: CheckState) -> bool:
        return True

    async def run(self, query: Query, state: CheckState) -> None:
        found = await asyncio.to_thread(self.index.identical, query.sha256, state.collections)
        found = found[: state.top_k]
        if not found:
            return
        score = decide(self.policy, [Candidate(0.0, record.threshold) for record in found]).score
        matches = [Match(record, 0.0, True) for record in found]
        state.answered(self.name, CheckResult(True, True, matches, score, 0.0, state.index_generation))
