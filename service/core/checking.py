"""Checking: is an image a near-duplicate of an enrolled one, and of which?

One Check: an image byte-identical to enrolled ones is answered from its SHA-256 without
hashing; otherwise it is embedded through Triton, its nearest records are searched, and the
decision is judged (core/judging.py: each collection's rule, verification, the "not a duplicate"
memory), with the geometric check overriding borderline scores when it is on.
A query that is not a duplicate as a whole is searched again by regions (a cascade: the extra
views are paid only when the whole image found nothing), so that a copy shown inside a larger
picture is found: the boxes pasted on it (media/insets.py), 77 windows of the model's feature map
(off with --no-region-windows), and a grid of 13 with --region-grid; a region needs its own, higher
score, and a close alignment of the whole query or of the region (a window's covering most of its
candidate, at the detail it shows: it shows a copy whole, not a part two drawings share).
"""

import asyncio
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from service.core.decision import Candidate, Policy, decide, is_borderline, threshold_of
from service.core.judging import Judge
from service.core.searches import Match, Search
from service.media import geometry
from service.media.imaging import is_low_information, longest_side
from service.media.preprocess import Box, Preprocessor, Regions
from service.storage.background import Background
from service.storage.records import Record
from service.storage.small_views import SmallViews
from service.storage.store import Store
from service.storage.vector_index import VectorIndex
from service.triton import contract
from service.triton.client import Descriptor, Hasher

# Neighbours a Check decides among, however few it returns: the margin rule needs the nearest
# picture other than the nearest one's twins (the same picture enrolled under other keys).
NEIGHBOURS = 8
# The region stage verifies the nearest records of at most this many of the best regions.
REGION_CANDIDATES = 2


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


