"""Retrieval metrics for near-duplicate detection, over one prediction per query.

Each query yields one prediction: its best match and a score (higher: more surely a duplicate).
A prediction is correct when the query is a transformed copy and the match is its reference.
Thresholds can only be placed between distinct scores, so tied scores are taken together.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Curve:
    """Precision and recall at each distinct score, from the highest score down."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


def pr_curve(scores: np.ndarray, correct: np.ndarray, positives: int) -> Curve:
    """`scores` and `correct` have one entry per prediction; `positives` counts the queries
    that have a true match (the recall denominator), predicted correctly or not."""
    scores, correct = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    if not len(scores) or positives == 0:
        return Curve(np.array([]), np.array([]), np.array([]))
    order = np.argsort(-scores, kind="stable")
    scores, correct = scores[order], correct[order]
    true_positives = np.cumsum(correct)
    # The last index of each run of tied scores: a threshold takes all of a tie or none of it.
    ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    taken = ends + 1
    return Curve(scores[ends], true_positives[ends] / taken, true_positives[ends] / positives)


def recall_at_precision(curve: Curve, min_precision: float) -> tuple[float, float]:
    """The highest recall at a threshold whose precision is at least `min_precision`, and
    that threshold (the lowest score accepted); (0, inf) if no threshold reaches it."""
    meets = np.flatnonzero(curve.precision >= min_precision)
    if not len(meets):
        return 0.0, float("inf")
    best = meets[np.argmax(curve.recall[meets])]
    return float(curve.recall[best]), float(curve.thresholds[best])


def average_precision(curve: Curve) -> float:
    """Area under the precision-recall curve as a step function (DISC21's µAP over the
    predictions): the sum over distinct thresholds of precision x the recall it adds."""
    if not len(curve.recall):
        return 0.0
    gained = np.diff(np.r_[0.0, curve.recall])
    return float((gained * curve.precision).sum())


def precision_recall_of(decisions: np.ndarray, correct: np.ndarray, positives: int) -> tuple[float, float]:
    """Precision and recall of fixed yes/no decisions (a deployed threshold)."""
    decisions, correct = np.asarray(decisions, dtype=bool), np.asarray(correct, dtype=bool)
    said_yes = int(decisions.sum())
    right = int((decisions & correct).sum())
    return (right / said_yes if said_yes else 1.0), (right / positives if positives else 0.0)


def decided_key(answer: dict) -> str | None:
    """The key a Check's decision is about: the first match it declares a duplicate (the nearest may
    be a look-alike that verification refused, with its twin confirmed), else the nearest."""
    return answer.get("declared") or (answer["keys"][0] if answer["keys"] else None)


def where_missed(expected: frozenset[str], answer: dict) -> str:
    """Where a copy the decision did not find was lost: declared a duplicate of another picture; or
    its right record was the nearest (the decision refused it), among the other neighbours of the
    whole query, or not among them (the search did not bring it)."""
    keys = answer["keys"]
    if answer["is_duplicate"]:
        return "declared another picture"
    if keys and keys[0] in expected:
        return "refused with the right record nearest"
    if any(key in expected for key in keys):
        return "the right record among the neighbours"
    return "the right record not among them"
