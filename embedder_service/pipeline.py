"""The embedding pipeline: admission control, preprocessing in a worker pool, then the batcher."""

import threading
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Callable

import numpy as np

from embedder_service.batcher import Batcher
from embedder_service.errors import Overloaded


class Capacity:
    """Counts images admitted and not yet finished, so memory stays bounded whatever the load."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._freed = threading.Condition()

    def try_acquire(self, n: int) -> bool:
        with self._freed:
            if self.in_use + n > self.limit:
                return False
            self.in_use += n
            return True

    def acquire(self, n: int, give_up: threading.Event) -> bool:
        """Waits for room (flow control for streams); False if `give_up` is set first."""
        with self._freed:
            while self.in_use + n > self.limit:
                if give_up.is_set():
                    return False
                self._freed.wait(0.05)
            self.in_use += n
            return True

    def release(self, n: int) -> None:
        with self._freed:
            self.in_use -= n
            self._freed.notify_all()


class Pipeline:
    """Decodes and preprocesses in `workers` threads, overlapping the forward passes of the batcher."""

    def __init__(self, preprocess: Callable[[bytes, str], np.ndarray], batcher: Batcher, workers: int,
                 max_queue: int):
        self.preprocess = preprocess
        self.batcher = batcher
        self.capacity = Capacity(max_queue)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    def admit_or_refuse(self, n: int) -> None:
        """Reserves room for n images now, or raises Overloaded (unary calls fail fast)."""
        if n > self.capacity.limit or not self.capacity.try_acquire(n):
            raise Overloaded(
                f"embedder overloaded: {self.capacity.in_use} images in flight, limit {self.capacity.limit}; "
                f"retry in about {self.retry_hint_ms()} ms"
            )

    def admit_waiting(self, give_up: threading.Event) -> bool:
        """Reserves room for one image, waiting as long as needed (streams slow down instead of failing)."""
        return self.capacity.acquire(1, give_up)

    def retry_hint_ms(self) -> int:
        return max(10, int(1000 * self.batcher.max_delay_s * 2))

    def submit(self, data: bytes, label: str) -> Future:
        """Embeds one admitted image; the future gives its raw embedding or raises InvalidImage."""
        result: Future = Future()
        result.add_done_callback(lambda _: self.capacity.release(1))
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
