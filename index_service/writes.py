"""Writes waiting for a collection's writer thread, and the thread itself: it takes whatever writes are
queued (as long as their ids are disjoint) and commits them together in one transaction, one fsync (group
commit), each still all-or-nothing and answered on its own."""

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
GROUP_ITEMS = 32768


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

    def hashes(self) -> set[tuple[int, int]]:
        if self.items is not None:
            return set(zip(self.items.high.tolist(), self.items.low.tolist()))
        from index_service.id_table import id_hashes
        high, low = id_hashes(self.delete_ids)
        return set(zip(high.tolist(), low.tolist()))

    def size(self) -> int:
        return len(self.items) if self.items is not None else len(self.delete_ids)

    def expired(self) -> bool:
        return self.abandoned.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)


class Writer:
    """The one thread that writes a collection; `apply(ops)` does the work (under the collection's write
    mutex) and settles every op's future."""

    def __init__(self, name: str, apply: Callable[[list[WriteOp]], None]):
        self._apply = apply
        self._queue: deque[WriteOp] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"writer-{name}", daemon=True)
        self._thread.start()

    def submit(self, op: WriteOp) -> Future:
        with self._changed:
            if self._closing:
                op.future.set_exception(Cancelled("the collection is closing; nothing of this write was kept"))
                return op.future
            self._queue.append(op)
            self._changed.notify()
        return op.future

    def _next_group(self) -> list[WriteOp] | None:
        with self._changed:
            while not self._queue and not self._closing:
                self._changed.wait()
            if not self._queue:
                return None
            group, seen, items = [], set(), 0
            while self._queue:
                op = self._queue[0]
                hashes = op.hashes()
                if group and (items + op.size() > GROUP_ITEMS or hashes & seen):
                    break
                self._queue.popleft()
                # A caller that left before now cancelled its future: nothing of it is kept. From here on the
                # future is running and only this thread settles it.
                if op.future.set_running_or_notify_cancel():
                    group.append(op)
                    seen |= hashes
                    items += op.size()
            return group

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            try:
                self._apply(group)
            except BaseException as err:  # apply settles futures itself; this is the last line of defence
                log.exception("write group failed")
                for op in group:
                    if not op.future.done():
                        op.future.set_exception(err)

    def close(self) -> None:
        """Finishes the write in progress; refuses what is still queued (nothing of it was kept)."""
        with self._changed:
            self._closing = True
            pending = list(self._queue)
            self._queue.clear()
            self._changed.notify_all()
        for op in pending:
            if op.future.set_running_or_notify_cancel():
                op.future.set_exception(Cancelled("the server is stopping; nothing of this write was kept"))
        self._thread.join()
