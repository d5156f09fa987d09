"""The store's change log after an index snapshot: pruning what a snapshot covers.

A snapshot covers the store up to a change seq; the log keeps the changes after it, so an index
(each worker's) catches up from its snapshot. Once a newer snapshot is in use, the changes the
previous one covers are dropped; `pruned_to` says how far, so an index older than that (which
could not catch up) is refused.
"""

import lmdb

from service.storage.records import from_u64, u64
from service.storage.store import Store

PRUNED_TO = b"pruned_to"


def pruned_to(store: Store) -> int:
    """The last change seq dropped from the log: an index snapshot older than it cannot catch up."""
    with store.read() as view:
        return from_u64(view.meta(PRUNED_TO) or u64(0))


def prune(store: Store, upto: int, batch: int = 10_000) -> int:
    """Drops change log entries up to seq `upto`, in transactions of `batch`; returns how many."""

    def work(txn: lmdb.Transaction) -> int:
        cursor, dropped = txn.cursor(db=store.changes), 0
        while dropped < batch and cursor.first() and from_u64(cursor.key()) <= upto:
            cursor.delete()
            dropped += 1
        if upto > from_u64(txn.get(PRUNED_TO, u64(0), db=store.meta)):
            txn.put(PRUNED_TO, u64(upto), db=store.meta)
        return dropped

    total = 0
    while dropped := store.write(work):
        total += dropped
    return total
