"""What the SDK hands back: plain dataclasses and numpy arrays, never protobuf messages."""

from dataclasses import dataclass, field

import numpy as np

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Hit:
    """One search result: the candidate's id, its cosine similarity to the query, and its metadata."""
    id: str
    score: float
    metadata: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    revision: str
    dimension: int
    image_size: tuple[int, int]
    device: str
    dtype: str
    fingerprint: str
    max_batch_size: int


@dataclass(frozen=True)
class IndexStats:
    """What a collection holds (summed over shards)."""
    count: int
    dimension: int
    index_kind: str
    model_fingerprint: str
    collection: str = "default"
    dead: int = 0
    disk_bytes: int = 0  # the three below together
    trained: bool = False
    damaged: int = 0
    vector_bytes: int = 0
    catalog_bytes: int = 0
    snapshot_bytes: int = 0
    pending: int = 0  # ivfpq, hnsw: items searched exactly until the structure takes them in
    snapshotting: bool = False  # a shard is writing a snapshot now


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    index_kind: str
    params: dict[str, int]
    model_fingerprint: str
    dimension: int
    count: int


@dataclass(frozen=True)
class WriteReport:
    """What an upsert did: ids new to the collection, ids whose item it replaced, and the count after."""
    inserted: int
    replaced: int
    count: int

    @property
    def upserted(self) -> int:
        return self.inserted + self.replaced


@dataclass(frozen=True)
class StoredItem:
    """A candidate as the index stores it: the vector exactly as it was sent (None when not asked for), and
    its metadata."""
    id: str
    vector: np.ndarray | None
    metadata: dict[str, Scalar]


@dataclass(frozen=True)
class PartialHits:
    """Search results that may lack some shards' candidates; missing_shards names those (empty: complete)."""
    hits: list[list[Hit]]
    missing_shards: list[str]


@dataclass
class IndexReport:
    """What an indexing run did: items written (new and replaced), skipped as already held, and each item
    that failed with why (by path or id)."""
    indexed: int = 0
    inserted: int = 0
    replaced: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
