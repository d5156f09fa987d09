"""Judging a feature's nearest records: which of them is the query a near-duplicate of?

In order: each collection's candidates are decided by its own rule (decision.py), the margin's
"other picture" skipping the nearest one's twins (at cosine >= --twin-similarity, or from
--pair-twin-similarity verified the same picture); a duplicate not far above its threshold is
verified against the candidate's stored reference (media/verification.py), a score within reach
under it (any, for a thumbnail) confirmed by a close match or not; then the caller's "not a
duplicate" memory overrides. Check (checking.py) and FindDuplicates (grouping.py) judge this way."""

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from service.core.decision import Candidate, Decision, Policy, decide, similarities_to_first, threshold_of, with_rule
from service.media import verification
from service.storage.collections import settings as collection_settings
from service.storage.dismissals import Dismissals
from service.storage.records import Record
from service.storage.store import Store

# How far over its threshold a duplicate must score when verification cannot tell (no stored
# reference: enrolled while it was off, or another front service's on Milvus; too little
# structure; a repeating pattern): the margin's 0.55 before verification existed, whatever the weight.
UNVERIFIABLE_MARGIN = 0.08
PAIR_CACHE = 50_000  # enrolled pairs whose twin verdict is remembered
CONFIRMED_TWINS = 2  # twins of the nearest verified when the nearest itself is not a close match


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


