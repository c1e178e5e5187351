"""Assembles the index: store, collection, servicer, on a gRPC server."""

import logging

import grpc

from imgsim.serving import Health, build_server
from imgsim.v1 import index_pb2, index_pb2_grpc
from index_service.collection import Collection
from index_service.config import IndexConfig
from index_service.servicer import IndexServicer

log = logging.getLogger(__name__)
SERVICE_NAME = index_pb2.DESCRIPTOR.services_by_name["Index"].full_name


class IndexServer:
    """A running index: the gRPC server plus what must be closed with it."""

    def __init__(self, server: grpc.Server, port: int, health: Health, servicer: IndexServicer):
        self.server = server
        self.port = port
        self.health = health
        self.servicer = servicer

    def stop(self, grace_s: float | None = None) -> None:
        self.health.set_serving(False)
        self.servicer.ready.clear()
        self.server.stop(grace_s).wait()
        self.servicer.collection.close()


def create_server(config: IndexConfig) -> IndexServer:
    """Loads the data directory, starts serving on config.address, then reports SERVING."""
    health = Health(SERVICE_NAME)
    servicer = IndexServicer(Collection(config.data_dir, config.index_kind, config.kind_params,
                                        config.snapshot_every, config.faiss_threads))
    server, port = build_server(
        config.address, lambda s: index_pb2_grpc.add_IndexServicer_to_server(servicer, s), SERVICE_NAME, health,
        config.max_message_bytes, config.max_workers)
    servicer.ready.set()
    health.set_serving(True)
    log.info("index serving %s on %s:%d", config.data_dir, config.host, port)
    return IndexServer(server, port, health, servicer)
