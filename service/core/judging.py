"""Judging a feature's nearest records: which of them is the query a near-duplicate of?

In order: each collection's candidates are decided by its own rule (searches.py), the margin's
"other picture" skipping the nearest one's twins (at cosine >= `twin_similarity`, or from
`pair_twin_similarity` verified the same picture); a duplicate not far above its threshold is
verified against the candidate's stored reference (media/verification.py), a score within reach
under it (any, for a thumbnail, against any of its neighbours) confirmed by a close match or
not; then the caller's "not a duplicate" memory overrides. Check (checking.py) and FindDuplicates
(grouping.py) judge this way."""

import collections
import functools
import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from PIL import Image

from service import metrics
from service.core.decision import Policy, threshold_of, with_rule
from service.core.searches import Search, decided
from service.media import verification
from service.storage.collections import settings_of
from service.storage.dismissals import Dismissals
from service.storage.records import Record
from service.storage.store import Store

# How far over its threshold a duplicate must score when verification cannot tell (no stored
# reference: enrolled while it was off, or another front service's on Milvus; too little
# structure; a repeating pattern): the margin's 0.55 before verification existed, whatever the weight.
UNVERIFIABLE_MARGIN = 0.08
PAIR_CACHE = 50_000  # enrolled pairs whose twin verdict is remembered
CONFIRMED_TWINS = 2  # twins of the nearest verified when the nearest itself is not a close match
# What is kept of the references verified against (verification.Candidate, about 120 KB each: some
# 2,000 records), so that a record compared again costs no decode or Lab of it (nor, for a record
# enrolled before its points were stored, its keypoints).
CANDIDATE_CACHE_BYTES = 256 * 2**20
# A picture to verify, made when first asked for (None: none); prepared once for several candidates
# (verification.QueryPicture) or a plain picture.
Query = Callable[[], "verification.QueryPicture | Image.Image | None"]


class Kept:
    """Values made once by key and kept, least recently used first out, within a budget (what
    `size` says each value takes). Thread-safe; two threads may make the same value."""

    def __init__(self, budget: int, size: Callable[[object], int]) -> None:
        self.budget, self.size, self.used = budget, size, 0
        self._values: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, make: Callable):
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()
        with self._lock:
            if key not in self._values:
                self._values[key] = value
                self.used += self.size(value)
            while self.used > self.budget and self._values:
                self.used -= self.size(self._values.popitem(last=False)[1])
        return value


def _bytes(candidate: "verification.Candidate | None") -> int:
    return candidate.nbytes if candidate is not None else 0


