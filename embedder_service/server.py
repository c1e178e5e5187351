"""Assembles the embedder: model, preprocessing, batcher, servicer, metrics, on a gRPC server."""

import logging
from dataclasses import dataclass
from typing import Callable

from embedder_service.batcher import Batcher
from embedder_service.config import EmbedderConfig
from embedder_service.model import EmbeddingModel
from embedder_service.pipeline import Pipeline
from embedder_service.preprocess import make_preprocessor
from embedder_service.servicer import EmbedderServicer
from imgsim.metrics import Metrics
from imgsim.serving import BadServingConfig, Health, RunningServer, build_server
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class EmbedderServer(RunningServer):
    pipeline: Pipeline
    servicer: EmbedderServicer


def embedder_metrics(metrics: Metrics) -> Callable[[int, list[float]], None]:
    """Registers the embedder's per-batch metrics; returns the batcher's callback that feeds them."""
    waits = metrics.histogram("imgsim_embedder_queue_wait_seconds", "time an image waited for its forward pass")
    sizes = metrics.histogram("imgsim_embedder_batch_size", "images per forward pass", buckets=BATCH_BUCKETS)
    images = metrics.counter("imgsim_embedder_images", "images embedded (rate() gives images/s)")

    def on_batch(size: int, queue_waits: list[float]) -> None:
        sizes.observe(size)
        images.inc(size)
        for wait in queue_waits:
            waits.observe(wait)
    return on_batch


def create_server(config: EmbedderConfig, model: EmbeddingModel | None = None) -> EmbedderServer:
    """Loads the model (unless given one), starts serving, warms up, then reports SERVING."""
    if config.serving.max_message_bytes < config.max_image_bytes + 64 * 1024:
        raise BadServingConfig(f"--max-message-bytes {config.serving.max_message_bytes} cannot carry one image of "
                               f"--max-image-bytes {config.max_image_bytes}")
    model = model or EmbeddingModel(config.model, config.revision, config.device, config.dtype,
                                    config.trust_remote_code)
    metrics = Metrics()
    batcher = Batcher(model.embed, config.max_batch_size, config.max_batch_delay_ms / 1000.0, embedder_metrics(metrics))
    preprocess = make_preprocessor(model.processor, config.max_image_pixels, config.fast_preprocess, config.jpeg_draft)
    pipeline = Pipeline(preprocess, batcher, config.preprocess_workers, config.max_queue)
    metrics.gauge("imgsim_embedder_queue_depth", "images admitted and not yet embedded",
                  lambda: pipeline.capacity.in_use)
    servicer = EmbedderServicer(pipeline, model.info, config.max_request_images, config.max_image_bytes,
                                config.max_batch_size, config.serving.stream_idle_s)
    health = Health(SERVICE_NAME)
    server, port, metrics_port = build_server(
        config.serving, lambda s: embedder_pb2_grpc.add_EmbedderServicer_to_server(servicer, s), SERVICE_NAME,
        health, metrics)
    model.warm_up(config.max_batch_size)
    servicer.ready.set()
    health.set_serving(True)
    log.info("embedder serving %s on %s:%d (metrics port %s)", config.model, config.serving.host, port, metrics_port)
    return EmbedderServer(server, port, health, config.serving, metrics, metrics_port, servicer.ready.clear,
                          pipeline.stop, pipeline, servicer)
