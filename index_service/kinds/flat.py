"""flat: every live unit vector in memory, densely packed, scanned exactly with BLAS.

Vectors sit in fixed-size blocks (growing never copies what is there) at positions 0..n-1; a removed row's
place is taken by the last vector, so removal costs O(batch) and a scan never skips holes. Nothing is
snapshotted: the vectors are read back from the vector file at start.
"""

import mmap

import numpy as np

from index_service.arrays import unique
from index_service.kinds.base import Result, Structure
from index_service.exact import empty_result, merge, search_matrix

BLOCK_BYTES = 64 * 1024 * 1024


def new_block(rows: int, dimension: int) -> np.ndarray:
    """A zeroed block in anonymous memory backed by huge pages where the kernel allows (32 page faults for
    64 MiB instead of 16384), its pages touched now, outside the exclusive lock."""
    memory = mmap.mmap(-1, rows * dimension * 4)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    block = np.frombuffer(memory, dtype=np.float32).reshape(rows, dimension)
    block[::max(1, 4096 // (4 * dimension))] = 0  # one write per page faults them all in
    return block


class FlatStructure(Structure):
    kind = "flat"
    approximate = False
    snapshots_state = False

    def __init__(self, dimension, params, vectors):
        super().__init__(dimension, params, vectors)
        self.block_rows = max(1024, BLOCK_BYTES // (4 * dimension))
        self.blocks: list[np.ndarray] = []
        self.n = 0
        self.staged = 0  # rows staged (room made for them) and not yet published
        self.position_row = np.zeros(0, dtype=np.int64)
        self.row_position = np.zeros(0, dtype=np.int64)

    # Positions.

    def _reserve(self, total: int, max_row: int) -> None:
        while len(self.blocks) * self.block_rows < total:
            self.blocks.append(new_block(self.block_rows, self.dimension))
        if total > len(self.position_row):
            grown = np.full(max(total, len(self.blocks) * self.block_rows), -1, dtype=np.int64)
            grown[:len(self.position_row)] = self.position_row
            self.position_row = grown
        if max_row >= len(self.row_position):
            grown = np.full(max(max_row + 1, int(len(self.row_position) * 1.25) + 1024), -1, dtype=np.int64)
            grown[:len(self.row_position)] = self.row_position
            self.row_position = grown

    def _put(self, positions: np.ndarray, unit: np.ndarray) -> None:
        if len(positions) and positions[-1] - positions[0] == len(positions) - 1:  # a run (appends): slices
            start, done = int(positions[0]), 0
            while done < len(positions):
                block, offset = divmod(start + done, self.block_rows)
                count = min(self.block_rows - offset, len(positions) - done)
                self.blocks[block][offset:offset + count] = unit[done:done + count]
                done += count
            return
        for block in unique(positions // self.block_rows):
            here = positions // self.block_rows == block
            self.blocks[block][positions[here] % self.block_rows] = unit[here]

    def _take(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.dimension), dtype=np.float32)
        for block in unique(positions // self.block_rows):
            here = positions // self.block_rows == block
            out[here] = self.blocks[block][positions[here] % self.block_rows]
        return out

    def positions_of(self, rows: np.ndarray) -> np.ndarray:
        rows = rows[(rows >= 0) & (rows < len(self.row_position))]
        positions = self.row_position[rows]
        return positions[positions >= 0]

    # Writing.

    def stage(self, rows, unit, exclusive):
        """Room for the new rows is made here, outside the exclusive lock: growing is the slow part."""
        if len(rows):
            self.staged += len(rows)
            self._reserve(self.n + self.staged, int(rows.max()))
        return rows, unit

    def publish(self, staged, ended: np.ndarray) -> None:
        rows, unit = staged
        self._remove(ended)
        if len(rows):
            self.staged -= len(rows)
            positions = np.arange(self.n, self.n + len(rows))
            self._put(positions, unit)
            self.position_row[positions] = rows
            self.row_position[rows] = positions
            self.n += len(rows)

    def _remove(self, rows: np.ndarray) -> None:
        positions = self.positions_of(rows)
        if not len(positions):
            return
        end = self.n - len(positions)
        holes = np.sort(positions[positions < end])
        tail = np.arange(end, self.n)
        movers = tail[~np.isin(tail, positions)]
        self.row_position[self.position_row[positions]] = -1
        if len(holes):
            self._put(holes, self._take(movers))
            moved_rows = self.position_row[movers]
            self.position_row[holes] = moved_rows
            self.row_position[moved_rows] = holes
        self.position_row[end:self.n] = -1
        self.n = end

    def relocate(self, old_rows: np.ndarray, new_rows: np.ndarray, staged=None) -> None:
        self._reserve(self.n, int(new_rows.max()))
        positions = self.row_position[old_rows]
        self.row_position[old_rows] = -1
        self.row_position[new_rows] = positions
        self.position_row[positions] = new_rows

    def shrink(self, end: int) -> None:
        self.row_position = self.row_position[:end].copy()
        needed = -(-self.n // self.block_rows)
        del self.blocks[needed + 1:]  # keep one spare block for the next writes
        self.position_row = self.position_row[:len(self.blocks) * self.block_rows].copy()

    # Reading.

    def memory_search_floats(self, n_queries, params):
        # One BLAS product at a time on the loop also keeps two pool threads from running two on both cores
        # each (with 8 clients at 10k: 539 queries/s on the loop, 324 in the pool).
        return n_queries * self.n * self.dimension

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None, params=None) -> Result:
        if allowed is not None:
            positions = self.positions_of(allowed)
            if 2 * len(positions) < self.n:  # few: gather them and scan only those
                return search_matrix(queries, self._take(positions), self.position_row[positions], k)
            mask = np.zeros(self.n, dtype=bool)
            mask[positions] = True
        else:
            mask = None
        best = empty_result(len(queries), k)
        for number, block in enumerate(self.blocks):
            start = number * self.block_rows
            count = min(self.block_rows, self.n - start)
            if count <= 0:
                break
            found = search_matrix(queries, block[:count], self.position_row[start:start + count], k,
                                  None if mask is None else mask[start:start + count])
            best = merge(best, found, k)
        return best

    def unit_vectors(self, rows: np.ndarray) -> np.ndarray:
        return self._take(self.row_position[rows])

    def memory_bytes(self) -> int:
        return sum(b.nbytes for b in self.blocks) + self.position_row.nbytes + self.row_position.nbytes

    @classmethod
    def restore(cls, dimension, params, vectors, arrays, blobs, info):
        return cls(dimension, params, vectors)
