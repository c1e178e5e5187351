"""Assembles the index: binds the port, loads the data directory, then serves (health SERVING)."""

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import faiss

from imgsim.server.metrics import Metrics
from imgsim.server.runner import Health, RunningServer, StartAborted, run_in_background, start_server
from imgsim.v1 import index_pb2, index_pb2_grpc
from index_service.config import IndexConfig
from index_service.loading import LoadAborted
from index_service.registry import Registry
from index_service.servicer import IndexServicer

log = logging.getLogger(__name__)
SERVICE_NAME = index_pb2.DESCRIPTOR.services_by_name["Index"].full_name
# FAISS switches to BLAS from this many queries at once (its default, 20, is right; set explicitly because
# it is process-wide and read at every search).
BLAS_FROM_QUERIES = 20


@dataclass
class IndexServer(RunningServer):
    servicer: IndexServicer = None


def index_metrics(metrics: Metrics, servicer: IndexServicer) -> None:
    def per_collection(read):
        def values():
            registry = servicer.registry
            return [([name], float(read(c))) for name, c in (registry.collections.items() if registry else [])]
        return values
    metrics.readings("imgsim_index_vectors", "items held, by collection", ["collection"], per_collection(
        lambda c: c.count))
    metrics.readings("imgsim_index_dead_rows", "rows of deleted or replaced items not yet reclaimed",
                     ["collection"], per_collection(lambda c: c.rows.unused()))
    metrics.readings("imgsim_index_damaged_items", "items whose stored bytes fail their checksum", ["collection"],
                     per_collection(lambda c: len(c.damaged)))
    metrics.readings("imgsim_index_vector_file_bytes", "bytes of the vector file", ["collection"],
                     per_collection(lambda c: c.vectors.disk_bytes if c.vectors else 0))
    metrics.readings("imgsim_index_log_bytes", "bytes of the catalog and its write-ahead log", ["collection"],
                     per_collection(lambda c: c.catalog.disk_bytes))
    metrics.readings("imgsim_index_last_snapshot_timestamp_seconds", "Unix time of the last snapshot (0: none yet)",
                     ["collection"], per_collection(lambda c: c.last_snapshot_unix))


async def start(config: IndexConfig, stopping: threading.Event | None = None) -> IndexServer:
    """Binds the port (a taken port fails before anything is loaded), loads, then reports SERVING."""
    faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES
    faiss.omp_set_num_threads(config.faiss_threads)
    work = ThreadPoolExecutor(max_workers=config.search_threads, thread_name_prefix="index-work",
                              initializer=faiss.omp_set_num_threads, initargs=(config.faiss_threads,))
    checking = ThreadPoolExecutor(max_workers=config.search_threads, thread_name_prefix="index-check")
    metrics = Metrics()
    search_seconds = metrics.histogram("imgsim_index_search_seconds", "search time, by index kind and exactness",
                                       ["kind", "exact"])
    servicer = IndexServicer(work, config.serving.stream_idle_s, search_seconds, checking)
    index_metrics(metrics, servicer)
    health = Health(SERVICE_NAME)
    server, port, metrics_port = await start_server(
        config.serving, lambda s: index_pb2_grpc.add_IndexServicer_to_server(servicer, s), SERVICE_NAME, health,
        metrics)
    try:
        registry = await asyncio.to_thread(open_registry, config, stopping)
    except BaseException as err:
        await server.stop(0)
        metrics.stop()
        work.shutdown(wait=False)
        checking.shutdown(wait=False)
        if isinstance(err, LoadAborted):
            raise StartAborted(str(err)) from None
        raise
    servicer.registry = registry
    await health.set_serving(True)
    log.info("index serving %s on %s:%d (%d collections; metrics port %s)", config.data_dir, config.serving.host,
             port, len(registry.collections), metrics_port)

    def close() -> None:
        registry.close()
        work.shutdown(wait=True)
        checking.shutdown(wait=True)

    def cutting() -> None:
        servicer.cut = True

    return IndexServer(server, port, health, config.serving, metrics, metrics_port, close, cutting,
                       servicer=servicer)


def open_registry(config: IndexConfig, stopping: threading.Event | None) -> Registry:
    registry = Registry(config.data_dir, config.index_kind, config.kind_params, config.snapshot_every,
                        config.compact_dead_fraction, config.max_storage_bytes)
    try:
        registry.open_all(stopping)
    except BaseException:
        registry.close()
        raise
    return registry


def create_server(config: IndexConfig) -> IndexServer:
    """An index on an event loop of its own, in a thread (tests and programs that embed the service)."""
    return run_in_background(lambda: start(config))
