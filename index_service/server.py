"""Assembles the index: collection, servicer, metrics, on a gRPC server."""

import logging
from dataclasses import dataclass

from imgsim.metrics import Metrics
from imgsim.serving import Health, RunningServer, build_server
from imgsim.v1 import index_pb2, index_pb2_grpc
from index_service.collection import Collection
from index_service.config import IndexConfig
from index_service.servicer import IndexServicer

log = logging.getLogger(__name__)
SERVICE_NAME = index_pb2.DESCRIPTOR.services_by_name["Index"].full_name


@dataclass
class IndexServer(RunningServer):
    servicer: IndexServicer


def log_bytes(collection: Collection) -> int:
    """Size of SQLite's write-ahead log: what a restart replays before its snapshot is current."""
    wal = collection.store.path.with_name(collection.store.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def index_metrics(metrics: Metrics, collection: Collection) -> None:
    metrics.gauge("imgsim_index_vectors", "candidates held", lambda: collection.count)
    metrics.gauge("imgsim_index_log_bytes", "bytes of the write-ahead log", lambda: log_bytes(collection))
    metrics.gauge("imgsim_index_last_snapshot_timestamp_seconds", "Unix time of the last snapshot (0: none yet)",
                  lambda: collection.last_snapshot_unix)


def create_server(config: IndexConfig) -> IndexServer:
    """Loads the data directory, starts serving, then reports SERVING."""
    collection = Collection(config.data_dir, config.index_kind, config.kind_params, config.snapshot_every,
                            config.faiss_threads, config.max_storage_bytes)
    metrics = Metrics()
    index_metrics(metrics, collection)
    search_seconds = metrics.histogram("imgsim_index_search_seconds", "search time, by index kind and exactness",
                                       ["kind", "exact"])
    servicer = IndexServicer(collection, search_seconds, config.serving.stream_idle_s)
    health = Health(SERVICE_NAME)
    server, port, metrics_port = build_server(
        config.serving, lambda s: index_pb2_grpc.add_IndexServicer_to_server(servicer, s), SERVICE_NAME, health,
        metrics)
    servicer.ready.set()
    health.set_serving(True)
    log.info("index serving %s on %s:%d (metrics port %s)", config.data_dir, config.serving.host, port, metrics_port)
    # Closing writes a snapshot, so the next start loads instead of rebuilding.
    return IndexServer(server, port, health, config.serving, metrics, metrics_port, servicer.ready.clear,
                       collection.close, servicer)
