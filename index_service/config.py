"""The index's configuration, built once from flags and environment in __main__."""

from dataclasses import dataclass, field
from pathlib import Path

from imgsim.serving import ServingConfig
from index_service.index import KINDS, KindParams

INDEX_KINDS = tuple(KINDS)


@dataclass(frozen=True)
class IndexConfig:
    data_dir: Path
    serving: ServingConfig = field(default_factory=ServingConfig)
    index_kind: str = "flat"
    kind_params: KindParams = field(default_factory=KindParams)
    snapshot_every: int = 100_000
    faiss_threads: int = 1
    max_storage_bytes: int | None = None
