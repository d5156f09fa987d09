"""The Milvus collection's layout: its fields, how it is created, and records to rows and back.

A row holds what a Check answers with (the feature as the store's float16 values, so distances
match the usearch backend's exactly), whose row it is (the writer's id and the record's id in
that writer's store), and which full load of its writer wrote it.
"""

import numpy as np

from service.storage.records import FEATURE_DTYPE, Record

FIELDS = [
    ("pk", "VARCHAR", {"max_length": 600, "is_primary": True}),  # the collection, "/" and the key
    ("collection", "VARCHAR", {"max_length": 64}),
    ("key", "VARCHAR", {"max_length": 512}),
    ("feature", "FLOAT_VECTOR", {}),  # its width is the model's (create_collection)
    ("threshold", "FLOAT", {}),
    ("sha256", "VARCHAR", {"max_length": 64}),
    ("model", "VARCHAR", {"max_length": 256}),
    ("enrolled_at", "DOUBLE", {}),
    ("metadata", "JSON", {}),
    ("writer", "VARCHAR", {"max_length": 32}),
    ("record_id", "INT64", {}),
    ("load", "INT64", {}),
]
ANSWER_FIELDS = [name for name, _, _ in FIELDS if name not in ("pk", "load")]
# HNSW as on the usearch backend (service/storage/usearch_index.py).
HNSW = {"M": 48, "efConstruction": 64}


def create_collection(client, name: str, data_types, dimensions: int) -> None:
    """A new collection with an HNSW index on the features; reads see every acknowledged write
    (Strong consistency)."""
    schema = client.create_schema(auto_id=False)
    for field, kind, options in FIELDS:
        width = {"dim": dimensions} if field == "feature" else {}
        schema.add_field(field, getattr(data_types, kind), **options, **width)
    index_params = client.prepare_index_params()
    index_params.add_index("feature", index_type="HNSW", metric_type="L2", params=HNSW)
    client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")


def primary_key(collection: str, key: str) -> str:
    """A row's primary key: collection names hold no "/", so it is unique per (collection, key)."""
    return f"{collection}/{key}"


def collection_filter(collections: frozenset[str] | None) -> str:
    """A filter expression for rows in these collections (their names need no quoting: see
    storage/collections.py); "" for all."""
    if collections is None:
        return ""
    return "collection in [" + ", ".join(f'"{name}"' for name in sorted(collections)) + "]"


def row_of(record: Record, writer: str, load: int) -> dict:
    return {
        "pk": primary_key(record.collection, record.key),
        "collection": record.collection,
        "key": record.key,
        "feature": record.feature.astype(np.float32).tolist(),
        "threshold": float(record.threshold),
        "sha256": record.sha256.hex(),
        "model": record.model,
        "enrolled_at": record.enrolled_at,
        "metadata": record.metadata,
        "writer": writer,
        "record_id": record.id,
        "load": load,
    }


def record_of(row: dict, writer: str) -> Record:
    """The row as a record; another writer's record id means nothing in this store (its keypoints
    are not here), so it becomes 0 (Record.stored_here is False)."""
    return Record(
        row["key"],
        np.asarray(row["feature"], dtype=np.float32).astype(FEATURE_DTYPE),
        float(row["threshold"]),
        bytes.fromhex(row["sha256"]),
        row["model"],
        float(row["enrolled_at"]),
        dict(row["metadata"] or {}),
        int(row["record_id"]) if row["writer"] == writer else 0,
        collection=row["collection"],
    )
