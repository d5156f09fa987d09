"""Collections as the API sees them: SetCollection's validation and storage, and each
collection's records and the decision it uses (Stats, SetCollection). The names, counts and
stored settings themselves are storage/collections.py's."""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from service.core.decision import (
    MIRROR_POLICIES,
    Policy,
    settable_rules,
    threshold_of,
    threshold_problem,
    with_rule,
)
from service.core.enrollment import key_problem
from service.core.errors import RequestError
from service.storage import collections as stored
from service.storage.collections import CollectionSettings
from service.storage.collections import name_problem as name_problem  # the API's check of a request's names
from service.storage.store import Store

log = logging.getLogger(__name__)


def require_name(key: str, collection: str) -> None:
    """A request's key and collection, or the RequestError that says what is wrong with them."""
    if problem := key_problem(key) or name_problem(collection):
        raise RequestError(problem)


@dataclass(frozen=True)
class CollectionStats:
    name: str
    records: int
    rule: str  # the decision rule its Checks use
    threshold: float
    own_settings: bool  # set by SetCollection (else the service's)
    mirror: str  # whether a mirror image is a duplicate in it (--mirror)


class Collections:
    """Each collection's settings and statistics. `policies()` gives each collection's policy as
    the decision reads it (core/judging.py's Judge.policies), so what Stats reports is what a
    Check uses."""

    def __init__(self, store: Store, policy: Policy, policies: Callable[[], Callable[[str], Policy]]) -> None:
        self.store = store
        self.policy = policy  # the service's: a collection's rule and threshold are checked against it
        self.policies = policies

    def stats(self, only: str | None = None) -> list[CollectionStats]:
        """Every collection with records or settings (or just `only`), the default one first."""
        records, chosen = stored.counts(self.store), stored.settings(self.store)
        names = [only] if only is not None else sorted(records.keys() | chosen.keys())
        policy_of = self.policies()
        return [
            CollectionStats(
                name=name,
                records=records.get(name, 0),
                rule=policy_of(name).rule,
                threshold=threshold_of(policy_of(name)),
                own_settings=name in chosen,
                mirror=policy_of(name).mirror,
            )
            for name in names
        ]

    def configure(
        self, name: str, rule: str, threshold: float, reset: bool = False, mirror: str = ""
    ) -> CollectionStats:
        """Gives a collection its own rule and threshold, or its own mirror policy, or both (`reset`:
        back to the service's); raises RequestError for a bad name, a rule that cannot be set or an
        unknown mirror policy. Returns its stats after."""
        if problem := name_problem(name):
            raise RequestError(problem)
        if mirror and mirror not in MIRROR_POLICIES:
            raise RequestError(f"mirror {mirror!r} is not one of {', '.join(MIRROR_POLICIES)}")
        chosen = None
        if not reset and mirror and not rule:  # the mirror policy alone: the service's rule stays
            chosen = CollectionSettings("", 0.0, mirror)
        elif not reset:
            try:
                with_rule(self.policy, rule, threshold)
            except KeyError:
                rules = ", ".join(settable_rules())
                raise RequestError(f"rule {rule!r} cannot be set for a collection; one of {rules}") from None
            except ValueError as error:
                raise RequestError(str(error)) from None
            if problem := threshold_problem(self.policy, rule, threshold):
                raise RequestError(problem)
            chosen = CollectionSettings(rule, threshold, mirror)
        stored.set_settings(self.store, name, chosen)
        log.info("collection %r: %s", name, chosen or "the service's settings")
        [stats] = self.stats(name)
        return stats
