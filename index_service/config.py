"""The index's configuration, built once from flags and environment in __main__."""

from dataclasses import dataclass, field
from pathlib import Path

from index_service.index import KINDS, KindParams

INDEX_KINDS = tuple(KINDS)


@dataclass(frozen=True)
class IndexConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50052
    index_kind: str = "flat"
    kind_params: KindParams = field(default_factory=KindParams)
    snapshot_every: int = 100_000
    faiss_threads: int = 1
    max_message_bytes: int = 64 * 1024 * 1024
    max_workers: int = 32
    grace_s: float = 10.0
    log_level: str = "INFO"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
