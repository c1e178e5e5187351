"""The embedder's fast paths stay faithful: preprocessing, draft decoding, batching, streaming, dtypes."""

import threading
import time

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTConfig, ViTImageProcessorPil, ViTModel

from conftest import SHIPPED_MODEL, jpeg_bytes, photo_like, png_bytes, start_embedder
from embedder_service.batcher import Batcher
from embedder_service.model import EmbeddingModel
from embedder_service.preprocess import (DRAFT_MIN_SIDE, FastPreprocessor, Limits, ReferencePreprocessor,
                                         make_preprocessor)

LIMITS = Limits(10**9, 1 << 34)
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc

PROCESSORS = {
    "shipped 32x32": lambda: AutoImageProcessor.from_pretrained(SHIPPED_MODEL),
    "224 bilinear": lambda: ViTImageProcessorPil(size={"height": 224, "width": 224}),
    "shortest edge + crop, bicubic": lambda: ViTImageProcessorPil(
        size={"shortest_edge": 256}, do_center_crop=True, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.48, 0.45, 0.40], image_std=[0.26, 0.26, 0.27]),
}


def textured_photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shapes plus fine grain: closer to a camera photo than flat colour fields."""
    rng = np.random.default_rng(seed)
    base = np.asarray(photo_like(seed, (width, height)), dtype=np.float32)
    grain = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def encodings(image: Image.Image) -> dict[str, bytes]:
    grey, rgba = image.convert("L"), image.convert("RGBA")
    return {"jpeg": jpeg_bytes(image), "png": png_bytes(image), "grey png": png_bytes(grey),
            "rgba png": png_bytes(rgba)}


@pytest.mark.parametrize("name", PROCESSORS)
def test_fast_preprocessing_without_draft_equals_the_checkpoints_processor(name):
    processor = PROCESSORS[name]()
    fast = make_preprocessor(processor, LIMITS, fast=True, draft=False)
    reference = ReferencePreprocessor(processor, LIMITS)
    assert isinstance(fast, FastPreprocessor)
    for size in [(500, 500), (640, 427), (31, 300)]:
        for kind, data in encodings(textured_photo(*size, seed=size[0])).items():
            got, expected = fast(data, "x"), reference(data, "x")
            assert got.shape == expected.shape, (kind, size)
            assert float(np.abs(got - expected).max()) <= 1e-6, (kind, size)


def test_a_processor_with_its_own_steps_falls_back_to_the_processor_itself():
    class Custom(ViTImageProcessorPil):
        def _preprocess(self, images, **kwargs):
            return super()._preprocess(images, **kwargs)

    assert isinstance(make_preprocessor(Custom(), LIMITS, fast=True, draft=True), ReferencePreprocessor)


@pytest.fixture(scope="module")
def vit_224(tmp_path_factory):
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("vit-224")
    ViTModel(ViTConfig(image_size=224, patch_size=16, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=192), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("size", [(500, 500), (3000, 2000)])
@pytest.mark.parametrize("which", ["vit-224", "shipped-32"])
def test_draft_decoding_keeps_embeddings_within_cosine_0_9999(vit_224, which, size):
    model = EmbeddingModel(str(vit_224 if which == "vit-224" else SHIPPED_MODEL), dtype="float32")
    draft = make_preprocessor(model.processor, LIMITS, fast=True, draft=True)
    reference = ReferencePreprocessor(model.processor, LIMITS)
    photos = [jpeg_bytes(textured_photo(*size, seed=s), quality=92) for s in range(4)]
    drafted = model.embed(np.stack([draft(p, "x") for p in photos]))
    exact = model.embed(np.stack([reference(p, "x") for p in photos]))
    cosines = np.sum(drafted * exact, axis=1) / (np.linalg.norm(drafted, axis=1) * np.linalg.norm(exact, axis=1))
    assert cosines.min() >= 0.9999
    # Drafting stops at twice the model's side and never goes below 224 pixels: a 500x500 photo for a 224 model
    # is decoded whole, for the 32x32 model it is reduced once (to 250x250).
    reduced = min(size) >= 2 * max(2 * model.height, DRAFT_MIN_SIDE)
    assert np.array_equal(draft(photos[0], "x"), reference(photos[0], "x")) != reduced


def test_bfloat16_autocast_stays_within_cosine_0_9999_of_float32(digits):
    images = [png_bytes(digits["test"][i]["image"]) for i in range(16)]
    full = EmbeddingModel(str(SHIPPED_MODEL), dtype="float32")
    low = EmbeddingModel(str(SHIPPED_MODEL), dtype="bfloat16")
    pixels = np.stack([ReferencePreprocessor(full.processor, LIMITS)(data, "x") for data in images])
    a, b = full.embed(pixels), low.embed(pixels)
    assert b.dtype == np.float32
    cosines = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosines.min() >= 0.9999


def test_batcher_coalesces_concurrent_single_images_into_bounded_batches():
    model = EmbeddingModel(str(SHIPPED_MODEL), dtype="float32")
    sizes = []

    def embed_batch(pixels):
        sizes.append(len(pixels))
        time.sleep(0.02)  # a forward pass that takes a while, as a large model's does
        return model.embed(pixels)

    batcher = Batcher(embed_batch, max_batch_size=8, max_delay_s=0.05)
    pixels = np.zeros((3, 32, 32), dtype=np.float32)
    futures = []
    threads = [threading.Thread(target=lambda: futures.append(batcher.submit(pixels))) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results = [f.result(timeout=10) for f in futures]
    batcher.stop()
    assert len(results) == 40 and sum(sizes) == 40
    assert max(sizes) <= 8
    assert len(sizes) <= 10  # 40 images in far fewer passes than 40


def test_batcher_drops_images_whose_caller_gave_up():
    calls = []
    release = threading.Event()

    def embed_batch(pixels):
        calls.append(len(pixels))
        release.wait(5)
        return np.zeros((len(pixels), 4), dtype=np.float32)

    batcher = Batcher(embed_batch, max_batch_size=4, max_delay_s=0.0)
    first = batcher.submit(np.zeros(1, dtype=np.float32))
    time.sleep(0.1)  # the first pass is running and holds the batcher
    queued = [batcher.submit(np.zeros(1, dtype=np.float32)) for _ in range(3)]
    for future in queued:
        future.cancel()
    release.set()
    first.result(timeout=5)
    batcher.stop()
    assert calls == [1]  # the cancelled three never reached the model


def test_streams_wait_for_room_instead_of_failing_when_the_queue_is_full(digits):
    running = start_embedder(SHIPPED_MODEL, max_queue=4, max_batch_size=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            data = [png_bytes(digits["test"][i]["image"]) for i in range(60)]
            requests = (embedder_pb2.EmbedStreamRequest(images=[embedder_pb2.Image(id=str(i), data=d)])
                        for i, d in enumerate(data))
            ids = [r.id for response in stub.EmbedStream(requests) for r in response.results]
    finally:
        running.stop(0)
    assert ids == [str(i) for i in range(60)]


def test_a_client_that_cancels_a_stream_frees_its_resources_at_once(digits):
    running = start_embedder(SHIPPED_MODEL, max_batch_size=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            data = png_bytes(digits["test"][0]["image"])

            def endless():
                i = 0
                while True:
                    yield embedder_pb2.EmbedStreamRequest(images=[embedder_pb2.Image(id=str(i), data=data)])
                    i += 1

            call = stub.EmbedStream(endless())
            next(call)
            call.cancel()
            deadline = time.monotonic() + 3
            while running.pipeline.capacity.in_use and time.monotonic() < deadline:
                time.sleep(0.02)
            assert running.pipeline.capacity.in_use == 0
            # and the server still serves
            response = stub.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=data)]))
            assert response.results[0].WhichOneof("outcome") == "vector"
    finally:
        running.stop(0)


def test_work_for_a_call_whose_deadline_passed_is_dropped(digits):
    running = start_embedder(SHIPPED_MODEL, max_batch_delay_ms=300.0, max_batch_size=64)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            data = png_bytes(digits["test"][0]["image"])
            with pytest.raises(grpc.RpcError) as caught:
                stub.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=data)]), timeout=0.1)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.5)
            assert running.pipeline.capacity.in_use == 0
    finally:
        running.stop(0)
