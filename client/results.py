"""What the SDK hands back: plain dataclasses and numpy arrays, never protobuf messages."""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Hit:
    """One search result: the candidate's id, its cosine similarity to the query, and its metadata."""
    id: str
    score: float
    metadata: dict[str, str] = field(default_factory=dict)


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
    count: int
    dimension: int
    index_kind: str
    model_fingerprint: str


@dataclass(frozen=True)
class StoredItem:
    """A candidate as the index stores it: the vector exactly as it was sent, and its metadata."""
    id: str
    vector: np.ndarray
    metadata: dict[str, str]


@dataclass(frozen=True)
class PartialHits:
    """Search results that may lack some shards' candidates; missing_shards names those (empty: complete)."""
    hits: list[list[Hit]]
    missing_shards: list[str]


@dataclass
class IndexReport:
    """What index_dataset did: how many rows were indexed, and each row that failed with why."""
    indexed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
