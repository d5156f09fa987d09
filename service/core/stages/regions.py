"""Regions: a copy shown inside a larger picture. A query that matched nothing as a whole is searched
again by its parts (a cascade: their views are paid only then): the boxes pasted on it
(media/insets.py), 77 windows of the model's feature map of one 448 px view (off with
--no-region-windows), and a grid of 13 with --region-grid. A region needs its own score
(--region-threshold) and a close alignment of the whole query, or, from --region-alone, of the
region cut out; a window must show its candidate whole (`window_cover`), at the detail it shows."""

import asyncio
import functools

import numpy as np

from service.core.decision import Policy, threshold_of
from service.core.judging import Judge
from service.core.query import Query
from service.core.stages.search import NEIGHBOURS
from service.core.stages.state import CheckState
from service.media.preprocess import Regions
from service.storage.vector_index import VectorIndex
from service.triton import contract
from service.triton.client import Hasher

# The nearest records of at most this many of the best regions are verified.
REGION_CANDIDATES = 2


class RegionSearch:
    name = "regions"

    def __init__(self, hasher: Hasher, index: VectorIndex, judge: Judge, policy: Policy):
        self.hasher = hasher
        self.index = index
        self.judge = judge
        self.policy = policy

    def applies(self, query: Query, state: CheckState) -> bool:
        policy = self.policy
        searched = policy.region_threshold and policy.verification_weight  # a region is confirmed
        return bool(searched) and not state.is_duplicate and bool(state.whole.nearest)

    async def run(self, query: Query, state: CheckState) -> None:
        """The nearest records of the best regions (REGION_CANDIDATES of them, scoring at least the
        region threshold) are verified against the whole query, then, from --region-alone, against
        the region alone (a residual up to `verified_residual`, or from the threshold up what a
        duplicate in the band agrees by: under it, regions of drawings find look-alike drawings),
        and the first confirmed decides. A collection with its own threshold asks its regions for
        as much less than it as the service's region threshold (and region-alone score) is under
        the service's threshold. What the caller dismissed for the whole picture stays dismissed."""
        policy = self.policy
        regions = await asyncio.to_thread(query.regions, policy.region_grid, policy.region_windows)
        if not regions.boxes:
            return
        features = await self._embed(regions, state)

        def searched():
            return [self._search(feature, state) for feature in features]

        searches = await asyncio.to_thread(searched)
        ranked = sorted(range(len(searches)), key=lambda i: -searches[i].decision.score)
        windows = contract.WINDOW_VIEW_COST if regions.window_canvas is not None else 0
        state.views += len(regions.canvases) + windows
        state.region_score = searches[ranked[0]].decision.score
        reach, alone_reach = (threshold_of(policy) - least for least in (policy.region_threshold, policy.region_alone))
        tried: set[bytes] = set()
        for region in ranked:
            found = searches[region]
            if not found.nearest or len(tried) == REGION_CANDIDATES:
                break
            record = found.nearest[found.deciding][0]
            threshold = threshold_of(state.policy_of(record.collection))
            if found.decision.score < threshold - reach or record.sha256 in tried:
                continue
            tried.add(record.sha256)
            at_threshold = found.decision.score >= threshold  # held as closely as a whole query there
            close = policy.close_residual(found.decision.score, threshold) if at_threshold else policy.verified_residual
            window = regions.is_window(region)  # held to show a copy whole, at its own detail
            confirm = functools.partial(self.judge.confirmed, found, close=close, as_crops=False, window=window)
            confirmed = await asyncio.to_thread(confirm, lambda: query.verification_picture)
            by_itself = policy.region_alone > 0 and found.decision.score >= threshold - alone_reach
            if by_itself and not confirmed.decision.is_duplicate:  # the copy may be too small in the whole
                cut_out = functools.partial(regions.crop, region)
                confirmed = await asyncio.to_thread(confirm, cut_out)
            confirmed = await asyncio.to_thread(self.judge.without_dismissed, state.feature, confirmed)
            if confirmed.decision.is_duplicate:
                state.confirmed(self.name, confirmed, region=regions.boxes[region], region_score=state.region_score)
                return

    def _search(self, feature: np.ndarray, state: CheckState):
        nearest = self.index.nearest(feature, max(state.top_k, NEIGHBOURS), state.collections)
        return self.judge.decided(nearest, state.policy_of, state.background_similarity)

    async def _embed(self, regions: Regions, state: CheckState) -> list[np.ndarray]:
        """Each region's feature: the boxes' from their own canvases, the windows' from one larger view."""

        async def of_boxes() -> list[np.ndarray]:
            if not len(regions.canvases):
                return []
            described = await self.hasher.hash(regions.canvases, [1] * len(regions.canvases), state.timeout_s())
            return [descriptor.feature for descriptor in described]

        async def of_windows() -> list[np.ndarray]:
            if regions.window_canvas is None:
                return []
            [described] = await self.hasher.hash(regions.window_canvas[None], [1], state.timeout_s(), windows=True)
            return list(described.windows)

        boxes, windows = await asyncio.gather(of_boxes(), of_windows())
        return boxes + windows
