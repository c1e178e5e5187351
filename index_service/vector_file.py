"""The exact unit vectors by row number, memory-mapped from disk, for re-ranking and exact search."""

import os
from pathlib import Path

import numpy as np

GROWTH = 2


class VectorFile:
    """A (capacity, dimension) float32 file; row r holds the vector FAISS knows by id r (zeros if none).

    It is derived data: after a crash, rows written since the last snapshot are rewritten from the store,
    and rows are never reused, so a torn write here is always repaired before it is read.
    """

    def __init__(self, path: Path, dimension: int):
        self.path = path
        self.dimension = dimension
        self.path.touch(exist_ok=True)
        self._map = None
        self._capacity = 0
        self._open(max(self.path.stat().st_size // (4 * dimension), 0))

    def _open(self, capacity: int) -> None:
        if self._map is not None:
            self._map.flush()
        if capacity == 0:
            self._map, self._capacity = None, 0
            return
        if self.path.stat().st_size < capacity * 4 * self.dimension:
            with self.path.open("r+b") as file:
                file.truncate(capacity * 4 * self.dimension)
        self._map = np.memmap(self.path, dtype=np.float32, mode="r+", shape=(capacity, self.dimension))
        self._capacity = capacity

    def reserve(self, rows: int) -> None:
        """Makes room for `rows` rows on disk now. The space is allocated, not just promised: writing through
        the memory map to a full disk would kill the process (SIGBUS) instead of raising."""
        if rows <= self._capacity:
            return
        capacity = max(rows, self._capacity * GROWTH, 1024)
        with self.path.open("r+b") as file:
            os.posix_fallocate(file.fileno(), 0, capacity * 4 * self.dimension)
        self._open(capacity)

    def write(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        self.reserve(int(rows.max()) + 1)
        self._map[rows] = vectors

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self._map[rows])

    def flush(self) -> None:
        if self._map is not None:
            self._map.flush()
