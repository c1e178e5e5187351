"""Dynamic batching: single images from many calls coalesced into forward passes of bounded size."""

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class Batcher:
    """One thread that runs `embed_batch` on batches of at most `max_batch_size` queued images.

    A batch starts as soon as it is full, or when its oldest image has waited `max_delay_s`, whichever comes
    first. Images whose future was cancelled (caller gone, deadline passed) are dropped, not computed.
    """

    def __init__(self, embed_batch: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_delay_s: float,
                 on_batch: Callable[[int, list[float]], None] | None = None):
        self.embed_batch = embed_batch
        self.on_batch = on_batch  # told each batch's size and how long its images waited, for metrics
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._queue: deque[tuple[float, np.ndarray, Future]] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, pixels: np.ndarray) -> Future:
        future: Future = Future()
        with self._changed:
            if self._stopping:
                raise RuntimeError("batcher is stopped")
            self._queue.append((time.monotonic(), pixels, future))
            self._changed.notify()
        return future

    def stop(self) -> None:
        """Finishes what is queued, then ends the thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join()

    def _next_batch(self) -> list[tuple[float, np.ndarray, Future]] | None:
        with self._changed:
            while not self._queue and not self._stopping:
                self._changed.wait()
            if not self._queue:
                return None
            deadline = self._queue[0][0] + self.max_delay_s
            while len(self._queue) < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            # One forward pass takes one tensor shape: the oldest image's. Images of other shapes (a processor
            # keeping aspect ratios) wait for a batch of their own, so one odd image never fails another's.
            shape = self._queue[0][1].shape
            batch, others = [], deque()
            while self._queue and len(batch) < self.max_batch_size:
                item = self._queue.popleft()
                if item[1].shape != shape:
                    others.append(item)
                elif item[2].set_running_or_notify_cancel():
                    batch.append(item)
            self._queue.extendleft(reversed(others))
            return batch

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            started = time.monotonic()
            if self.on_batch:
                self.on_batch(len(batch), [started - queued_at for queued_at, _, _ in batch])
            try:
                vectors = self.embed_batch(np.stack([pixels for _, pixels, _ in batch]))
            except Exception as err:  # one failed pass must fail its callers, not the thread
                log.exception("forward pass of %d images failed", len(batch))
                for _, _, future in batch:
                    future.set_exception(err)
                continue
            for (_, _, future), vector in zip(batch, vectors):
                future.set_result(vector)
