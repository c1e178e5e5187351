"""Assembles the embedder: model, preprocessing, batcher, servicer, on a gRPC server."""

import logging

import grpc

from embedder_service.batcher import Batcher
from embedder_service.config import EmbedderConfig
from embedder_service.model import EmbeddingModel
from embedder_service.pipeline import Pipeline
from embedder_service.preprocess import make_preprocessor
from embedder_service.servicer import EmbedderServicer
from imgsim.serving import Health, build_server
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name


class EmbedderServer:
    """A running embedder: the gRPC server plus what must be stopped with it."""

    def __init__(self, server: grpc.Server, port: int, health: Health, pipeline: Pipeline, servicer: EmbedderServicer):
        self.server = server
        self.port = port
        self.health = health
        self.pipeline = pipeline
        self.servicer = servicer

    def stop(self, grace_s: float | None = None) -> None:
        self.health.set_serving(False)
        self.servicer.ready.clear()
        self.server.stop(grace_s).wait()
        self.pipeline.stop()


def create_server(config: EmbedderConfig, model: EmbeddingModel | None = None) -> EmbedderServer:
    """Loads the model (unless given one), starts serving on config.address, warms up, then reports SERVING."""
    model = model or EmbeddingModel(config.model, config.revision, config.device, config.dtype,
                                    config.trust_remote_code)
    batcher = Batcher(model.embed, config.max_batch_size, config.max_batch_delay_ms / 1000.0)
    preprocess = make_preprocessor(model.processor, config.max_image_pixels, config.fast_preprocess, config.jpeg_draft)
    pipeline = Pipeline(preprocess, batcher, config.preprocess_workers, config.max_queue)
    servicer = EmbedderServicer(pipeline, model.info, config.max_request_images, config.max_image_bytes,
                                config.max_batch_size)
    health = Health(SERVICE_NAME)
    server, port = build_server(
        config.address, lambda s: embedder_pb2_grpc.add_EmbedderServicer_to_server(servicer, s), SERVICE_NAME,
        health, config.max_message_bytes, config.max_workers)
    model.warm_up(config.max_batch_size)
    servicer.ready.set()
    health.set_serving(True)
    log.info("embedder serving %s on %s:%d", config.model, config.host, port)
    return EmbedderServer(server, port, health, pipeline, servicer)
