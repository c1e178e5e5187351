"""The catalogue of bad inputs (docs/errors.md), each sent to a real server, each with its documented answer."""

import io
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image

from conftest import SHIPPED_MODEL, jpeg_bytes, png_bytes, start_embedder, start_index
from imgsim import vectors
from imgsim.server.config import ServingConfig
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc, index_pb2, index_pb2_grpc

FP = "b" * 32


@pytest.fixture(scope="module")
def stub(embedder_channel):
    return embedder_pb2_grpc.EmbedderStub(embedder_channel)


def embed_one(stub, data: bytes, image_id: str = "x") -> embedder_pb2.EmbedResult:
    """The result of one image sent beside a good one, so a bad image shows as its own item error."""
    good = png_bytes(Image.new("RGB", (32, 32), "white"))
    response = stub.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(id="good", data=good),
                                                            embedder_pb2.Image(id=image_id, data=data)]))
    assert response.results[0].WhichOneof("outcome") == "vector"
    return response.results[1]


def vector_of(result) -> np.ndarray:
    assert result.WhichOneof("outcome") == "vector", result.error.message
    return vectors.from_proto(result.vector)


def png_declaring(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares width x height pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def digit(digits, row: int = 7) -> Image.Image:
    return digits["test"][row]["image"].convert("RGB")


@pytest.mark.parametrize("case, data, words", [
    ("zero bytes", b"", "no bytes"),
    ("random bytes", np.random.default_rng(0).bytes(3000), "not a recognised image format"),
    ("decompression bomb", png_declaring(50000, 50000), "size is over the limit of 40000000 pixels"),
    ("bomb under the library guard", png_declaring(9000, 9000), "its size 9000x9000 pixels is over the limit"),
])
def test_undecodable_images_are_refused_per_item_with_their_position_and_id(stub, case, data, words):
    result = embed_one(stub, data, image_id=case)
    assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert f"image 1 (id '{case}')" in result.error.message and words in result.error.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused_per_item(stub, digits, fmt):
    whole = (jpeg_bytes if fmt == "JPEG" else png_bytes)(digit(digits).resize((64, 64)))
    result = embed_one(stub, whole[: len(whole) // 2])
    assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "cannot decode image" in result.error.message or "truncated" in result.error.message


def test_an_image_over_the_size_limit_is_refused_per_item(digits):
    running = start_embedder(SHIPPED_MODEL, max_image_bytes=600)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            big = jpeg_bytes(Image.effect_noise((64, 64), 80).convert("RGB"))
            result = embed_one(embedder_pb2_grpc.EmbedderStub(channel), big, "big")
    finally:
        running.stop(0)
    assert f"{len(big)} bytes is over the limit of 600 bytes" in result.error.message


def test_an_image_over_the_decoded_bytes_limit_is_refused_before_decoding(digits):
    running = start_embedder(SHIPPED_MODEL, max_decoded_bytes=20_000)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            refused = embed_one(stub, png_bytes(Image.new("RGB", (100, 100), "gray")), "wide")
            accepted = embed_one(stub, png_bytes(Image.new("L", (100, 100), "gray")), "grey")
    finally:
        running.stop(0)
    assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "decodes to 30000 bytes (100x100 RGB), over the limit of 20000 (--max-decoded-bytes)" in \
        refused.error.message
    assert accepted.WhichOneof("outcome") == "vector"  # one byte a pixel: 10000 bytes, under the limit


def test_an_over_long_id_is_refused_per_item(stub, digits):
    result = embed_one(stub, png_bytes(digit(digits)), image_id="i" * 300)
    assert "id is 300 bytes, over the limit of 256" in result.error.message


@pytest.mark.parametrize("case, make", [
    ("1x1", lambda d: png_bytes(Image.new("RGB", (1, 1), "gray"))),
    ("1x10000", lambda d: png_bytes(Image.new("RGB", (1, 10000), "gray"))),
    ("CMYK JPEG", lambda d: cmyk_jpeg(digit(d))),
    ("grayscale", lambda d: png_bytes(digit(d).convert("L"))),
    ("palette with transparency", lambda d: palette_png(digit(d))),
])
def test_unusual_but_valid_images_are_embedded(stub, digits, case, make):
    vector = vector_of(embed_one(stub, make(digits), case))
    assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 1e-4


def cmyk_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("CMYK").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def palette_png(image: Image.Image) -> bytes:
    quantised = image.quantize(colors=16)
    buffer = io.BytesIO()
    quantised.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_16_bit_png_is_scaled_not_clipped(stub, digits):
    eight = np.asarray(digit(digits).convert("L"), dtype=np.uint16)
    sixteen = Image.fromarray(eight * 257)  # the same picture at 16 bits per pixel
    assert sixteen.mode in ("I;16", "I")
    as_16 = vector_of(embed_one(stub, png_bytes(sixteen)))
    as_8 = vector_of(embed_one(stub, png_bytes(digit(digits).convert("L"))))
    assert cosine(as_16, as_8) > 0.999


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_are_embedded_from_their_first_frame(stub, digits, fmt):
    frames = [digit(digits, row) for row in (3, 4, 5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **({"lossless": True} if fmt == "WEBP" else {}))
    with Image.open(io.BytesIO(buffer.getvalue())) as opened:
        assert getattr(opened, "n_frames", 1) == 3
        first = opened.convert("RGB")
    animated = vector_of(embed_one(stub, buffer.getvalue()))
    assert cosine(animated, vector_of(embed_one(stub, png_bytes(first)))) > 0.9999
    second = vector_of(embed_one(stub, png_bytes(frames[1])))
    assert cosine(animated, second) < cosine(animated, vector_of(embed_one(stub, png_bytes(first))))


def test_an_exif_rotated_jpeg_is_embedded_upright(stub, digits):
    upright = digit(digits, 11).resize((96, 96))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    from_exif = vector_of(embed_one(stub, buffer.getvalue()))
    assert cosine(from_exif, vector_of(embed_one(stub, jpeg_bytes(upright, 95)))) > 0.99
    assert cosine(from_exif, vector_of(embed_one(stub, jpeg_bytes(stored, 95)))) < 0.99


def index_stub(channel):
    return index_pb2_grpc.IndexStub(channel)


@pytest.mark.parametrize("service", ["embedder", "index"])
def test_a_stream_that_sends_nothing_is_closed_after_the_idle_limit(tmp_path, service):
    serving = ServingConfig(stream_idle_s=0.5)
    running = start_embedder(SHIPPED_MODEL, serving) if service == "embedder" else start_index(tmp_path, serving)
    never = threading.Event()

    def silent():
        never.wait(30)
        return
        yield

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                if service == "embedder":
                    list(embedder_pb2_grpc.EmbedderStub(channel).EmbedStream(silent()))
                else:
                    index_stub(channel).Upsert(silent())
            waited = time.monotonic() - started
    finally:
        never.set()
        running.stop(0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "sent nothing for 0.5 s" in caught.value.details()
    assert waited < 10
