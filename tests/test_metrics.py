"""The benchmark's metrics on small hand-made cases with known answers."""

import numpy as np
import pytest

from tools.evaluation.metrics import (
    average_precision,
    pr_curve,
    precision_recall_of,
    recall_at_precision,
    where_missed,
)


def test_a_perfect_ranking():
    curve = pr_curve([0.9, 0.8, 0.2, 0.1], [True, True, False, False], positives=2)
    assert list(curve.precision) == [1.0, 1.0, 2 / 3, 0.5]
    assert list(curve.recall) == [0.5, 1.0, 1.0, 1.0]
    assert recall_at_precision(curve, 0.99) == (1.0, 0.8)
    assert average_precision(curve) == 1.0


def test_one_false_alarm_on_top():
    # Ranked: wrong, right, right, wrong; 3 queries have a true match (one never predicted right).
    curve = pr_curve([0.9, 0.8, 0.7, 0.1], [False, True, True, False], positives=3)
    assert recall_at_precision(curve, 0.99) == (0.0, float("inf"))
    assert recall_at_precision(curve, 0.6) == (2 / 3, 0.7)
    # AP = (1/3) * (1/2) + (1/3) * (2/3)
    assert average_precision(curve) == pytest.approx(1 / 6 + 2 / 9)


def test_tied_scores_are_taken_together():
    # Integer Hamming distances tie: a threshold at -3 takes both queries scored -3.
    curve = pr_curve([-1, -3, -3, -5], [True, True, False, True], positives=3)
    assert list(curve.thresholds) == [-1, -3, -5]
    assert list(curve.precision) == [1.0, 2 / 3, 3 / 4]
    assert recall_at_precision(curve, 0.99) == (1 / 3, -1)
    assert recall_at_precision(curve, 0.7) == (1.0, -5)


def test_order_of_input_does_not_matter():
    rng = np.random.default_rng(0)
    scores, correct = rng.normal(size=50), rng.random(50) < 0.5
    order = rng.permutation(50)
    first, second = pr_curve(scores, correct, 30), pr_curve(scores[order], correct[order], 30)
    assert average_precision(first) == pytest.approx(average_precision(second))


def test_fixed_decisions():
    precision, recall = precision_recall_of([True, True, False, True], [True, False, True, True], positives=4)
    assert (precision, recall) == (2 / 3, 0.5)
    assert precision_recall_of([False, False], [True, False], positives=1) == (1.0, 0.0)


def test_empty_input():
    curve = pr_curve([], [], positives=0)
    assert average_precision(curve) == 0.0 and recall_at_precision(curve, 0.9) == (0.0, float("inf"))


def test_a_missed_copy_is_said_to_be_lost_where_it_was():
    right = frozenset({"a.jpg", "twin/a.jpg"})
    refused = {"is_duplicate": False, "keys": ["twin/a.jpg", "b.jpg"]}
    further = {"is_duplicate": False, "keys": ["b.jpg", "a.jpg"]}
    not_searched_out = {"is_duplicate": False, "keys": ["b.jpg", "c.jpg"]}
    wrong = {"is_duplicate": True, "keys": ["a.jpg", "b.jpg"], "declared": "b.jpg"}
    assert where_missed(right, refused) == "refused with the right record nearest"
    assert where_missed(right, further) == "the right record among the neighbours"
    assert where_missed(right, not_searched_out) == where_missed(right, {"is_duplicate": False, "keys": []})
    assert where_missed(right, not_searched_out) == "the right record not among them"
    assert where_missed(right, wrong) == "declared another picture"
