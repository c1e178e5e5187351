"""The embedding pipeline: admission control, preprocessing in a worker pool, then the batcher."""

import asyncio
import threading
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Callable

import numpy as np

from embedder_service.batcher import Batcher
from embedder_service.errors import Overloaded


# Streams may fill at most this share of the queue: the rest stays for unary calls, which fail fast when
# there is no room, so a few busy streams cannot starve every unary caller.
STREAM_SHARE = 0.75


class Capacity:
    """Counts images admitted and not yet finished, and the encoded bytes they hold, so memory stays bounded
    whatever the load."""

    def __init__(self, limit: int, bytes_limit: int):
        self.limit, self.bytes_limit = limit, bytes_limit
        self.stream_limit = max(1, int(limit * STREAM_SHARE))
        self.in_use = self.streams_in_use = self.bytes_in_use = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def try_acquire(self, n: int, nbytes: int) -> bool:
        with self._lock:
            if self.in_use + n > self.limit or self.bytes_in_use + nbytes > self.bytes_limit:
                return False
            self.in_use += n
            self.bytes_in_use += nbytes
            return True

    def _try_acquire_for_stream(self, nbytes: int) -> bool:
        with self._lock:
            if (self.in_use >= self.limit or self.streams_in_use >= self.stream_limit
                    or self.bytes_in_use + nbytes > STREAM_SHARE * self.bytes_limit):
                return False
            self.in_use += 1
            self.streams_in_use += 1
            self.bytes_in_use += nbytes
            return True

    async def acquire_for_stream(self, nbytes: int) -> None:
        """Waits for room for one streamed image (flow control: a fast stream is slowed, not refused)."""
        loop = asyncio.get_running_loop()
        while not self._try_acquire_for_stream(nbytes):
            freed = asyncio.Event()
            with self._lock:
                self._waiters.append((loop, freed))
            try:
                if self._try_acquire_for_stream(nbytes):
                    return
                await asyncio.wait_for(freed.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            finally:
                with self._lock:
                    if (loop, freed) in self._waiters:
                        self._waiters.remove((loop, freed))

    def release(self, n: int, nbytes: int, streamed: int = 0) -> None:
        with self._lock:
            self.in_use -= n
            self.bytes_in_use -= nbytes
            self.streams_in_use -= streamed
            waiters, self._waiters = self._waiters, []
        for loop, freed in waiters:
            loop.call_soon_threadsafe(freed.set)


class Pipeline:
    """Decodes and preprocesses in `workers` threads, overlapping the forward passes of the batcher."""

    def __init__(self, preprocess: Callable[[bytes, str], np.ndarray], batcher: Batcher, workers: int,
                 max_queue: int, max_queue_bytes: int):
        self.preprocess = preprocess
        self.batcher = batcher
        self.capacity = Capacity(max_queue, max_queue_bytes)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    def admit_or_refuse(self, n: int, nbytes: int) -> None:
        """Reserves room for n images of nbytes in all now, or raises Overloaded (unary calls fail fast)."""
        if not self.capacity.try_acquire(n, nbytes):
            raise Overloaded(
                f"embedder overloaded: {self.capacity.in_use} images ({self.capacity.bytes_in_use} bytes) in "
                f"flight, limits {self.capacity.limit} and {self.capacity.bytes_limit} bytes; retry in about "
                f"{self.retry_hint_ms()} ms")

    async def admit_streamed(self, nbytes: int) -> None:
        """Reserves room for one streamed image, waiting as long as needed (streams slow down instead of
        failing), within the streams' share of the queue."""
        await self.capacity.acquire_for_stream(nbytes)

    def retry_hint_ms(self) -> int:
        return max(10, int(1000 * self.batcher.max_delay_s * 2))

    def submit(self, data: bytes, label: str, streamed: bool = False) -> Future:
        """Embeds one admitted image; the future gives its raw embedding or raises InvalidImage."""
        result: Future = Future()
        result.add_done_callback(lambda _: self.capacity.release(1, len(data), 1 if streamed else 0))
        preprocessed = self._pool.submit(self.preprocess, data, label)
        preprocessed.add_done_callback(lambda done: self._forward(done, result))
        return result

    def _forward(self, preprocessed: Future, result: Future) -> None:
        if result.cancelled():
            return
        try:
            pixels = preprocessed.result()
        except Exception as err:
            settle(result, error=err)
            return
        embedded = self.batcher.submit(pixels)
        # Cancelling the caller's future drops the image from the batch queue too.
        result.add_done_callback(lambda done: embedded.cancel() if done.cancelled() else None)
        embedded.add_done_callback(lambda done: settle(result, source=done))

    def stop(self) -> None:
        self._pool.shutdown(wait=True)
        self.batcher.stop()


def settle(result: Future, source: Future | None = None, error: BaseException | None = None) -> None:
    """Copies an outcome into `result`, unless the caller cancelled it meanwhile."""
    try:
        if source is not None and source.cancelled():
            result.cancel()
        elif source is not None and source.exception() is not None:
            result.set_exception(source.exception())
        elif source is not None:
            result.set_result(source.result())
        else:
            result.set_exception(error)
    except InvalidStateError:
        pass
