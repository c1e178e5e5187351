"""Assembles the embedder: binds the port, loads and warms the model, then serves (health SERVING)."""

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Callable

from embedder_service.batcher import Batcher
from embedder_service.config import EmbedderConfig
from embedder_service.model import EmbeddingModel
from embedder_service.pipeline import Pipeline
from embedder_service.preprocess import Limits, make_preprocessor
from embedder_service.servicer import EmbedderServicer
from imgsim.server.metrics import Metrics
from imgsim.server.runner import BadServingConfig, Health, RunningServer, StartAborted, run_in_background, start_server
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class EmbedderServer(RunningServer):
    servicer: EmbedderServicer = None

    @property
    def pipeline(self) -> Pipeline:
        return self.servicer.pipeline


def embedder_metrics(metrics: Metrics) -> tuple[Callable[[int, list[float]], None], Callable[[str], None]]:
    """Registers the embedder's per-batch and per-failure metrics; returns the callbacks that feed them."""
    waits = metrics.histogram("imgsim_embedder_queue_wait_seconds", "time an image waited for its forward pass")
    sizes = metrics.histogram("imgsim_embedder_batch_size", "images per forward pass", buckets=BATCH_BUCKETS)
    images = metrics.counter("imgsim_embedder_images", "images embedded (rate() gives images/s)")
    failed = metrics.counter("imgsim_embedder_images_failed", "images refused, by reason", ["reason"])

    def on_batch(size: int, queue_waits: list[float]) -> None:
        sizes.observe(size)
        images.inc(size)
        for wait in queue_waits:
            waits.observe(wait)
    return on_batch, lambda reason: failed.labels(reason).inc()


def load_pipeline(config: EmbedderConfig, model: EmbeddingModel | None, on_batch):
    """The model, its info (fingerprint included) and the pipeline that feeds it."""
    model = model or EmbeddingModel(config.model, config.revision, config.device, config.dtype,
                                    config.trust_remote_code, config.pooling, config.preprocessing)
    batcher = Batcher(model.embed, config.max_batch_size, config.max_batch_delay_ms / 1000.0, on_batch)
    preprocess = make_preprocessor(model.processor, Limits(config.max_image_pixels, config.max_decoded_bytes),
                                   config.preprocessing, config.fast_preprocess, config.draft_decode)
    model.warm_up(config.max_batch_size)
    info = model.info(preprocess.describe())
    pipeline = Pipeline(preprocess, batcher, config.preprocess_workers, config.max_queue, config.max_queue_bytes)
    return model, info, pipeline


async def start(config: EmbedderConfig, stopping: threading.Event | None = None,
                model: EmbeddingModel | None = None) -> EmbedderServer:
    """Binds the port (a taken port fails before the model loads), loads and warms up, then says SERVING."""
    if config.serving.max_message_bytes < config.max_image_bytes + 64 * 1024:
        raise BadServingConfig(f"--max-message-bytes {config.serving.max_message_bytes} cannot carry one image of "
                               f"--max-image-bytes {config.max_image_bytes}")
    metrics = Metrics()
    servicer = EmbedderServicer(config.max_request_images, config.max_image_bytes, config.max_batch_size,
                                config.serving.stream_idle_s)
    health = Health(SERVICE_NAME)
    server, port, metrics_port = await start_server(
        config.serving, lambda s: embedder_pb2_grpc.add_EmbedderServicer_to_server(servicer, s), SERVICE_NAME,
        health, metrics)
    on_batch, on_failed = embedder_metrics(metrics)
    try:
        model, info, pipeline = await asyncio.to_thread(load_pipeline, config, model, on_batch)
    except BaseException:
        await server.stop(0)
        metrics.stop()
        raise
    if stopping is not None and stopping.is_set():
        pipeline.stop()
        await server.stop(0)
        metrics.stop()
        raise StartAborted("stopped while loading the model")
    metrics.gauge("imgsim_embedder_queue_depth", "images admitted and not yet embedded",
                  lambda: pipeline.capacity.in_use)
    servicer.info, servicer.pipeline, servicer.on_failed = info, pipeline, on_failed
    servicer.draft_decode = config.draft_decode and hasattr(pipeline.preprocess, "reduce_to")
    await health.set_serving(True)
    log.info("embedder serving %s on %s:%d (metrics port %s)", config.model, config.serving.host, port, metrics_port)
    return EmbedderServer(server, port, health, config.serving, metrics, metrics_port, pipeline.stop,
                          servicer=servicer)


def create_server(config: EmbedderConfig, model: EmbeddingModel | None = None) -> EmbedderServer:
    """An embedder on an event loop of its own, in a thread (tests and programs that embed the service)."""
    return run_in_background(lambda: start(config, model=model))
