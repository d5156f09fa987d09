"""Stats' and SetCollection's view of the collections: records and the decision each one uses."""

from collections.abc import Callable

from service.core.decision import Policy, threshold_of
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage import collections
from service.storage.store import Store


def collection_stats(
    store: Store, policy_of: Callable[[str], Policy], only: str | None = None
) -> list[pb.CollectionStats]:
    """Every collection with records or settings (or just `only`), the default one first."""
    records, chosen = collections.counts(store), collections.settings(store)
    names = [only] if only is not None else sorted(records.keys() | chosen.keys())
    return [
        pb.CollectionStats(
            name=name,
            records=records.get(name, 0),
            rule=policy_of(name).rule,
            threshold=threshold_of(policy_of(name)),
            own_settings=name in chosen,
        )
        for name in names
    ]