class Judge:
    """Thread-safe; remembers the twin verdicts of enrolled pairs it verified."""

    def __init__(self, store: Store, policy: Policy, dismissals: Dismissals | None = None) -> None:
        self.store = store
        self.policy = policy
        self.dismissals = dismissals
        self._pairs: collections.OrderedDict[tuple[bytes, bytes], bool] = collections.OrderedDict()
        self._pairs_lock = threading.Lock()

    def policies(self) -> Callable[[str], Policy]:
        """Each collection's policy: its own settings (SetCollection), or the service's."""
        chosen = collection_settings(self.store)

        def policy_of(collection: str) -> Policy:
            own = chosen.get(collection)
            return with_rule(self.policy, own.rule, own.threshold) if own else self.policy

        return policy_of

    def judge(
        self,
        feature: np.ndarray,
        nearest: list[tuple[Record, float]],
        background_similarity: float,
        query: Callable[[], Image.Image | None] | None = None,
        query_side: int = 0,
    ) -> Search:
        """`query()` gives the picture to verify (None: not verified), `query_side` its longest side (0: unknown)."""
        policy_of = self.policies()
        twins = self._twins if self.policy.verification_weight else None
        search = decided(nearest, policy_of, background_similarity, twins)
        if query is not None and self.policy.verification_weight:
            search = self._verified(search, query, policy_of, query_side)
        return self._without_dismissed(feature, search)

    def _verified(self, search: Search, query: Callable[[], Image.Image | None], policy_of, query_side: int) -> Search:
        """A duplicate near its threshold must survive its residual or agree closely; a score under it
        that Policy.verified_under is confirmed or not (Policy.close_residual: how closely)."""
        if not search.nearest:
            return search
        policy, record = self.policy, search.nearest[search.deciding][0]
        threshold, score = threshold_of(policy_of(record.collection)), search.scores[search.deciding]
        weight, cap = policy.verification_weight, policy.verification_cap
        close = policy.close_residual(score, threshold)
        if not search.decision.is_duplicate:
            near = policy.verified_under(score, threshold, query_side)
            return self.confirmed(search, query, close, score >= threshold - policy.overlay_reach) if near else search
        if score >= threshold + weight * cap:
            return search  # no residual could take it under the threshold
        found = self._residual(query, record)  # the score says duplicate: an overlay is forgiven
        verified = score - (UNVERIFIABLE_MARGIN if found is None else weight * min(found.beside_overlays, cap))
        each = search.decision.each
        agrees = found is not None and found.is_close(close, policy.verified_colour)  # as confirmed under it
        if verified < threshold and not agrees:  # not a duplicate in this collection after all
            each = [
                duplicate and other.collection != record.collection
                for duplicate, (other, _) in zip(each, search.nearest, strict=True)
            ]
        decision = replace(search.decision, is_duplicate=any(each), score=verified, each=each)
        return replace(search, decision=decision, residual=found.beside_overlays if found is not None else None)

    def confirmed(self, search: Search, query: Callable[[], Image.Image | None], close: float, overlay=False) -> Search:
        """The nearest candidate and its twins as the duplicates if the query agrees closely with it
        (Residual.is_close: a residual up to `close`, or, an `overlay` forgiven, --verified-residual
        beside its own colours), whatever the score; failing that, the first of its next
        CONFIRMED_TWINS twins that does (the nearest may be the picture enrolled small, or a
        look-alike the descriptor took for a twin) alone; else no duplicate."""
        record, score = search.nearest[search.deciding][0], search.scores[search.deciding]
        covered = [  # it and its twins: the candidates of its collection its score covers
            other.collection == record.collection and own >= score
            for (other, _), own in zip(search.nearest, search.scores, strict=True)
        ]
        tried = [position for position, mine in enumerate(covered) if mine][: 1 + CONFIRMED_TWINS]
        policy, found = self.policy, None
        for position in tried:
            found = self._residual(query, search.nearest[position][0])
            if found is not None and (
                found.is_close(close, policy.verified_colour)
                or (overlay and found.is_close(policy.verified_residual, policy.verified_colour, beside_foreign=True))
            ):
                each = covered if position == tried[0] else [other == position for other in range(len(covered))]
                decision = replace(search.decision, is_duplicate=True, each=each)
                return replace(search, decision=decision, residual=found.lightness)
        decision = replace(search.decision, is_duplicate=False, each=[False] * len(covered))
        return replace(search, decision=decision, residual=found.lightness if found is not None else None)

    def _residual(self, query: Callable[[], Image.Image | None], record: Record) -> verification.Residual | None:
        """None: nothing to compare (no query picture, no stored reference, too little structure)."""
        reference = self.reference(record)
        picture = query() if reference else None
        return verification.residual(picture, reference) if picture is not None else None

    def reference(self, record: Record) -> bytes:
        """The record's stored verification reference (b"" when it has none here)."""
        if not record.id:  # another front service's record (Milvus): its reference is not here
            return b""
        with self.store.read() as view:
            return view.reference(record.id)

    def _twins(self, nearest: Record, other: Record) -> bool:
        """Are two enrolled images the same picture? Verified once, then remembered."""
        pair = (nearest.sha256, other.sha256)
        with self._pairs_lock:
            if pair in self._pairs:
                self._pairs.move_to_end(pair)
                return self._pairs[pair]
        first, second = self.reference(nearest), self.reference(other)
        found = verification.residual(verification.picture_of(first), second) if first and second else None
        same = found is not None and found.is_close(self.policy.pair_twin_residual, self.policy.verified_colour)
        with self._pairs_lock:
            self._pairs[pair] = same
            if len(self._pairs) > PAIR_CACHE:
                self._pairs.popitem(last=False)
        return same

    def _without_dismissed(self, feature: np.ndarray, search: Search) -> Search:
        """Duplicates the caller dismissed for this picture, or for one this close to it
        (--dismissal-similarity), while the key holds the image it was dismissed against."""
        if self.dismissals is None or not any(search.decision.each):
            return search
        query = np.asarray(feature, np.float32)
        dismissed = frozenset(
            position
            for position, ((record, _), duplicate) in enumerate(zip(search.nearest, search.decision.each, strict=True))
            if duplicate
            and any(
                entry.sha256 == record.sha256
                and float(entry.feature.astype(np.float32) @ query) >= self.policy.dismissal_similarity
                for entry in self.dismissals.of_key(record.collection, record.key)
            )
        )
        if not dismissed:
            return search
        each = [duplicate and position not in dismissed for position, duplicate in enumerate(search.decision.each)]
        decision = replace(search.decision, is_duplicate=any(each), each=each)
        return replace(search, decision=decision, dismissed=dismissed)


def decided(
    nearest: list[tuple[Record, float]],
    policy_of: Callable[[str], Policy],
    background_similarity: float,
    twins: Callable[[Record, Record], bool] | None = None,
) -> Search:
    """Each collection's candidates decided by its own policy, as if it had been checked alone;
    the search's decision is that of the nearest collection that found a duplicate (else of the
    nearest one). `twins(nearest, other)` verifies the margin's candidates for "other picture"
    from --pair-twin-similarity on, until one is not a twin."""
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
