"""Which rows of the vector file are free: reuse the lowest first, so live rows stay packed at the front and
compaction has little to move."""

import numpy as np

from index_service.arrays import union
from index_service.locks import ReadTickets


class RowAllocator:
    """Rows below `end` are live, free, or held by the search structure; rows from `end` on are unused.

    With `readers`, a row given back is reused only once every search that took its ticket before is done:
    such a search may still read the row from the vector file (it captured the row while it was live)."""

    def __init__(self, end: int = 0, free: np.ndarray | None = None, readers: ReadTickets | None = None):
        self.end = end
        self.free = np.sort(np.asarray(free if free is not None else [], dtype=np.int64))
        # Rows a structure let go of (compaction), reusable once a snapshot no longer refers to them.
        self.awaiting_snapshot = np.zeros(0, dtype=np.int64)
        self.readers = readers
        self.awaiting_readers: list[tuple[int, np.ndarray]] = []  # (the readers' mark when given back, rows)

    def take(self, n: int) -> np.ndarray:
        self.reuse_what_readers_left()
        reused = self.free[:n]
        self.free = self.free[n:]
        fresh = np.arange(self.end, self.end + n - len(reused), dtype=np.int64)
        self.end += len(fresh)
        return np.concatenate([reused, fresh])

    def give_back(self, rows: np.ndarray) -> None:
        """Rows no longer used by anything; undone allocations included."""
        if not len(rows):
            return
        if self.readers is None:
            self.free = union(self.free, rows)
        else:
            self.awaiting_readers.append((self.readers.mark(), np.asarray(rows, dtype=np.int64)))

    def reuse_what_readers_left(self) -> None:
        """Rows given back before every search still reading the file had begun become free."""
        while self.awaiting_readers and self.readers.all_back_before(self.awaiting_readers[0][0]):
            self.free = union(self.free, self.awaiting_readers.pop(0)[1])

    def release_after_snapshot(self, rows: np.ndarray) -> None:
        if len(rows):
            self.awaiting_snapshot = union(self.awaiting_snapshot, rows)

    def snapshot_taken(self) -> None:
        self.give_back(self.awaiting_snapshot)
        self.awaiting_snapshot = np.zeros(0, dtype=np.int64)

    def unused(self) -> int:
        return len(self.free) + len(self.awaiting_snapshot) + sum(len(rows) for _, rows in self.awaiting_readers)

    def shrink_to(self, end: int) -> None:
        """Under the exclusive lock, once no search reads rows at or past `end`."""
        self.end = end
        self.free = self.free[self.free < end]
        self.awaiting_snapshot = self.awaiting_snapshot[self.awaiting_snapshot < end]
        self.awaiting_readers = [(mark, rows[rows < end]) for mark, rows in self.awaiting_readers]
