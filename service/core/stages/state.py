"""What every stage of a Check reads and leaves: the query's running answer (CheckState) and the
answer it becomes (CheckResult)."""

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from service.core.decision import Policy
from service.core.query import Query
from service.core.searches import Match, Search
from service.media.preprocess import Box


@dataclass(frozen=True)
class CheckResult:
    is_duplicate: bool
    identical: bool  # byte-identical to the matches
    matches: list[Match]  # nearest first
    score: float  # the deciding rule's score of the nearest match
    background_similarity: float
    index_generation: int
    low_information: bool = False  # near-blank: never a duplicate but of identical bytes
    region: Box | None = None  # the part of the query the matches were found in (None: the whole)
    region_score: float = float("-inf")  # the best region's score, when regions were searched
    views: int = 0  # views embedded by Triton for this Check
    rule: str = ""  # the deciding collection's rule ("": the service's)
    residual: float | None = None  # verification's, when it ran
    small_view: bool = False  # the matches were found among small views (distances to those)
    decided_by: str = ""  # the stage whose verdict this is (core/stages/__init__.py)


@dataclass
class CheckState:
    """One Check as its stages leave it. `whole` is the whole picture's neighbours as judged so far;
    a stage that answers with other matches (identical bytes, a small view, a region) sets `found`."""

    top_k: int
    collections: frozenset[str] | None  # searched (None: all)
    timeout_s: Callable[[], float]  # what is left for Triton now
    index_generation: int
    policy_of: Callable[[str], Policy]  # each collection's policy, read once per Check
    feature: np.ndarray | None = None
    background_similarity: float = 0.0
    views: int = 0
    whole: Search | None = None
    inliers: int = -1  # the geometric check's, when it ran
    low_information: bool = False
    region_score: float = float("-inf")
    found: CheckResult | None = None
    decided_by: str = ""
    done: bool = False  # no later stage runs

    @property
    def is_duplicate(self) -> bool:
        if self.found is not None:
            return self.found.is_duplicate
        return self.whole is not None and any(self.whole.decision.each)

    def judged(self, stage: str, whole: Search) -> None:
        """`stage` judged the whole picture's neighbours again: it decided if it changed the verdict."""
        before = self.is_duplicate
        self.whole = whole
        if self.is_duplicate != before or not self.decided_by:
            self.decided_by = stage

    def answered(self, stage: str, found: CheckResult) -> None:
        """`stage` found the answer: no later stage runs."""
        self.found, self.decided_by, self.done = found, stage, True

    def confirmed(self, stage: str, search: Search, **where) -> None:
        """`stage` found the answer in `search`, a duplicate it confirmed (`where`: the region, or small views)."""
        self.answered(stage, self._answer(search, inliers=-1, **where))

    def result(self) -> CheckResult:
        if self.found is not None:
            return replace(self.found, decided_by=self.decided_by)
        return self._answer(
            self.whole,
            inliers=self.inliers,
            low_information=self.low_information,
            region_score=self.region_score,
            decided_by=self.decided_by,
        )

    def _answer(self, search: Search, inliers: int, **more) -> CheckResult:
        each = search.decision.each
        return CheckResult(
            is_duplicate=any(each),
            identical=False,
            matches=search.matches(each, inliers)[: self.top_k],
            score=search.decision.score,
            background_similarity=self.background_similarity,
            index_generation=self.index_generation,
            views=self.views,
            rule=search.rule,
            residual=search.residual,
            **more,
        )


class Stage(Protocol):
    name: str

    def applies(self, query: Query, state: CheckState) -> bool:
        """Can this stage change the answer now? (Cheap: a stage that cannot is not run.)"""
        ...

    async def run(self, query: Query, state: CheckState) -> None: ...