class Judge:
    """Thread-safe; remembers the twin verdicts of enrolled pairs it verified."""

    def __init__(self, store: Store, policy: Policy, dismissals: Dismissals | None = None) -> None:
        self.store = store
        self.policy = policy
        self.dismissals = dismissals
        self._pairs = Kept(PAIR_CACHE, size=lambda _: 1)
        self._candidates = Kept(CANDIDATE_CACHE_BYTES, size=_bytes)
        metrics.VERIFICATION_KEPT_BYTES.set_function(lambda: self._candidates.used)

    def policies(self) -> Callable[[str], Policy]:
        """Each collection's policy: its own settings (SetCollection), or the service's; each
        collection's read from the store when first asked for (a Check asks for a few of them,
        whatever the number of collections)."""

        @functools.cache
        def policy_of(collection: str) -> Policy:
            own = settings_of(self.store, collection)
            if own is None:
                return self.policy
            policy = with_rule(self.policy, own.rule, own.threshold) if own.rule else self.policy
            return replace(policy, mirror=own.mirror) if own.mirror else policy

        return policy_of

    def judge(
        self,
        feature: np.ndarray,
        nearest: list[tuple[Record, float]],
        background_similarity: float,
        query: Query | None = None,
        query_side: int = 0,
    ) -> Search:
        """The search, verification and memory stages of a Check (core/stages/) on neighbours found
        already: how FindDuplicates judges an enrolled record. `query()` gives the picture to verify
        (None: not verified), `query_side` its longest side (0: unknown)."""
        policy_of = self.policies()
        search = self.decided(nearest, policy_of, background_similarity)
        if query is not None and self.policy.verification_weight:
            search = self.verified(search, query, policy_of, query_side)
        return self.without_dismissed(feature, search)

    def decided(
        self, nearest: list[tuple[Record, float]], policy_of: Callable[[str], Policy], background_similarity: float
    ) -> Search:
        """Each collection's candidates decided by its rule, the margin's twins verified while verification is on."""
        twins = self._twins if self.policy.verification_weight else None
        return decided(nearest, policy_of, background_similarity, twins)

    def through_small_views(
        self,
        feature: np.ndarray,
        nearest: list[tuple[Record, float]],
        background_similarity: float,
        query: Query,
    ) -> Search:
        """A thumbnail judged against the records whose small views are `nearest` it (distances to
        those): a duplicate only when confirmed, whatever the score (a thumbnail is as near the small
        views of look-alikes): the nearest and its twins within `small_view_residual`, else the first
        other neighbour within `verified_residual` once enlarged at least --thumbnail-enlargement."""
        search = decided(nearest, self.policies(), background_similarity, self._twins)
        if not search.nearest:
            return search
        confirmed = self.confirmed(search, query, self.policy.small_view_residual, small=True)
        return self.without_dismissed(feature, confirmed)

    def verified(self, search: Search, query: Query, policy_of, query_side: int) -> Search:
        """A duplicate near its threshold must survive its residual or agree closely; a score under it
        that Policy.verified_under is confirmed or not (Policy.close_residual: how closely)."""
        if not search.nearest:
            return search
        policy, record = self.policy, search.nearest[search.deciding][0]
        threshold, score = threshold_of(policy_of(record.collection)), search.scores[search.deciding]
        weight, cap = policy.verification_weight, policy.verification_cap
        close = policy.close_residual(score, threshold)
        if not search.decision.is_duplicate:
            if not policy.verified_under(score, threshold, query_side):
                return search
            overlay = score >= threshold - policy.overlay_reach
            return self.confirmed(search, query, close, overlay, policy.is_small(query_side))
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

    def confirmed(
        self,
        search: Search,
        query: Query,
        close: float,
        overlay=False,
        small=False,
        as_crops=True,
        window=False,
    ) -> Search:
        """The nearest candidate and its twins as the duplicates if the query agrees closely with it
        (Residual.is_close: a residual up to `close`, or, an `overlay` forgiven, `verified_residual`
        beside its own colours), whatever the score; failing that, the first of its next
        CONFIRMED_TWINS twins that does (the nearest may be the picture enrolled small, or a
        look-alike the descriptor took for a twin) alone; for a `small` query, then the first of
        the other neighbours it agrees with within `verified_residual`, enlarged at least
        --thumbnail-enlargement to be compared, alone; else no duplicate. Without `as_crops`, the
        query is not aligned as a crop of a candidate (a region shows a candidate whole). For a `window`'s
        candidates an alignment covering less than `window_cover` of a candidate's content does not count,
        and the residual gets no allowance for a small copy's lost detail (Residual.for_its_detail)."""
        record, score = search.nearest[search.deciding][0], search.scores[search.deciding]
        covered = [  # it and its twins: the candidates of its collection its score covers
            other.collection == record.collection and own >= score
            for (other, _), own in zip(search.nearest, search.scores, strict=True)
        ]
        tried = [position for position, mine in enumerate(covered) if mine][: 1 + CONFIRMED_TWINS]
        policy, found = self.policy, None
        least_cover, for_detail = (policy.window_cover, False) if window else (0.0, True)
        for position in tried:
            found = self._residual(query, search.nearest[position][0], as_crops, least_cover, only_close=not overlay)
            if found is not None and (
                found.is_close(close, policy.verified_colour, for_detail=for_detail)
                or (overlay and found.is_close(policy.verified_residual, policy.verified_colour, beside_foreign=True))
            ):
                return _declared(search, covered if position == tried[0] else _only(position, covered), found)
        others = [position for position in range(len(covered)) if position not in tried]
        for position in others if small and policy.thumbnail_enlargement else []:
            neighbour = self._residual(query, search.nearest[position][0], as_crops, least_cover, only_close=True)
            if (
                neighbour is not None
                and neighbour.is_close(policy.verified_residual, policy.verified_colour)
                and neighbour.judged.upscale >= policy.thumbnail_enlargement  # judged: is_close found one
            ):
                return _declared(search, _only(position, covered), neighbour)
        decision = replace(search.decision, is_duplicate=False, each=[False] * len(covered))
        return replace(search, decision=decision, residual=found.lightness if found is not None else None)

    def _residual(
        self, query: Query, record: Record, as_crops: bool = True, least_cover: float = 0.0, only_close: bool = False
    ) -> verification.Residual | None:
        """None: nothing to compare (no query picture, no stored reference, too little structure).
        `only_close`: only whether it is a close match counts (verification.compared)."""
        reference = self.reference(record)
        picture = query() if reference else None
        if picture is None:
            return None
        shown = picture if isinstance(picture, verification.QueryPicture) else verification.QueryPicture(picture)
        if self.policies()(record.collection).mirror == "distinct":  # a mirror image is another picture
            shown = shown.as_it_is()
        candidate = self._candidate(record, reference, shown.has_no_colour)
        return verification.compared(shown, candidate, as_crops, least_cover, only_close)

    def _candidate(self, record: Record, reference: bytes, grey: bool) -> verification.Candidate | None:
        """The record's side of verification, from its reference and the points stored beside it, made
        once and kept (within CANDIDATE_CACHE_BYTES)."""

        def made() -> verification.Candidate | None:
            with self.store.read() as view:
                points = view.reference_points(record.id)
            return verification.candidate(reference, grey, points)

        return self._candidates.get((record.sha256, grey), made)

    def as_query(self, record: Record) -> Query:
        """An enrolled record's stored reference as the picture to verify (FindDuplicates, twins),
        with the keypoints stored beside it, made when first asked for (None: it has none here)."""

        @functools.cache
        def made() -> verification.QueryPicture | None:
            reference = self.reference(record)
            if not reference:
                return None
            with self.store.read() as view:
                points = view.reference_points(record.id)
            return verification.QueryPicture.of_reference(reference, points)

        return made

    def reference(self, record: Record) -> bytes:
        """The record's stored verification reference (b"" when it has none here)."""
        if not record.stored_here:  # another front service's record (Milvus): its reference is not here
            return b""
        with self.store.read() as view:
            return view.reference(record.id)

    def _twins(self, nearest: Record, other: Record) -> bool:
        """Are two enrolled images the same picture? Verified once, then remembered."""

        def verified() -> bool:
            found = self._residual(self.as_query(nearest), other, only_close=True)
            return found is not None and found.is_close(self.policy.pair_twin_residual, self.policy.verified_colour)

        return self._pairs.get((nearest.sha256, other.sha256), verified)

    def without_mirrored(self, search: Search, query: Query, policy_of: Callable[[str], Policy]) -> Search:
        """The duplicates the query shows mirrored (verification.shows_mirrored) are not, where their
        collection's policy says a mirror image is another picture (--mirror distinct)."""
        mirrored = frozenset(
            position
            for position, ((record, _), duplicate) in enumerate(zip(search.nearest, search.decision.each, strict=True))
            if duplicate and policy_of(record.collection).mirror == "distinct" and self._mirrored(query, record)
        )
        if not mirrored:
            return search
        each = [duplicate and position not in mirrored for position, duplicate in enumerate(search.decision.each)]
        return replace(search, decision=replace(search.decision, is_duplicate=any(each), each=each))

    def _mirrored(self, query: Query, record: Record) -> bool:
        reference = self.reference(record)
        picture = query() if reference else None
        if picture is None:
            return False
        shown = picture if isinstance(picture, verification.QueryPicture) else verification.QueryPicture(picture)
        return verification.shows_mirrored(shown, self._candidate(record, reference, shown.has_no_colour))

    def without_dismissed(self, feature: np.ndarray, search: Search) -> Search:
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


def _only(position: int, candidates: list) -> list[bool]:
    return [other == position for other in range(len(candidates))]


def _declared(search: Search, each: list[bool], found: verification.Residual) -> Search:
    """The search with `each` its duplicates, confirmed by `found`."""
    return replace(search, decision=replace(search.decision, is_duplicate=True, each=each), residual=found.lightness)
