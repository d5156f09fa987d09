"""Decision rules: is a query a near-duplicate of its neighbours?"""

from dataclasses import dataclass

from service.store import Record


@dataclass(frozen=True)
class Candidate:
    record: Record
    distance: float


def within_own_threshold(candidate: Candidate) -> bool:
    """The seed's rule: a match if the query lies within the enrolled image's own radius."""
    return candidate.distance <= candidate.record.threshold


def decide(candidates: list[Candidate]) -> tuple[bool, list[bool]]:
    """The overall decision (the nearest candidate's) and each candidate's, nearest first."""
    each = [within_own_threshold(candidate) for candidate in candidates]
    return (each[0] if each else False), each
