"""Which rows of the vector file are free: reuse the lowest first, so live rows stay packed at the front and
compaction has little to move."""

import numpy as np

from index_service.arrays import union


class RowAllocator:
    """Rows below `end` are live, free, or held by the search structure; rows from `end` on are unused."""

    def __init__(self, end: int = 0, free: np.ndarray | None = None):
        self.end = end
        self.free = np.sort(np.asarray(free if free is not None else [], dtype=np.int64))
        # Rows a structure let go of (compaction), reusable once a snapshot no longer refers to them.
        self.awaiting_snapshot = np.zeros(0, dtype=np.int64)

    def take(self, n: int) -> np.ndarray:
        reused = self.free[:n]
        self.free = self.free[n:]
        fresh = np.arange(self.end, self.end + n - len(reused), dtype=np.int64)
        self.end += len(fresh)
        return np.concatenate([reused, fresh])

    def give_back(self, rows: np.ndarray) -> None:
        """Rows no longer used by anything; undone allocations included."""
        if len(rows):
            self.free = union(self.free, rows)

    def release_after_snapshot(self, rows: np.ndarray) -> None:
        if len(rows):
            self.awaiting_snapshot = union(self.awaiting_snapshot, rows)

    def snapshot_taken(self) -> None:
        self.give_back(self.awaiting_snapshot)
        self.awaiting_snapshot = np.zeros(0, dtype=np.int64)

    def unused(self) -> int:
        return len(self.free) + len(self.awaiting_snapshot)

    def shrink_to(self, end: int) -> None:
        self.end = end
        self.free = self.free[self.free < end]
        self.awaiting_snapshot = self.awaiting_snapshot[self.awaiting_snapshot < end]
