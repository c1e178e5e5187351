"""The embedder served over real gRPC: faithful embeddings, streaming, model info and refusals."""

import grpc
import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel

from conftest import SHIPPED_MODEL, jpeg_bytes, photo_like, png_bytes, served_info, start_embedder
from imgsim import vectors
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc


def reference_embeddings(model_path, images) -> np.ndarray:
    """The write-up's own computation: AutoModel(**processor(images)).last_hidden_state[:, 0]."""
    processor = AutoImageProcessor.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    with torch.inference_mode():
        return model(**processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
                     ).last_hidden_state[:, 0].numpy()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embed(stub, datas, raw=False, ids=None):
    ids = ids or [str(i) for i in range(len(datas))]
    return stub.Embed(embedder_pb2.EmbedRequest(
        images=[embedder_pb2.Image(id=i, data=d) for i, d in zip(ids, datas)], raw=raw))


def stream(stub, messages, raw=False):
    requests = (embedder_pb2.EmbedStreamRequest(
        images=[embedder_pb2.Image(id=i, data=d) for i, d in message], raw=raw) for message in messages)
    return [result for response in stub.EmbedStream(requests) for result in response.results]


@pytest.fixture(scope="module")
def stub(embedder_channel):
    return embedder_pb2_grpc.EmbedderStub(embedder_channel)


def test_served_embeddings_equal_in_process_automodel_for_shipped_model(stub, digits):
    images = [digits["test"][i]["image"] for i in range(24)]
    expected = reference_embeddings(SHIPPED_MODEL, images)
    response = embed(stub, [png_bytes(i) for i in images], raw=True)
    served = np.stack([vectors.from_proto(r.vector) for r in response.results])
    assert served.shape == expected.shape
    assert cosine_rows(served, expected).min() >= 0.9999
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)


def test_served_embeddings_equal_in_process_automodel_for_second_vit(second_vit):
    images = [photo_like(seed) for seed in range(10)]
    expected = reference_embeddings(second_vit, images)
    running = start_embedder(second_vit, max_batch_size=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            second = embedder_pb2_grpc.EmbedderStub(channel)
            info = second.GetModelInfo(embedder_pb2.GetModelInfoRequest())
            assert (info.dimension, info.image_height, info.image_width) == (48, 40, 40)
            unary = embed(second, [png_bytes(i) for i in images], raw=True)
            streamed = stream(second, [[(str(i), png_bytes(image))] for i, image in enumerate(images)], raw=True)
    finally:
        running.stop(0)
    for results in (unary.results, streamed):
        served = np.stack([vectors.from_proto(r.vector) for r in results])
        assert cosine_rows(served, expected).min() >= 0.9999


def test_embeddings_are_unit_length_unless_raw_is_asked(stub, digits):
    data = [png_bytes(digits["test"][i]["image"]) for i in range(3)]
    normal = np.stack([vectors.from_proto(r.vector) for r in embed(stub, data).results])
    raw = np.stack([vectors.from_proto(r.vector) for r in embed(stub, data, raw=True).results])
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(normal, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_stream_returns_every_result_in_order_with_its_id(stub, digits):
    images = [png_bytes(digits["train"][i]["image"]) for i in range(150)]
    messages = [[(f"img-{i}", images[i]) for i in range(start, min(start + 7, 150))] for start in range(0, 150, 7)]
    results = stream(stub, messages)
    assert [r.id for r in results] == [f"img-{i}" for i in range(150)]
    unary = np.stack([vectors.from_proto(r.vector) for r in embed(stub, images[:20]).results])
    streamed = np.stack([vectors.from_proto(r.vector) for r in results[:20]])
    np.testing.assert_allclose(streamed, unary, rtol=1e-5, atol=1e-6)


def test_jpeg_and_png_of_the_same_picture_embed_alike(stub):
    picture = photo_like(3)
    response = embed(stub, [png_bytes(picture), jpeg_bytes(picture, quality=95)])
    a, b = (vectors.from_proto(r.vector) for r in response.results)
    assert float(a @ b) > 0.99


def test_model_info_describes_the_model_and_fingerprint_is_stable(stub, embedder):
    info = stub.GetModelInfo(embedder_pb2.GetModelInfoRequest())
    assert info.model_id == str(SHIPPED_MODEL)
    assert (info.dimension, info.image_height, info.image_width) == (96, 32, 32)
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert len(info.model_fingerprint) == 32
    assert (info.pooling, info.preprocessing, info.draft_decode) == ("cls", "processor", True)
    assert served_info(SHIPPED_MODEL).fingerprint == info.model_fingerprint


def test_fingerprint_differs_between_models_and_settings_that_change_vectors(stub, second_vit):
    info = stub.GetModelInfo(embedder_pb2.GetModelInfoRequest())
    assert served_info(second_vit).fingerprint != info.model_fingerprint
    variants = [served_info(SHIPPED_MODEL, **settings).fingerprint for settings in (
        {"draft_decode": False}, {"pooling": "mean"}, {"preprocessing": "writeup"})]
    assert len(set(variants + [info.model_fingerprint])) == 4  # the dtype: test_checkpoints


def test_bytes_that_are_not_an_image_fail_with_invalid_argument_naming_it(stub):
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, [b"this is not an image at all"], ids=["doc-7"])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 0 (id 'doc-7')" in caught.value.details()
    assert "not a recognised image format" in caught.value.details()


def test_one_bad_image_in_a_batch_is_reported_per_item_and_the_others_succeed(stub, digits):
    good = png_bytes(digits["test"][0]["image"])
    response = embed(stub, [good, b"\x89PNG\r\n\x1a\n broken", good], ids=["a", "b", "c"])
    outcomes = [r.WhichOneof("outcome") for r in response.results]
    assert outcomes == ["vector", "error", "vector"]
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "image 1 (id 'b')" in response.results[1].error.message


def test_stream_reports_a_bad_image_per_item_and_goes_on(stub, digits):
    good = png_bytes(digits["test"][0]["image"])
    results = stream(stub, [[("a", good)], [("b", b"")], [("c", good)]])
    assert [r.WhichOneof("outcome") for r in results] == ["vector", "error", "vector"]
    assert "no bytes" in results[1].error.message


def test_empty_request_fails_with_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(embedder_pb2.EmbedRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no images" in caught.value.details()


def test_too_many_images_in_one_request_fail_with_invalid_argument(digits):
    running = start_embedder(SHIPPED_MODEL, max_request_images=4)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                embed(embedder_pb2_grpc.EmbedderStub(channel), [b"x"] * 5)
    finally:
        running.stop(0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 4" in caught.value.details()


def test_unary_calls_past_the_queue_limit_fail_fast_with_resource_exhausted(digits):
    running = start_embedder(SHIPPED_MODEL, max_queue=8)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            with pytest.raises(grpc.RpcError) as caught:
                embed(embedder_pb2_grpc.EmbedderStub(channel), [png_bytes(digits["test"][0]["image"])] * 9)
    finally:
        running.stop(0)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "overloaded" in caught.value.details() and "retry" in caught.value.details()
