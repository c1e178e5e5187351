"""Translates between imgsim.v1.Embedder messages and the embedding pipeline (grpc.aio: a stream waiting for
its client costs a coroutine, not a thread)."""

import asyncio
from collections import deque
from concurrent.futures import Future

import grpc
import numpy as np

from embedder_service.errors import (DeadlineExceeded, EmbedderError, InvalidImage, InvalidRequest, NotReady,
                                     status_code_for, status_for)
from embedder_service.model import ModelInfo
from embedder_service.pipeline import Pipeline
from embedder_service.decoding import describe
from imgsim import vectors
from imgsim.streams import idle_limited
from imgsim.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

MAX_ID_BYTES = 256
_END = object()


def normalised(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    return (vector / norm).astype(np.float32) if norm > 0 else vector


def image_problem(image: embedder_pb2.Image, label: str, max_image_bytes: int) -> InvalidImage | None:
    """What is wrong with an image before decoding it, if anything."""
    if len(image.id.encode()) > MAX_ID_BYTES:
        return InvalidImage(f"{label}: id is {len(image.id.encode())} bytes, over the limit of {MAX_ID_BYTES}",
                            "bad_id")
    if len(image.data) > max_image_bytes:
        return InvalidImage(f"{label}: {len(image.data)} bytes is over the limit of {max_image_bytes} bytes",
                            "too_large")
    return None


def failed(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def to_result(image_id: str, future: Future, raw: bool, on_failed=None) -> embedder_pb2.EmbedResult:
    error = future.exception()
    if error is None:
        vector = future.result()
        return embedder_pb2.EmbedResult(id=image_id, vector=vectors.to_proto(vector if raw else normalised(vector)))
    if not isinstance(error, EmbedderError):
        raise error
    if on_failed is not None:
        on_failed(getattr(error, "reason", "invalid"))
    return embedder_pb2.EmbedResult(
        id=image_id, error=common_pb2.ItemError(code=status_code_for(error).value[0], message=str(error)))


def seconds_left(context) -> float | None:
    """Time to the call's deadline; None when it has none."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e6 else max(remaining, 0.0)



async def wait_for_all(futures: list[Future], timeout: float | None) -> set:
    """Waits for the futures (their outcomes are read later, from them); returns those not done in time."""
    waiting = [asyncio.wrap_future(future) for future in futures]
    _, not_done = await asyncio.wait(waiting, timeout=timeout)
    for future in waiting:  # marks a failure as seen, or asyncio logs "exception was never retrieved"
        if future.done() and not future.cancelled():
            future.exception()
    return not_done

class Window:
    """The images a stream has read ahead of the results it sent back, in order, at most `size` of them."""

    def __init__(self, size: int):
        self._items: deque = deque()
        self._space = asyncio.Semaphore(size)
        self._arrived = asyncio.Event()

    async def put(self, item) -> None:
        await self._space.acquire()
        self._items.append(item)
        self._arrived.set()

    async def get(self):
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        self._space.release()
        return self._items.popleft()

    def peek(self):
        return self._items[0] if self._items else None

    def drain(self) -> list:
        items, self._items = list(self._items), deque()
        return items


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, max_request_images: int, max_image_bytes: int, max_batch_size: int,
                 stream_idle_s: float = 60.0):
        self.pipeline: Pipeline | None = None  # set once the model is loaded and warm
        self.info: ModelInfo | None = None
        self.max_request_images = max_request_images
        self.max_image_bytes = max_image_bytes
        self.max_batch_size = max_batch_size
        self.stream_idle_s = stream_idle_s
        self.on_failed = None  # told each failed image's reason, for metrics
        self.draft_decode = False

    def _check_ready(self) -> None:
        if self.pipeline is None:
            raise NotReady("the embedder is not ready: the model is loading")

    def _check_count(self, images) -> None:
        if len(images) > self.max_request_images:
            raise InvalidRequest(f"{len(images)} images in one message, over the limit of {self.max_request_images}")

    def _submit(self, image: embedder_pb2.Image, position: int, streamed: bool = False) -> Future:
        """The image's embedding to come, or its error now (admission is the caller's)."""
        label = describe(position, image.id)
        problem = image_problem(image, label, self.max_image_bytes)
        if problem is not None:  # admitted, but it never reaches the pipeline
            self.pipeline.capacity.release(1, len(image.data), 1 if streamed else 0)
            return failed(problem)
        return self.pipeline.submit(image.data, label, streamed)

    async def Embed(self, request, context):
        try:
            self._check_ready()
            if not request.images:
                raise InvalidRequest("no images in the request")
            self._check_count(request.images)
            self.pipeline.admit_or_refuse(len(request.images), sum(len(image.data) for image in request.images))
            futures = [self._submit(image, i) for i, image in enumerate(request.images)]
            try:
                not_done = await wait_for_all(futures, seconds_left(context))
            except asyncio.CancelledError:
                for future in futures:
                    future.cancel()
                raise
            if not_done:
                for future in futures:
                    future.cancel()
                raise DeadlineExceeded(f"deadline passed with {len(not_done)} of {len(futures)} images not embedded")
            results = [to_result(image.id, f, request.raw, self.on_failed) for image, f in zip(request.images, futures)]
            if all(r.HasField("error") for r in results):
                raise InvalidRequest("no image could be embedded: " + "; ".join(r.error.message for r in results))
            return embedder_pb2.EmbedResponse(results=results, model_fingerprint=self.info.fingerprint)
        except Exception as err:
            if isinstance(err, grpc.aio.AbortError):
                raise
            code, message = status_for(err)
            await context.abort(code, message)

    async def EmbedStream(self, request_iterator, context):
        try:
            self._check_ready()
        except EmbedderError as err:
            code, message = status_for(err)
            await context.abort(code, message)
        pending = Window(4 * self.max_batch_size)
        reader = asyncio.create_task(self._read(request_iterator, pending))
        try:
            while True:
                batch = await self._next_batch(pending)
                if batch is None:
                    break
                yield embedder_pb2.EmbedStreamResponse(
                    results=[to_result(image_id, future, raw, self.on_failed) for image_id, future, raw in batch],
                    model_fingerprint=self.info.fingerprint)
        except Exception as err:
            if isinstance(err, grpc.aio.AbortError):
                raise
            code, message = status_for(err)
            await context.abort(code, message)
        finally:
            reader.cancel()
            for item in pending.drain():
                if isinstance(item, tuple):
                    item[1].cancel()
            try:  # let the reader finish cancelling, so no task outlives its call
                await asyncio.wait([reader], timeout=1.0)
            except (asyncio.CancelledError, RuntimeError):
                pass

    async def _read(self, request_iterator, pending: "Window") -> None:
        position, raw = 0, None
        try:
            async for request in idle_limited(request_iterator, self.stream_idle_s):
                if raw is None:
                    raw = request.raw
                self._check_count(request.images)
                for image in request.images:
                    await self.pipeline.admit_streamed(len(image.data))
                    future = self._submit(image, position, streamed=True)
                    try:
                        await pending.put((image.id, future, raw))
                    except asyncio.CancelledError:
                        future.cancel()
                        raise
                    position += 1
            await pending.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # handed to the writer, which ends the call with it
            await pending.put(err)

    async def _next_batch(self, pending: "Window"):
        """The oldest image's result once it is done, with those already done after it (in order)."""
        item = await pending.get()
        if item is _END:
            return None
        if isinstance(item, Exception):
            raise item
        await wait_for_all([item[1]], None)
        batch = [item]
        while len(batch) < self.max_batch_size:
            following = pending.peek()
            if not (isinstance(following, tuple) and following[1].done()):
                break
            batch.append(await pending.get())
        return batch

    async def GetModelInfo(self, request, context):
        try:
            self._check_ready()
        except EmbedderError as err:
            code, message = status_for(err)
            await context.abort(code, message)
        info = self.info
        return embedder_pb2.GetModelInfoResponse(
            model_id=info.model_id, revision=info.revision, dimension=info.dimension, image_height=info.image_height,
            image_width=info.image_width, device=info.device, dtype=info.dtype, model_fingerprint=info.fingerprint,
            max_batch_size=self.max_batch_size, pooling=info.pooling, preprocessing=info.preprocessing,
            dtype_reason=info.dtype_reason, draft_decode=self.draft_decode)
