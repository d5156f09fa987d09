"""A feature's neighbours decided, each collection by its own rule (decision.py): the Search the
Judge (judging.py) then verifies, and the Matches a Check or FindDuplicates answers with."""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.core.decision import Candidate, Decision, Policy, decide
from service.storage.records import Record


@dataclass(frozen=True)
class Match:
    record: Record
    distance: float  # Euclidean between unit features
    is_duplicate: bool
    inliers: int = -1  # geometric check inliers; -1 when it did not run
    nearest_similarity: float = 1.0  # cosine of its enrolled feature to the nearest match's
    dismissed: bool = False  # a duplicate by the rule, but the caller said this picture is not one of it


@dataclass(frozen=True)
class Search:
    """One feature's neighbours and the judgement on them."""

    nearest: list[tuple[Record, float]]
    to_nearest: list[float]  # each neighbour's similarity to the nearest one of its collection
    decision: Decision
    rule: str = ""  # the rule of the collection whose decision this is
    dismissed: frozenset[int] = frozenset()  # positions of duplicates the memory overrode
    scores: list[float] = field(default_factory=list)  # per neighbour: its collection's rule's score of it
    deciding: int = 0  # the position of the deciding collection's nearest
    residual: float | None = None  # verification's, when it ran

    def matches(self, each: list[bool], inliers: int = -1) -> list[Match]:
        rows = zip(self.nearest, each, self.to_nearest, strict=True)
        return [
            Match(record, distance, duplicate, inliers if position == 0 else -1, similarity, position in self.dismissed)
            for position, ((record, distance), duplicate, similarity) in enumerate(rows)
        ]


def decided(
    nearest: list[tuple[Record, float]],
    policy_of: Callable[[str], Policy],
    background_similarity: float,
    twins: Callable[[Record, Record], bool] | None = None,
) -> Search:
    """Each collection's candidates decided by its own policy, as if it had been checked alone;
    the search's decision is that of the nearest collection that found a duplicate (else of the
    nearest one). `twins(nearest, other)` verifies the margin's candidates for "other picture"
    from `pair_twin_similarity` on, until one is not a twin."""
    positions: dict[str, list[int]] = {}
    for position, (record, _) in enumerate(nearest):
        positions.setdefault(record.collection, []).append(position)
    each, to_nearest, scores = [False] * len(nearest), [1.0] * len(nearest), [float("-inf")] * len(nearest)
    decisions = []  # (decision, rule, first position) per collection, the nearest collection first
    for collection, members in positions.items():
        policy = policy_of(collection)
        similarities = similarities_to_first([nearest[p][0].feature for p in members])
        verified = _verified_twins(policy, [nearest[p][0] for p in members], similarities, twins)
        candidates = [
            Candidate(nearest[p][1], nearest[p][0].threshold, similarity, twin)
            for p, similarity, twin in zip(members, similarities, verified, strict=True)
        ]
        decision = decide(policy, candidates, background_similarity)
        for p, similarity, duplicate, score in zip(
            members, similarities, decision.each, decision.each_score, strict=True
        ):
            each[p], to_nearest[p], scores[p] = duplicate, similarity, score
        decisions.append((decision, policy.rule, members[0]))
    if not decisions:
        return Search(nearest, to_nearest, decide(policy_of(""), []), policy_of("").rule)
    deciding, rule, first = next((found for found in decisions if found[0].is_duplicate), decisions[0])
    decision = Decision(deciding.is_duplicate, deciding.score, each)
    return Search(nearest, to_nearest, decision, rule, scores=scores, deciding=first)


def _verified_twins(policy: Policy, records: list[Record], similarities: list[float], twins) -> list[bool]:
    flags = [False] * len(records)
    if twins is None or policy.rule != "margin":
        return flags
    for position in range(1, len(records)):
        similarity = similarities[position]
        if similarity >= policy.twin_similarity:
            continue  # a twin by its cosine
        if similarity < policy.pair_twin_similarity or not twins(records[0], records[position]):
            break  # the margin's other picture: the rest do not change the score
        flags[position] = True
    return flags


def similarities_to_first(features: list[np.ndarray]) -> list[float]:
    """Cosine similarity of each unit feature to the first."""
    if not features:
        return []
    stacked = np.asarray(features, dtype=np.float32)
    return (stacked @ stacked[0]).tolist()
