"""The decision rules, on hand-made candidates."""

import pytest

from service.core.decision import Candidate, Policy, decide


def candidate(distance: float, threshold: float = 0.5) -> Candidate:
    return Candidate(distance, threshold)


def test_similarity_is_cosine_between_unit_vectors():
    assert candidate(0.0).similarity == 1.0 and candidate(2**0.5).similarity == pytest.approx(0.0)


def test_seed_rule_uses_each_images_own_radius():
    decision = decide(Policy("seed"), [candidate(0.4, threshold=0.5), candidate(0.6, threshold=0.7)])
    assert decision.is_duplicate and decision.score == pytest.approx(0.1) and decision.each == [True, True]
    assert not decide(Policy("seed"), [candidate(0.4, threshold=0.3)]).is_duplicate


def test_clamped_rule_bounds_the_radius():
    policy = Policy("clamped", clamp_min=0.45, clamp_max=0.6)
    assert decide(policy, [candidate(0.4, threshold=0.1)]).is_duplicate  # radius raised to 0.45
    assert not decide(policy, [candidate(0.65, threshold=0.9)]).is_duplicate  # radius cut to 0.6


def test_global_rule():
    policy = Policy("global", global_threshold=0.9)
    assert decide(policy, [candidate(0.4)]).is_duplicate  # similarity 0.92
    assert not decide(policy, [candidate(0.5)]).is_duplicate  # similarity 0.875


def test_margin_rule_needs_a_clear_winner():
    policy = Policy("margin", margin_threshold=0.2, margin_beta=1.0)
    assert decide(policy, [candidate(0.4), candidate(1.2)]).is_duplicate  # 0.92 - 0.28
    close = decide(policy, [candidate(0.4), candidate(0.45)])
    assert not close.is_duplicate and close.score == pytest.approx(0.92 - 0.89875)
    half = decide(Policy("margin", margin_threshold=0.45, margin_beta=0.5), [candidate(0.4), candidate(0.45)])
    assert half.is_duplicate and half.score == pytest.approx(0.92 - 0.5 * 0.89875)
    assert decide(policy, [candidate(0.4)]).score == pytest.approx(0.92)  # no second: against 0


def test_normalized_rule_subtracts_background_similarity():
    policy = Policy("normalized", normalization_beta=1.0, normalized_threshold=0.3)
    assert decide(policy, [candidate(0.4)], background_similarity=0.5).is_duplicate  # 0.92 - 0.5
    assert not decide(policy, [candidate(0.4)], background_similarity=0.7).is_duplicate


def test_no_candidates_is_not_a_duplicate_and_unknown_rules_are_refused():
    assert not decide(Policy("global"), []).is_duplicate
    with pytest.raises(ValueError, match="unknown decision rule"):
        Policy("coin-flip")
