"""Writes waiting for a collection's writer thread, and the thread itself: it takes whatever writes are
queued (as long as their ids are disjoint) and commits them together in one transaction, one fsync (group
commit), each still all-or-nothing and answered on its own.

Small writes go first: a write of at most SMALL_WRITE items passes queued large ones (unless it shares an id
with one of them, or with a write queued behind them), in groups of small writes only. Behind a bulk load's
queue of 16k-item calls, each taking about a second of the writer on two busy cores, a one-item write
waited for several of them; now it waits for the group in progress. Calls in flight together have no order
of their own, and writes that share an id keep theirs.

Groups are at most GROUP_ITEMS items (a larger call is one group of its own): at 1M x 768 ivfpq under a bulk
load, a 16,384-item group held the writer 0.3-0.74 s (its vectors' write into the page cache and the catalog
commit), and a one-item write arriving meanwhile waited that long; with 4,096-item groups and calls the
longest one-item write fell from 0.59-0.71 s to 0.42 s at the same ingest rate, and with 2,048 the longest
that met a snapshot from 0.52-0.67 s to 0.23-0.47 s, ingest unchanged (bench/index.py, alternated)."""

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from index_service.errors import Cancelled

log = logging.getLogger(__name__)
GROUP_ITEMS = 2048  # items per group commit: a small write waits for at most one group (see above)
SMALL_WRITE = 1024  # items


@dataclass
class Items:
    """Validated items of one Upsert call: distinct ids (the last of an id won), vectors and checksums."""
    ids: list[str]
    raw: np.ndarray  # (n, dimension) float32, exactly as sent
    unit: np.ndarray  # the same rows scaled to length 1
    high: np.ndarray  # id hashes
    low: np.ndarray
    metadata: list[dict]
    crcs: np.ndarray
    record_bases: list[int] = field(default_factory=list)  # catalog.record_base of each item
    metadata_json: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> "Items":
        """The items where `keep` is true, in order."""
        positions = np.flatnonzero(keep).tolist()

        def pick(values: list) -> list:
            return [values[p] for p in positions] if values else values
        return Items(pick(self.ids), self.raw[keep], self.unit[keep], self.high[keep], self.low[keep],
                     pick(self.metadata), self.crcs[keep], pick(self.record_bases), pick(self.metadata_json))


@dataclass
class WriteOp:
    """One call's write. `abandoned` is set when its caller is gone; with `deadline` passed or abandoned, it
    is dropped before the commit point, so nothing of it is kept."""
    fingerprint: str = ""
    items: Items | None = None
    only_absent: bool = False  # upsert: leave held ids as they are
    skipped_ids: list[str] = field(default_factory=list)  # ... and these were held
    delete_ids: list[str] = field(default_factory=list)
    versions: list[int] | None = None  # delete: remove an id only while held at this version
    deadline: float | None = None  # time.monotonic()
    abandoned: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    _hashes: set | None = field(default=None, repr=False)

    def hashes(self) -> set[tuple[int, int]]:
        """The hashes of the ids it writes (taken once: ops are compared while they wait)."""
        if self._hashes is None:
            if self.items is not None:
                self._hashes = set(zip(self.items.high.tolist(), self.items.low.tolist()))
            else:
                from index_service.id_table import id_hashes
                high, low = id_hashes(self.delete_ids)
                self._hashes = set(zip(high.tolist(), low.tolist()))
        return self._hashes

    def size(self) -> int:
        return len(self.items) if self.items is not None else len(self.delete_ids)

    def expired(self) -> bool:
        return self.abandoned.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)


class Writer:
    """The one thread that writes a collection; `apply(ops)` does the work (under the collection's write
    mutex) and settles every op's future."""

    def __init__(self, name: str, apply: Callable[[list[WriteOp]], None]):
        self._apply = apply
        self._small: deque[WriteOp] = deque()  # taken first
        self._queue: deque[WriteOp] = deque()  # the others, in order
        self._backlog = 0  # items submitted and not applied yet
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp) -> Future:
        op.hashes()  # taken here, not under the queue's lock
        with self._changed:
            if self._closing:
                op.future.set_exception(Cancelled("the collection is closing; nothing of this write was kept"))
                return op.future
            small = op.size() <= SMALL_WRITE and not any(op.hashes() & other.hashes() for other in self._queue)
            (self._small if small else self._queue).append(op)
            self._backlog += op.size()
            self._changed.notify()
        return op.future

    def _next_group(self) -> list[WriteOp] | None:
        with self._changed:
            while not self._small and not self._queue and not self._closing:
                self._changed.wait()
            queue = self._small or self._queue
            if not queue:
                return None
            group, seen, items = [], set(), 0
            while queue:
                op = queue[0]
                hashes = op.hashes()
                if group and (items + op.size() > GROUP_ITEMS or hashes & seen):
                    break
                queue.popleft()
                # A caller that left before now cancelled its future: nothing of it is kept. From here on the
                # future is running and only this thread settles it.
                if op.future.set_running_or_notify_cancel():
                    group.append(op)
                    seen |= hashes
                    items += op.size()
                else:
                    self._backlog -= op.size()
            return group

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            items = sum(op.size() for op in group)  # before apply: only_absent writes shrink
            try:
                self._apply(group)
            except BaseException as err:  # apply settles futures itself; this is the last line of defence
                log.exception("write group failed")
                for op in group:
                    if not op.future.done():
                        op.future.set_exception(err)
            finally:
                with self._changed:
                    self._backlog -= items

    def backlog(self) -> int:
        """Items submitted and not applied yet (queued or in the group in progress)."""
        return self._backlog

    def close(self) -> None:
        """Finishes the write in progress; refuses what is still queued (nothing of it was kept)."""
        with self._changed:
            self._closing = True
            pending = [*self._small, *self._queue]
            self._small.clear()
            self._queue.clear()
            self._backlog -= sum(op.size() for op in pending)
            self._changed.notify_all()
        for op in pending:
            if op.future.set_running_or_notify_cancel():
                op.future.set_exception(Cancelled("the server is stopping; nothing of this write was kept"))
        self._thread.join()
