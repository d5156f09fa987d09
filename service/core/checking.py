"""Checking: is an image a near-duplicate of an enrolled one, and of which?

One Check: an image byte-identical to enrolled ones is answered from its SHA-256 without
hashing; otherwise it is embedded through Triton, its nearest records are searched, and the
decision rule decides, with the geometric check overriding borderline scores when it is on.
"""

import asyncio
import hashlib
from dataclasses import dataclass

from service.core.decision import Candidate, Policy, decide, is_borderline
from service.media import geometry
from service.media.preprocess import Preprocessor
from service.storage.background import Background
from service.storage.records import Record
from service.storage.store import Store
from service.storage.vector_index import VectorIndex
from service.triton.client import Descriptor, Hasher


@dataclass(frozen=True)
class Match:
    record: Record
    distance: float  # Euclidean between unit features
    is_duplicate: bool
    inliers: int = -1  # geometric check inliers; -1 when it did not run


@dataclass(frozen=True)
class CheckResult:
    is_duplicate: bool
    identical: bool  # byte-identical to the matches
    matches: list[Match]  # nearest first
    score: float  # the rule's score of the nearest match
    background_similarity: float
    index_generation: int


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

    async def embed(self, image: bytes, views: int, timeout_s: float) -> Descriptor:
        canvas = await asyncio.to_thread(self.preprocessor.canvas, image)
        [descriptor] = await self.hasher.hash(canvas[None], [views], timeout_s)
        return descriptor

    async def check(self, image: bytes, top_k: int, timeout_s: float) -> CheckResult:
        await asyncio.to_thread(self.store.check_model, self.model_identity)
        generation = self.index.stats().generation
        with self.store.read() as view:
            identical = view.by_digest(hashlib.sha256(image).digest())[:top_k]
        if identical:
            # Byte-identical to an enrolled image is a duplicate under any rule.
            score = decide(self.policy, [Candidate(0.0, record.threshold) for record in identical]).score
            return CheckResult(True, True, [Match(record, 0.0, True) for record in identical], score, 0.0, generation)
        descriptor = await self.embed(image, self.views, timeout_s)
        # The margin rule needs a second neighbour even when the caller asks for one.
        nearest = await asyncio.to_thread(self.index.nearest, descriptor.feature, max(top_k, 2))
        background_similarity = self.background.similarity(descriptor.feature)
        candidates = [Candidate(distance, record.threshold) for record, distance in nearest]
        decision = decide(self.policy, candidates, background_similarity)
        each, inliers = decision.each, -1
        if self.policy.geometric_band and is_borderline(self.policy, decision):
            inliers = await asyncio.to_thread(self._inliers, image, nearest[0][0])
            if inliers >= geometry.MIN_INLIERS:
                each = [True, *each[1:]]
        matches = [
            Match(record, distance, duplicate, inliers if position == 0 else -1)
            for position, ((record, distance), duplicate) in enumerate(zip(nearest, each, strict=True))
        ]
        is_duplicate = bool(each) and each[0]
        return CheckResult(is_duplicate, False, matches[:top_k], decision.score, background_similarity, generation)

    def _inliers(self, image: bytes, record: Record) -> int:
        with self.store.read() as view:
            stored = view.keypoints(record.id)
        return geometry.inliers(self.preprocessor.picture(image), stored)
