"""What the store holds: records (and their byte encoding), enrolments to write, and changes."""

import json
import struct
from dataclasses import dataclass, field

import numpy as np

FEATURE_DTYPE = np.float16
ENROLL, DELETE = b"E", b"D"
MAX_KEY_BYTES = 511  # LMDB's default limit on a key's length


class StoreError(RuntimeError):
    pass


class StoreUnwritable(StoreError):
    """A write failed on the disk's side (full, failing): nothing of it was kept."""


class ModelMismatch(StoreError):
    """The store holds features of another model; mixing them would make every distance meaningless."""


@dataclass(frozen=True)
class Record:
    key: str
    feature: np.ndarray  # unit length, stored as float16
    threshold: float
    sha256: bytes
    model: str
    enrolled_at: float
    metadata: dict[str, str] = field(default_factory=dict)
    id: int = 0
    seq: int = 0
    collection: str = ""  # "" is the default collection

    @property
    def stored_here(self) -> bool:
        """Whether this record is in this data directory's store, so its keypoints, reference and
        small view can be read there. A record another front service enrolled, found through a
        shared index (Milvus), is not: it carries no id of this store (ids start at 1)."""
        return self.id != 0

    # version, id, seq, threshold, enrolled_at, len(model), len(key), dim; version 2 adds len(collection)
    _HEADER = struct.Struct("<BQQfdHHH")
    _COLLECTION = struct.Struct("<H")

    def encode(self) -> bytes:
        model, key, collection = self.model.encode(), self.key.encode(), self.collection.encode()
        feature = np.asarray(self.feature, dtype=FEATURE_DTYPE)
        header = self._HEADER.pack(
            2, self.id, self.seq, self.threshold, self.enrolled_at, len(model), len(key), feature.size
        )
        metadata = json.dumps(self.metadata, ensure_ascii=False, sort_keys=True).encode()
        return b"".join(
            [
                header,
                self._COLLECTION.pack(len(collection)),
                self.sha256,
                feature.tobytes(),
                model,
                key,
                collection,
                metadata,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> "Record":
        version, id_, seq, threshold, enrolled_at, model_len, key_len, dim = cls._HEADER.unpack_from(data)
        if version not in (1, 2):
            raise StoreError(f"record {id_} has unknown format version {version}")
        at, collection_len = cls._HEADER.size, 0
        if version == 2:
            (collection_len,), at = cls._COLLECTION.unpack_from(data, at), at + cls._COLLECTION.size
        sha, at = data[at : at + 32], at + 32
        width = dim * np.dtype(FEATURE_DTYPE).itemsize
        feature, at = np.frombuffer(data, FEATURE_DTYPE, dim, at), at + width
        model, at = bytes(data[at : at + model_len]).decode(), at + model_len
        key, at = bytes(data[at : at + key_len]).decode(), at + key_len
        collection, at = bytes(data[at : at + collection_len]).decode(), at + collection_len
        metadata = json.loads(bytes(data[at:]))
        return cls(key, feature, threshold, bytes(sha), model, enrolled_at, metadata, id_, seq, collection)


def stored_name(collection: str, key: str) -> bytes:
    """A key's name in the store: the key itself in the default collection, else the collection,
    NUL and the key (neither holds a NUL), so a key is unique within its collection."""
    return key.encode() if not collection else collection.encode() + b"\0" + key.encode()


def split_name(name: bytes) -> tuple[str, str]:
    """(collection, key) of a stored name."""
    collection, _, key = bytes(name).rpartition(b"\0")
    return collection.decode(), key.decode()


@dataclass(frozen=True)
class Change:
    seq: int
    op: bytes  # ENROLL or DELETE
    id: int
    # A deletion's collection and key (empty in logs written before they were kept).
    collection: str = ""
    key: str = ""


@dataclass(frozen=True)
class Enrolment:
    """One image to write: the key, its bytes' digest, and what Triton made of it."""

    key: str
    sha256: bytes
    feature: np.ndarray
    threshold: float
    metadata: dict[str, str]
    keypoints: bytes = b""
    runtime: str = ""  # what made the feature; the store counts enrolments per runtime
    collection: str = ""
    reference: bytes = b""  # for verification (media/verification.py), when it is on
    reference_points: bytes = b""  # the reference's keypoints (verification.reference_points), with it
    small_view: np.ndarray | None = None  # the feature of the picture shrunk (storage/small_views.py), when on


@dataclass(frozen=True)
class Written:
    status: str  # "ENROLLED", "UPDATED" or "UNCHANGED"
    record: Record
    replaced_id: int | None = None  # the id an UPDATED record superseded


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def from_u64(data: bytes) -> int:
    return int.from_bytes(data, "big")
