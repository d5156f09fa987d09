"""A Check as a pipeline of named stages (core/stages/), run in order until one settles the answer.

Each stage is asked first whether it can change the answer (`applies`: cheap), and only then run;
its time goes to the histogram neardup_check_stage_seconds{stage}, and the stage whose verdict
the answer is (CheckResult.decided_by) to neardup_check_decided_total{stage,decision}."""

import time
from dataclasses import dataclass

from service import metrics
from service.core.decision import Policy
from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.embedding import Embedding
from service.core.stages.geometric import Geometric
from service.core.stages.identical import Identical
from service.core.stages.low_information import LowInformation
from service.core.stages.memory import Memory
from service.core.stages.mirror import Mirror
from service.core.stages.regions import RegionSearch
from service.core.stages.search import Search
from service.core.stages.small_views import SmallViewSearch
from service.core.stages.state import CheckResult, CheckState, Stage
from service.core.stages.verification import Verification
from service.storage.background import Background
from service.storage.small_views import SmallViews
from service.storage.store import Store
from service.storage.vector_index import VectorIndex
from service.triton.client import Hasher


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self.stages]

    async def run(self, query: Query, state: CheckState) -> CheckResult:
        for stage in self.stages:
            if not stage.applies(query, state):
                continue
            started = time.perf_counter()
            try:
                await stage.run(query, state)
            finally:
                metrics.observe_stage(stage.name, time.perf_counter() - started)
            if state.done:
                break
        result = state.result()
        decision = "identical" if result.identical else "duplicate" if result.is_duplicate else "new"
        metrics.count_decided(result.decided_by, decision)
        return result


def check_pipeline(
    hasher: Hasher,
    store: Store,
    index: VectorIndex,
    background: Background,
    policy: Policy,
    judge: Judge,
    views: int,
    small_views: SmallViews | None,
) -> Pipeline:
    """The service's Check, stage by stage (core/stages/__init__.py says what each does), less
    those --skip-stages names."""
    stages = (
        Identical(index, policy),
        Embedding(hasher, background, views),
        Search(index, judge),
        Verification(judge, policy),
        Memory(judge),
        Mirror(judge),
        LowInformation(),
        Geometric(store, policy),
        SmallViewSearch(small_views, store, judge, policy),
        RegionSearch(hasher, index, judge, policy),
    )
    return Pipeline(tuple(stage for stage in stages if stage.name not in policy.skipped_stages()))