@dataclass(frozen=True)
class Checker:
    hasher: Hasher
    store: Store
    index: VectorIndex
    preprocessor: Preprocessor
    background: Background
    policy: Policy
    model_identity: str
    views: int  # per Check
    judge: Judge
    small_views: SmallViews | None = None  # searched for thumbnails (None: not enrolled)

    async def embed(self, image: bytes, views: int, timeout_s: float) -> Descriptor:
        return (await self._canvas_and_descriptor(image, views, timeout_s))[1]

    async def _canvas_and_descriptor(self, image: bytes, views: int, timeout_s: float) -> tuple[np.ndarray, Descriptor]:
        canvas = await asyncio.to_thread(self.preprocessor.canvas, image)
        [descriptor] = await self.hasher.hash(canvas[None], [views], timeout_s)
        return canvas, descriptor

    def up_to_date(self) -> None:
        """The store holds our model's features, and the index has every change committed so
        far, by this process or by another worker on the same data directory (a cheap read when
        there is nothing new)."""
        self.store.check_model(self.model_identity)
        self.index.apply_changes()
        if self.small_views is not None:
            self.small_views.catch_up()

    async def check(
        self,
        image: bytes,
        top_k: int,
        timeout_s: Callable[[], float],
        collections: frozenset[str] | None = None,
    ) -> CheckResult:
        """`timeout_s()` is what is left for Triton now (the region stage asks again); only
        `collections` are searched (None: all)."""
        await asyncio.to_thread(self.up_to_date)
        generation = self.index.stats().generation
        digest = hashlib.sha256(image).digest()
        identical = (await asyncio.to_thread(self.index.identical, digest, collections))[:top_k]
        if identical:
            # Byte-identical to an enrolled image is a duplicate under any rule.
            score = decide(self.policy, [Candidate(0.0, record.threshold) for record in identical]).score
            return CheckResult(True, True, [Match(record, 0.0, True) for record in identical], score, 0.0, generation)
        canvas, descriptor = await self._canvas_and_descriptor(image, self.views, timeout_s())
        background_similarity = self.background.similarity(descriptor.feature)
        search = functools.partial(self._search, collections=collections)
        picture = functools.cache(lambda: self.preprocessor.verification_picture(image))
        side = longest_side(image)
        whole = await asyncio.to_thread(
            search, descriptor.feature, top_k, background_similarity, query=picture, query_side=side
        )
        result = CheckResult(
            False, False, [], whole.decision.score, background_similarity, generation, views=self.views,
            rule=whole.rule, residual=whole.residual,
        )  # fmt: skip
        if is_low_information(canvas):
            return replace(result, matches=whole.matches([False] * len(whole.nearest))[:top_k], low_information=True)
        each, inliers = whole.decision.each, -1
        if self.policy.geometric_band and is_borderline(self.policy, whole.decision) and 0 not in whole.dismissed:
            inliers = await asyncio.to_thread(self._inliers, image, whole.nearest[0][0])
            if inliers >= geometry.MIN_INLIERS:
                each = [True, *each[1:]]
        result = replace(result, matches=whole.matches(each, inliers)[:top_k], is_duplicate=any(each))
        if not result.is_duplicate and self.small_views is not None and self.policy.is_small(side):
            small = await asyncio.to_thread(
                self._search_small_views, descriptor.feature, top_k, background_similarity, collections, picture
            )
            if small.decision.is_duplicate:
                return replace(
                    result, is_duplicate=True, matches=small.matches(small.decision.each)[:top_k],
                    score=small.decision.score, rule=small.rule, residual=small.residual, small_view=True,
                )  # fmt: skip
        searches_regions = self.policy.region_threshold and self.policy.verification_weight  # regions are confirmed
        if result.is_duplicate or not searches_regions or not whole.nearest:
            return result
        return await self._search_regions(image, descriptor.feature, top_k, timeout_s, result, search, picture)

    async def _search_regions(
        self,
        image: bytes,
        feature: np.ndarray,
        top_k: int,
        timeout_s: Callable[[], float],
        whole: CheckResult,
        search: Callable,
        picture: Callable[[], Image.Image],
    ) -> CheckResult:
        """The cascade's second stage: each region embedded and searched; the nearest records of
        the best regions (REGION_CANDIDATES of them, scoring at least the region threshold) are
        verified against the whole query, then, from --region-alone, against the region alone (a
        residual up to --verified-residual, or from the threshold up what a duplicate in the band
        agrees by: under it, regions of drawings find look-alike drawings), and the first
        confirmed decides. A collection with its own threshold asks its regions for as
        much less than it as the service's region threshold (and region-alone score) is under the
        service's threshold."""
        policy = self.policy
        regions = await asyncio.to_thread(self.preprocessor.regions, image, policy.region_grid, policy.region_windows)
        if not regions.boxes:
            return whole
        features = await self._embed_regions(regions, timeout_s)
        searches = await asyncio.to_thread(
            lambda: [search(feature, top_k, whole.background_similarity, dismissals=False) for feature in features]
        )
        ranked = sorted(range(len(searches)), key=lambda i: -searches[i].decision.score)
        windows = contract.WINDOW_VIEW_COST if regions.window_canvas is not None else 0
        views = whole.views + len(regions.canvases) + windows
        best_score, policy_of = searches[ranked[0]].decision.score, self.judge.policies()
        reach, alone_reach = (threshold_of(policy) - least for least in (policy.region_threshold, policy.region_alone))
        tried: set[bytes] = set()
        for region in ranked:
            found = searches[region]
            if not found.nearest or len(tried) == REGION_CANDIDATES:
                break
            record = found.nearest[found.deciding][0]
            threshold = threshold_of(policy_of(record.collection))
            if found.decision.score < threshold - reach or record.sha256 in tried:
                continue
            tried.add(record.sha256)
            at_threshold = found.decision.score >= threshold  # held as closely as a whole query there
            close = policy.close_residual(found.decision.score, threshold) if at_threshold else policy.verified_residual
            window = regions.is_window(region)  # held to show a copy whole, at its own detail
            confirm = functools.partial(self.judge.confirmed, found, close=close, as_crops=False, window=window)
            confirmed = await asyncio.to_thread(confirm, picture)
            by_itself = policy.region_alone > 0 and found.decision.score >= threshold - alone_reach
            if by_itself and not confirmed.decision.is_duplicate:  # the copy may be too small in the whole
                cut_out = functools.partial(regions.crop, region)
                confirmed = await asyncio.to_thread(confirm, cut_out)
            # What the caller dismissed for the whole picture (`feature`, not the region's) stays dismissed.
            confirmed = await asyncio.to_thread(self.judge.without_dismissed, feature, confirmed)
            if confirmed.decision.is_duplicate:
                return CheckResult(
                    True, False, confirmed.matches(confirmed.decision.each)[:top_k], confirmed.decision.score,
                    whole.background_similarity, whole.index_generation, region=regions.boxes[region],
                    region_score=best_score, views=views, rule=confirmed.rule, residual=confirmed.residual,
                )  # fmt: skip
        return replace(whole, region_score=best_score, views=views)

    async def _embed_regions(self, regions: Regions, timeout_s: Callable[[], float]) -> list[np.ndarray]:
        """Each region's feature: the boxes' from their own canvases, the windows' from one larger view."""

        async def of_boxes() -> list[np.ndarray]:
            if not len(regions.canvases):
                return []
            described = await self.hasher.hash(regions.canvases, [1] * len(regions.canvases), timeout_s())
            return [descriptor.feature for descriptor in described]

        async def of_windows() -> list[np.ndarray]:
            if regions.window_canvas is None:
                return []
            [described] = await self.hasher.hash(regions.window_canvas[None], [1], timeout_s(), windows=True)
            return list(described.windows)

        boxes, windows = await asyncio.gather(of_boxes(), of_windows())
        return boxes + windows

    def _search(
        self,
        feature: np.ndarray,
        top_k: int,
        background_similarity: float,
        collections: frozenset[str] | None = None,
        query: Callable[[], Image.Image] | None = None,
        query_side: int = 0,
        dismissals: bool = True,
    ) -> Search:
        nearest = self.index.nearest(feature, max(top_k, NEIGHBOURS), collections)
        return self.judge.judge(feature, nearest, background_similarity, query, query_side, dismissals)

    def _search_small_views(
        self,
        feature: np.ndarray,
        top_k: int,
        background_similarity: float,
        collections: frozenset[str] | None,
        query: Callable[[], Image.Image],
    ) -> Search:
        found = self.small_views.nearest(feature, max(top_k, NEIGHBOURS), collections)
        with self.store.read() as view:
            nearest = [(record, distance) for id_, distance in found if (record := view.by_id(id_)) is not None]
        return self.judge.through_small_views(feature, nearest, background_similarity, query)

    def _inliers(self, image: bytes, record: Record) -> int:
        with self.store.read() as view:
            stored = view.keypoints(record.id)
        return geometry.inliers(self.preprocessor.picture(image), stored)
