"""Translates between imgsim.v1.Embedder messages and the embedding pipeline."""

import queue
import threading
from concurrent.futures import Future, wait

import grpc
import numpy as np

from embedder_service.errors import (DeadlineExceeded, EmbedderError, InvalidImage, InvalidRequest, NotReady, abort_for,
                                     status_code_for)
from embedder_service.model import ModelInfo
from embedder_service.pipeline import Pipeline
from embedder_service.preprocess import describe
from imgsim import vectors
from imgsim.streams import with_idle_limit
from imgsim.v1 import common_pb2, embedder_pb2, embedder_pb2_grpc

MAX_ID_BYTES = 256
_END_OF_STREAM = object()


def normalised(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def image_problem(image: embedder_pb2.Image, label: str, max_image_bytes: int) -> InvalidImage | None:
    """What is wrong with an image before decoding it, if anything."""
    if len(image.id.encode()) > MAX_ID_BYTES:
        return InvalidImage(f"{label}: id is {len(image.id.encode())} bytes, over the limit of {MAX_ID_BYTES}")
    if len(image.data) > max_image_bytes:
        return InvalidImage(f"{label}: {len(image.data)} bytes is over the limit of {max_image_bytes} bytes")
    return None


def failed(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def to_result(image_id: str, future: Future, raw: bool) -> embedder_pb2.EmbedResult:
    error = future.exception()
    if error is None:
        vector = future.result()
        return embedder_pb2.EmbedResult(id=image_id, vector=vectors.to_proto(vector if raw else normalised(vector)))
    if not isinstance(error, EmbedderError):
        raise error
    return embedder_pb2.EmbedResult(
        id=image_id, error=common_pb2.ItemError(code=status_code_for(error).value[0], message=str(error)))


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, pipeline: Pipeline, info: ModelInfo, max_request_images: int, max_image_bytes: int,
                 max_batch_size: int, stream_idle_s: float = 60.0):
        self.pipeline = pipeline
        self.info = info
        self.max_request_images = max_request_images
        self.max_image_bytes = max_image_bytes
        self.max_batch_size = max_batch_size
        self.stream_idle_s = stream_idle_s
        self.ready = threading.Event()

    def _check_request(self, images) -> None:
        if not self.ready.is_set():
            raise NotReady("the embedder is not ready: the model is loading or the server is stopping")
        if len(images) > self.max_request_images:
            raise InvalidRequest(f"{len(images)} images in one message, over the limit of {self.max_request_images}")

    def _submit(self, image: embedder_pb2.Image, position: int) -> Future:
        """The image's embedding to come, or its error now (admission is the caller's)."""
        label = describe(position, image.id)
        problem = image_problem(image, label, self.max_image_bytes)
        if problem is not None:
            self.pipeline.capacity.release(1)  # admitted, but it will never reach the pipeline
            return failed(problem)
        return self.pipeline.submit(image.data, label)

    def Embed(self, request, context):
        try:
            if not request.images:
                raise InvalidRequest("no images in the request")
            self._check_request(request.images)
            self.pipeline.admit_or_refuse(len(request.images))
            futures = [self._submit(image, i) for i, image in enumerate(request.images)]
            context.add_callback(lambda: [f.cancel() for f in futures])
            _, not_done = wait(futures, timeout=seconds_left(context))
            if not_done:
                for future in not_done:
                    future.cancel()
                raise DeadlineExceeded(f"deadline passed with {len(not_done)} of {len(futures)} images not embedded")
            results = [to_result(image.id, f, request.raw) for image, f in zip(request.images, futures)]
            if all(r.HasField("error") for r in results):
                raise InvalidRequest("no image could be embedded: " + "; ".join(r.error.message for r in results))
            return embedder_pb2.EmbedResponse(results=results, model_fingerprint=self.info.fingerprint)
        except Exception as err:
            abort_for(context, err)

    def EmbedStream(self, request_iterator, context):
        stop = threading.Event()
        context.add_callback(stop.set)
        # The per-stream window: how many images may be read ahead of the results sent back.
        pending: queue.Queue = queue.Queue(maxsize=4 * self.max_batch_size)
        reader = threading.Thread(target=self._read_stream, args=(request_iterator, pending, stop), daemon=True,
                                  name="embed-stream-reader")
        reader.start()
        try:
            yield from self._stream_results(pending, stop)
        except Exception as err:
            stop.set()
            abort_for(context, err)
        finally:
            stop.set()
            drain_and_cancel(pending)

    def _read_stream(self, request_iterator, pending: queue.Queue, stop: threading.Event) -> None:
        position = 0
        raw = None
        try:
            for request in with_idle_limit(request_iterator, self.stream_idle_s):
                if raw is None:
                    raw = request.raw
                self._check_request(request.images)
                for image in request.images:
                    if not self.pipeline.admit_waiting(stop):
                        return
                    future = self._submit(image, position)
                    if not put_unless_stopped(pending, (image.id, future, raw), stop):
                        future.cancel()
                        return
                    position += 1
            put_unless_stopped(pending, _END_OF_STREAM, stop)
        except Exception as err:
            if stop.is_set():
                return  # the client went away or the call ended; nothing is left to tell
            put_unless_stopped(pending, err, stop)

    def _stream_results(self, pending: queue.Queue, stop: threading.Event):
        """Yields results in order: waits for the oldest image, then sends it with those already done after it."""
        carried = None
        while True:
            item = carried if carried is not None else next_item(pending, stop)
            carried = None
            if item is None or item is _END_OF_STREAM:
                return
            if isinstance(item, Exception):
                raise item
            item[1].exception()  # waits for the oldest image in flight
            batch = [item]
            while len(batch) < self.max_batch_size:
                try:
                    following = pending.get_nowait()
                except queue.Empty:
                    break
                if not (isinstance(following, tuple) and following[1].done()):
                    carried = following
                    break
                batch.append(following)
            yield self._stream_response(batch)

    def _stream_response(self, batch) -> embedder_pb2.EmbedStreamResponse:
        return embedder_pb2.EmbedStreamResponse(
            results=[to_result(image_id, future, raw) for image_id, future, raw in batch],
            model_fingerprint=self.info.fingerprint,
        )

    def GetModelInfo(self, request, context):
        info = self.info
        return embedder_pb2.GetModelInfoResponse(
            model_id=info.model_id, revision=info.revision, dimension=info.dimension, image_height=info.image_height,
            image_width=info.image_width, device=info.device, dtype=info.dtype, model_fingerprint=info.fingerprint,
            max_batch_size=self.max_batch_size)


def seconds_left(context: grpc.ServicerContext) -> float | None:
    """Time to the call's deadline; None when it has none (grpc then reports a huge number)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e6 else max(remaining, 0.0)


def put_unless_stopped(pending: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            pending.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def next_item(pending: queue.Queue, stop: threading.Event):
    """The next queued item, or None once the stream is stopped."""
    while not stop.is_set():
        try:
            return pending.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


def drain_and_cancel(pending: queue.Queue) -> None:
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, tuple):
            item[1].cancel()
