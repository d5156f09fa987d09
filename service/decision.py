"""Decision rules: is a query a near-duplicate of its nearest enrolled images?

Every rule turns the query's candidates (nearest first) into a score, higher meaning "more
surely a duplicate", and decides by comparing it with the rule's threshold. The score is what
tools/evaluate.py ranks by, so each rule's precision/recall trade-off can be measured.

  global      cosine similarity of the nearest image                      >= global_threshold
  seed        the nearest image's own radius minus its distance (the seed) >= 0
  clamped     as seed, with the radius clamped to [clamp_min, clamp_max]   >= 0
  margin      similarity of the nearest minus margin_beta x that of the
              second nearest (the enrolled set as its own background)      >= margin_threshold
  normalized  similarity minus beta x the query's mean similarity to its nearest background
              (distractor) features, as in the SSCD paper                  >= normalized_threshold
"""

from dataclasses import dataclass

from service.store import Record

RULES = ("global", "seed", "clamped", "margin", "normalized")


@dataclass(frozen=True)
class Candidate:
    record: Record
    distance: float  # Euclidean between unit vectors

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance**2 / 2.0


@dataclass(frozen=True)
class Policy:
    """A rule and its parameters. The defaults are the service's: margin won on the benchmark and
    0.45 keeps precision >= 99.9 % there (docs/quality.md)."""

    rule: str = "margin"
    global_threshold: float = 0.75
    clamp_min: float = 0.3
    clamp_max: float = 0.7
    margin_threshold: float = 0.45
    margin_beta: float = 0.5
    normalization_beta: float = 1.0
    normalized_threshold: float = 0.5
    # Scores this far below the rule's threshold get the geometric check (0: never).
    geometric_band: float = 0.0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown decision rule {self.rule!r}; one of {', '.join(RULES)}")


@dataclass(frozen=True)
class Decision:
    is_duplicate: bool
    score: float
    each: list[bool]  # per candidate, nearest first


def decide(policy: Policy, candidates: list[Candidate], background_similarity: float = 0.0) -> Decision:
    if not candidates:
        return Decision(False, float("-inf"), [])
    rule = policy.rule
    if rule == "global":
        each = [c.similarity >= policy.global_threshold for c in candidates]
        return Decision(each[0], candidates[0].similarity, each)
    if rule in ("seed", "clamped"):
        margins = [radius(policy, c.record.threshold) - c.distance for c in candidates]
        each = [m >= 0 for m in margins]
        return Decision(each[0], margins[0], each)
    if rule == "margin":
        second = candidates[1].similarity if len(candidates) > 1 else 0.0
        score = candidates[0].similarity - policy.margin_beta * second
        duplicate = score >= policy.margin_threshold
        return Decision(duplicate, score, [duplicate] + [False] * (len(candidates) - 1))
    scores = [c.similarity - policy.normalization_beta * background_similarity for c in candidates]
    each = [s >= policy.normalized_threshold for s in scores]
    return Decision(each[0], scores[0], each)


def threshold_of(policy: Policy) -> float:
    return {
        "global": policy.global_threshold,
        "margin": policy.margin_threshold,
        "normalized": policy.normalized_threshold,
    }.get(policy.rule, 0.0)


def is_borderline(policy: Policy, decision: Decision) -> bool:
    """Not a duplicate, but within the geometric band below the threshold: geometry decides."""
    return not decision.is_duplicate and decision.score >= threshold_of(policy) - policy.geometric_band


def radius(policy: Policy, threshold: float) -> float:
    if policy.rule == "clamped":
        return min(max(threshold, policy.clamp_min), policy.clamp_max)
    return threshold
