"""Decision rules: is a query a near-duplicate of its nearest enrolled images?

Every rule turns the query's candidates (nearest first) into one score per candidate, higher
meaning "more surely a duplicate", and a candidate is a duplicate when its score reaches the
rule's threshold. The rules live in one registry, RULES, which the service decides with and
tools/evaluate.py scores with, so a change to a rule is measured by the benchmark.

  global      cosine similarity of the nearest image                      >= global_threshold
  seed        the nearest image's own radius minus its distance (the seed) >= 0
  clamped     as seed, with the radius clamped to [clamp_min, clamp_max]   >= 0
  margin      similarity of the nearest minus margin_beta x that of the
              nearest *other picture* (the enrolled set as its own
              background; twins of the nearest are skipped)               >= margin_threshold
  normalized  similarity minus beta x the query's mean similarity to its nearest background
              (distractor) features, as in the SSCD paper                  >= normalized_threshold
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Candidate:
    """One enrolled image near the query."""

    distance: float  # Euclidean between unit vectors
    threshold: float  # the enrolled image's own near-duplicate radius
    # Cosine similarity of this candidate's enrolled feature to the nearest candidate's.
    nearest_similarity: float = 0.0
    twin: bool = False  # verified the same picture as the nearest (core/checking.py), whatever the cosine

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance**2 / 2.0


def setting(default, help: str, stage: str, source: str = ""):  # noqa: A002 - argparse's word
    """A decision parameter of a stage (core/stages/). One an operator tunes (a threshold, a stage on
    or off, what bounds its cost) is a flag, shown by `neardup serve --help` under its stage; a
    calibration constant names its `source` instead (where docs/quality.md says its value came from)
    and is no flag: the benchmark, not a deployment, moves it."""
    metadata = {"help": help, "stage": stage} | ({"source": source} if source else {})
    return field(default=default, metadata=metadata)


# Whether a mirror image of an enrolled picture is its duplicate (the mirror stage).
MIRROR_POLICIES = ("duplicate", "distinct")

# The stages a Check can run without (core/stages/): the embedding and the search it cannot.
SKIPPABLE_STAGES = (
    "identical",
    "verification",
    "memory",
    "mirror",
    "low_information",
    "geometric",
    "small_views",
    "regions",
)


@dataclass(frozen=True)
class Policy:
    """A rule and its parameters. The defaults are the service's, chosen on the catalogue benchmark
    (docs/quality.md): the margin over the nearest other picture, verified (0.47, less 0.15 x the
    residual beside overlays) for precision at catalogue scale and confirmed by a close alignment
    from 0.15 (a residual up to 0.08, rising with the score to 0.2 at the threshold, and colours up
    to 8 apart; from 0.25 also beside an overlay's own colours; a query under 64 px at any score,
    against each of its neighbours when enlarged 2.5x, then among the pictures' 24 px small views);
    regions searched where boxes are pasted on the query and in 77 windows of the feature map (3.1
    views per Check instead of 1 for 5x the insets; from 0.3 a region verified alone too), the grid
    off (13 more views)."""

    rule: str = setting("margin", "the decision rule (docs/quality.md compares them)", stage="search")
    global_threshold: float = setting(0.75, "global rule: least cosine similarity of the nearest image", stage="search")
    clamp_min: float = setting(0.3, "clamped rule: least radius", stage="search")
    clamp_max: float = setting(0.7, "clamped rule: largest radius", stage="search")
    margin_threshold: float = setting(
        0.47, "margin rule: least similarity minus beta x the second's (minus the verification penalty)", stage="search"
    )
    margin_beta: float = setting(0.5, "margin rule: weight of the nearest other picture's similarity", stage="search")
    twin_similarity: float = setting(
        0.95,
        "enrolled images at least this similar to the nearest are the same picture under another key: "
        "the margin skips them and they share the nearest's decision (above 1: never)",
        stage="search",
        source='docs/quality.md, "Pictures enrolled twice": twins at 0.95 and more share the nearest\'s decision',
    )
    verification_weight: float = setting(
        0.15,
        "a score under the threshold + weight x verification_cap is verified: the candidate's stored reference "
        "aligned to the query, score - weight x min(residual, cap) must reach the threshold (0: off; references "
        "are stored at enrolment while it is on)",
        stage="verification",
    )
    verification_cap: float = setting(
        1.33,
        "the largest residual verification counts",
        stage="verification",
        source='docs/quality.md, "How each constant was chosen": threshold, weight, cap (round 2)',
    )
    verification_reach: float = setting(
        0.32,
        "a score this far under the threshold is verified too, and is a duplicate only when the aligned pictures agree "
        "closely: residual at most `verified_residual` and colour difference at most `verified_colour` (0: never)",
        stage="verification",
    )
    verified_residual: float = setting(
        0.08,
        "the largest residual of a duplicate found under the threshold",
        stage="verification",
        source='docs/quality.md, "How each constant was chosen": close-match residual (round 4)',
    )
    verified_residual_at_threshold: float = setting(
        0.2,
        "the largest residual of a close match grows from `verified_residual` by one per unit of score up to this "
        "at the threshold (and in the band above it): the more the descriptors agree, the less the alignment must",
        stage="verification",
        source='docs/quality.md, "How each constant was chosen": close-match residual (round 4)',
    )
    verified_colour: float = setting(
        8.0,
        "the largest colour difference (for the detail the query shows) of a duplicate found under the threshold",
        stage="verification",
        source='docs/quality.md, "How each constant was chosen": colour difference (round 7)',
    )
    overlay_reach: float = setting(
        0.22,
        "a score this far under the threshold is also a duplicate when the aligned pictures agree that closely beside "
        "an overlay painted in colours the candidate has nowhere (a caption, a sticker; 0: never)",
        stage="verification",
    )
    small_query_side: int = setting(
        64,
        "a query whose longest side is under this many pixels is verified whatever its score, and is a duplicate when "
        "the aligned pictures agree closely (a thumbnail's descriptor is far from its original's; 0: never)",
        stage="small_views",
    )
    thumbnail_enlargement: float = setting(
        2.5,
        "a query under --small-query-side that its nearest record does not confirm is compared with its other "
        "neighbours in turn, and is a duplicate of the first that agrees within `verified_residual` once enlarged at "
        "least this much to be compared (a thumbnail's descriptor ranks its original near, not first; 0: never)",
        stage="small_views",
    )
    small_view_side: int = setting(
        24,
        "enrolment also embeds each picture shrunk to this side (px), searched for a query under --small-query-side "
        "its nearest do not confirm, and confirmed as they are (twice the model's work per Enroll; 0: no small views)",
        stage="small_views",
    )
    small_view_residual: float = setting(
        0.08,
        "the largest residual of a duplicate found by its small view",
        stage="small_views",
        source="docs/quality-history.md, round 12: 0.12 bought 0.3 points of recall for one more false alarm (seed 0)",
    )
    pair_twin_similarity: float = setting(
        0.8,
        "enrolled images at least this similar to the nearest (and under `twin_similarity`) are its twins when "
        "verification finds them the same picture (residual at most `pair_twin_residual`)",
        stage="search",
        source='docs/quality.md, "Pictures enrolled twice": twins verified from 0.8',
    )
    pair_twin_residual: float = setting(
        0.08,
        "the largest residual of two enrolled images that are twins",
        stage="search",
        source='docs/quality.md, "Pictures enrolled twice": twins verified within 0.08',
    )
    region_threshold: float = setting(
        0.2,
        "least score of the best region of a query that matched nothing as a whole, among the boxes pasted on it "
        "(and the grid's, the windows'): copies inside larger pictures (0: regions are not searched)",
        stage="regions",
    )
    region_alone: float = setting(
        0.3,
        "least score of a region verified alone, cut out, where the whole query does not confirm it (0: never)",
        stage="regions",
    )
    region_grid: bool = setting(
        False, "also search 13 regions on a grid (13 more views per Check that found nothing)", stage="regions"
    )
    region_windows: bool = setting(
        False,
        "also search 77 windows of a 448 px view's feature map (the cost of 4 views): needs a --model-file that "
        "outputs its map (tools/export_model.py); the packaged models, run as distributed, have none",
        stage="regions",
    )
    window_cover: float = setting(
        0.8,
        "the least share of a window's candidate its cut-out must cover, aligned: a window shows a copy whole, and "
        "a part of one drawing is often close to a part of another",
        stage="regions",
        source='docs/quality.md, "How each constant was chosen": window cover (round 16)',
    )
    dismissal_similarity: float = setting(
        0.85,
        "a query at least this similar to a picture dismissed against a key (Dismiss) is not its duplicate",
        stage="memory",
    )
    mirror: str = setting(
        "duplicate",
        "a mirror image of an enrolled picture is its duplicate (duplicate) or another picture (distinct: each "
        "duplicate is aligned both ways, ~0.1 s of CPU); per collection too (SetCollection)",
        stage="mirror",
    )
    normalization_beta: float = setting(1.0, "normalized rule: weight of the background similarity", stage="search")
    normalized_threshold: float = setting(0.5, "normalized rule: least normalised similarity", stage="search")
    skip_stages: str = setting(
        "",
        "stages a Check does not run, comma-separated (identical, verification, memory, low_information, geometric, "
        "small_views, regions): to see what a stage catches and costs (docs/decision.md)",
        stage="pipeline",
    )
    geometric_band: float = setting(
        0.0,
        "scores this far under the threshold get the ORB + RANSAC check (0: never; keypoints stored while on)",
        stage="geometric",
    )

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown decision rule {self.rule!r}; one of {', '.join(RULES)}")
        unknown = self.skipped_stages() - set(SKIPPABLE_STAGES)
        if unknown:
            known = ", ".join(SKIPPABLE_STAGES)
            raise ValueError(f"--skip-stages: no stage {', '.join(sorted(unknown))}; one of {known}")

    def skipped_stages(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.skip_stages.split(",") if name.strip())

    def verified_under(self, score: float, threshold: float, query_side: int = 0) -> bool:
        """Is a score under the threshold verified: within reach of it, or any score of a query whose
        longest side (in pixels; 0: not known) is small?"""
        return score >= threshold - self.verification_reach or self.is_small(query_side)

    def is_small(self, query_side: int) -> bool:
        """Is a query whose longest side is `query_side` pixels (0: not known) a thumbnail?"""
        return 0 < query_side < self.small_query_side

    def searches_small_views(self) -> bool:  # enrolled and searched (only a confirmation declares what they find)
        return bool(self.small_view_side and self.small_query_side and self.verification_weight)

    def close_residual(self, score: float, threshold: float) -> float:
        """The largest residual of a close match for a query scoring `score` against a `threshold`."""
        grown = self.verified_residual_at_threshold - max(threshold - score, 0.0)
        return max(self.verified_residual, grown)


@dataclass(frozen=True)
class Decision:
    is_duplicate: bool
    score: float
    each: list[bool]  # per candidate, nearest first
    each_score: list[float] = field(default_factory=list)  # the rule's score per candidate, nearest first


@dataclass(frozen=True)
class Rule:
    scores: Callable[[Policy, list[Candidate], float], list[float]]  # (policy, candidates, background)
    threshold: Callable[[Policy], float]
    threshold_field: str | None = None  # the Policy field holding its threshold (None: fixed)
    score_range: Callable[[Policy], tuple[float, float]] = lambda policy: (-1.0, 1.0)  # what its scores can be


def _global(policy: Policy, candidates: list[Candidate], background: float) -> list[float]:
    return [c.similarity for c in candidates]


def _within_radius(policy: Policy, candidates: list[Candidate], background: float) -> list[float]:
    return [radius(policy, c.threshold) - c.distance for c in candidates]


def _margin(policy: Policy, candidates: list[Candidate], background: float) -> list[float]:
    """The nearest image wins by a margin over the nearest other picture; its twins (the same
    picture enrolled under other keys) share its score, the rest cannot win."""
    twins = [is_twin(policy, c) for c in candidates[1:]]
    second = next((c.similarity for c, twin in zip(candidates[1:], twins, strict=True) if not twin), 0.0)
    score = candidates[0].similarity - policy.margin_beta * second
    return [score] + [score if twin else float("-inf") for twin in twins]


def is_twin(policy: Policy, candidate: Candidate) -> bool:
    return candidate.twin or candidate.nearest_similarity >= policy.twin_similarity


def _normalized(policy: Policy, candidates: list[Candidate], background: float) -> list[float]:
    return [c.similarity - policy.normalization_beta * background for c in candidates]


RULES: dict[str, Rule] = {
    "global": Rule(_global, lambda policy: policy.global_threshold, "global_threshold"),
    "seed": Rule(_within_radius, lambda policy: 0.0),
    "clamped": Rule(_within_radius, lambda policy: 0.0),
    "margin": Rule(
        _margin,
        lambda policy: policy.margin_threshold,
        "margin_threshold",
        lambda policy: (-1 - policy.margin_beta, 1 + policy.margin_beta),
    ),
    "normalized": Rule(
        _normalized,
        lambda policy: policy.normalized_threshold,
        "normalized_threshold",
        lambda policy: (-1 - policy.normalization_beta, 1 + policy.normalization_beta),
    ),
}


def with_rule(policy: Policy, rule: str, threshold: float) -> Policy:
    """The policy with another rule and that rule's threshold (a collection's own settings)."""
    field_name = RULES[rule].threshold_field
    if field_name is None:
        raise ValueError(f"the {rule} rule has no threshold to set; one of {', '.join(settable_rules())}")
    return replace(policy, rule=rule, **{field_name: threshold})


def threshold_problem(policy: Policy, rule: str, threshold: float) -> str | None:
    """Why a threshold cannot be a rule's (outside what its scores can be, NaN included), or None."""
    low, high = RULES[rule].score_range(policy)
    if low <= threshold <= high:
        return None
    return f"the {rule} rule's scores lie from {low:g} to {high:g}: a threshold of {threshold:g} is outside them"


def settable_rules() -> list[str]:
    return [name for name, rule in RULES.items() if rule.threshold_field]


def threshold_of(policy: Policy) -> float:
    return RULES[policy.rule].threshold(policy)


def decide(policy: Policy, candidates: list[Candidate], background_similarity: float = 0.0) -> Decision:
    if not candidates:
        return Decision(False, float("-inf"), [])
    rule = RULES[policy.rule]
    scores = rule.scores(policy, candidates, background_similarity)
    each = [score >= rule.threshold(policy) for score in scores]
    return Decision(each[0], scores[0], each, scores)


def is_borderline(policy: Policy, decision: Decision) -> bool:
    """Not a duplicate, but within the geometric band below the threshold: geometry decides."""
    threshold = RULES[policy.rule].threshold(policy)
    return not decision.is_duplicate and decision.score >= threshold - policy.geometric_band


def radius(policy: Policy, threshold: float) -> float:
    if policy.rule == "clamped":
        return min(max(threshold, policy.clamp_min), policy.clamp_max)
    return threshold
