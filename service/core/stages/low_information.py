"""Low information: a near-blank picture (media/imaging.py's LOW_INFORMATION_STD) is like every
other blank, so it is never a duplicate (but of identical bytes); its neighbours are still listed."""

from dataclasses import replace

from service.core.query import Query
from service.core.stages.state import CheckState


class LowInformation:
    name = "low_information"

    def applies(self, query: Query, state: CheckState) -> bool:
        return query.low_information

    async def run(self, query: Query, state: CheckState) -> None:
        whole = state.whole
        state.whole = replace(
            whole, decision=replace(whole.decision, is_duplicate=False, each=[False] * len(whole.nearest))
        )
        state.low_information, state.decided_by, state.done = True, self.name, True
