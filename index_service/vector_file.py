"""The one durable copy of every vector: raw float32 rows in a file, exactly as the caller sent them.

Layout: a 4096-byte header (magic, dimension, the sequence number of the last write made durable), then
row r at offset 4096 + r * 4 * dimension. Rows are written with pwrite into space allocated beforehand (so
a full disk fails the write with ENOSPC before anything is committed, never with SIGBUS later) and made
durable with fdatasync before the catalog commits the write that refers to them. Each row's CRC-32 lives in
the catalog; a row whose bytes no longer match it is damaged and never served.

Every read is a pread (one per run of consecutive rows), so the page cache, not the process, holds the
vectors. Not a memory map: the kernel maps a file's page cache in large folios (2 MB here), so re-ranking
1,000 random rows a query mapped nearly the whole file into the process (4.7 GiB of RSS at 5M x 768), for
about 1-2 ms a query saved (3 ms vs 1-2 ms per 1,000 random rows, measured here).

When the file is larger than the page cache (10M x 768 is 31 GB), a re-rank's scattered rows come from
disk, and each pread waits for the one before. Announcing them all first (POSIX_FADV_WILLNEED) lets the
disk fetch them at once: about 3x faster from a cold cache, but about 0.75 us a row more from a warm one
(`python bench/cold_reads.py`). So a file announces its scattered reads only while they are slow, judged
by the time per run of its last scattered read.
"""

import errno
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np

HEADER_BYTES = 4096
MAGIC = b"IMGSIM-VECTORS-1"
HEADER = struct.Struct("<16sIQ")  # magic, dimension, last durable sequence number
SEQUENTIAL_CHUNK = 64 * 1024 * 1024
SCATTERED_RUNS = 64  # a read of this many separate runs or more is timed to decide on announcing them
FROM_DISK_S_PER_RUN = 10e-6  # page cache: about 2 us a run; disk: about 100 (alone) or 35 (announced)


class VectorFileError(Exception):
    """The file is not a vector file of this dimension."""


def read_header(path: Path) -> tuple[int, int]:
    """(dimension, last durable sequence number) of a vector file."""
    with path.open("rb") as file:
        magic, dimension, seq = HEADER.unpack(file.read(HEADER.size).ljust(HEADER.size, b"\0"))
    if magic != MAGIC:
        raise VectorFileError(f"{path} is not an imgsim vector file (bad header)")
    return dimension, seq


def crc32_rows(matrix: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's little-endian float32 bytes."""
    rows = np.ascontiguousarray(matrix, dtype="<f4")
    return np.fromiter((zlib.crc32(row) for row in rows), dtype=np.int64, count=len(rows))


def contiguous_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(first row, count, position in `rows`) of each run of consecutive rows in sorted `rows`."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return list(zip(rows[starts].tolist(), (ends - starts).tolist(), starts.tolist()))  # a re-rank's 1,000 runs


class VectorFile:
    def __init__(self, path: Path, dimension: int, create: bool = False):
        self.path = path
        self.dimension = dimension
        self.row_bytes = 4 * dimension
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self._fd = os.open(path, flags, 0o644)
        size = os.fstat(self._fd).st_size
        if size == 0:
            self._write_header(0)
            os.fsync(self._fd)
        magic, stored_dimension, self.durable_seq = HEADER.unpack(os.pread(self._fd, HEADER.size, 0))
        if magic != MAGIC:
            raise VectorFileError(f"{path} is not an imgsim vector file (bad header)")
        if stored_dimension != dimension:
            raise VectorFileError(f"{path} holds vectors of dimension {stored_dimension}, not {dimension}")
        self.capacity = max(0, (os.fstat(self._fd).st_size - HEADER_BYTES) // self.row_bytes)
        self.announce_reads = False  # set while scattered reads come from disk

    def _write_header(self, seq: int) -> None:
        os.pwrite(self._fd, HEADER.pack(MAGIC, self.dimension, seq).ljust(HEADER_BYTES, b"\0"), 0)

    @property
    def disk_bytes(self) -> int:
        return os.fstat(self._fd).st_size

    # Writing.

    def reserve(self, rows: int) -> None:
        """Allocates room for `rows` rows now (growing by a 32nd at a time, so the file stays within 1.04x
        of what it holds; fallocate is cheap). Raises OSError(ENOSPC) when the disk cannot hold them."""
        if rows <= self.capacity:
            return
        capacity = max(rows, self.capacity + max(self.capacity // 32, 1024))
        try:
            os.posix_fallocate(self._fd, 0, HEADER_BYTES + capacity * self.row_bytes)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if rows < capacity:  # the growth margin did not fit; the rows themselves may
                os.posix_fallocate(self._fd, 0, HEADER_BYTES + rows * self.row_bytes)
                capacity = rows
            else:
                raise
        self.capacity = capacity

    def write(self, rows: np.ndarray, matrix: np.ndarray) -> None:
        """Writes raw rows (in any order; space must be reserved). Not durable until `sync`."""
        if len(rows) < 2 or np.all(rows[1:] > rows[:-1]):  # already in order (fresh rows): no copy
            sorted_rows, data = rows, np.ascontiguousarray(matrix, dtype="<f4")
        else:
            order = np.argsort(rows, kind="stable")
            sorted_rows = rows[order]
            data = np.ascontiguousarray(np.asarray(matrix, dtype="<f4")[order])
        view = memoryview(data).cast("B")
        for first, count, position in contiguous_runs(sorted_rows):
            chunk = view[position * self.row_bytes:(position + count) * self.row_bytes]
            offset = HEADER_BYTES + first * self.row_bytes
            while chunk:
                written = os.pwrite(self._fd, chunk, offset)
                chunk, offset = chunk[written:], offset + written

    def sync(self, seq: int) -> None:
        """Makes every write so far durable, recording `seq` as the write about to commit: a catalog that
        later knows less than that has lost committed writes (a deleted write-ahead log)."""
        self._write_header(seq)
        os.fdatasync(self._fd)
        self.durable_seq = seq

    def shrink(self, rows: int) -> None:
        """Gives back the space past `rows` rows (compaction). Callers guarantee no reader reads beyond it."""
        os.ftruncate(self._fd, HEADER_BYTES + rows * self.row_bytes)
        os.fsync(self._fd)
        self.capacity = rows

    # Reading.

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Raw rows, in the order asked. Read in file order (runs of consecutive rows in one pread), each
        straight into its place in the answer: permuting 1,000 rows afterwards cost more than reading them."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dimension), dtype=np.float32)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        destinations = order.tolist()
        view = memoryview(out).cast("B")
        runs = contiguous_runs(rows[order])
        scattered = len(runs) >= SCATTERED_RUNS
        if scattered and self.announce_reads and hasattr(os, "posix_fadvise"):
            for first, count, _ in runs:
                os.posix_fadvise(self._fd, HEADER_BYTES + first * self.row_bytes, count * self.row_bytes,
                                 os.POSIX_FADV_WILLNEED)
        started, fd, row_bytes = time.perf_counter(), self._fd, self.row_bytes
        for first, count, position in runs:  # a re-rank's 1,000 runs of one row: the loop is kept lean
            if count == 1:
                destination = destinations[position]
                target = view[destination * row_bytes:(destination + 1) * row_bytes]
                if os.preadv(fd, [target], HEADER_BYTES + first * row_bytes) != row_bytes:
                    self._pread_into(target, first, 1)  # a short read (rare): read the row again to its end
            else:
                out[order[position:position + count]] = self.read_range(first, count)
        if scattered:
            self.announce_reads = (time.perf_counter() - started) / len(runs) > FROM_DISK_S_PER_RUN
        return out

    def _pread_into(self, view: memoryview, first: int, count: int) -> None:
        offset, done = HEADER_BYTES + first * self.row_bytes, 0
        while True:
            got = os.preadv(self._fd, [view[done:] if done else view], offset + done)
            done += got
            if done >= len(view):
                return
            if got == 0:
                raise VectorFileError(f"{self.path} ends before row {first + count}")

    def read_range(self, first: int, count: int) -> np.ndarray:
        """Consecutive rows with one pread (bulk loads: the page cache keeps them, the process does not)."""
        out = np.empty((count, self.dimension), dtype=np.float32)
        self._pread_into(memoryview(out).cast("B"), first, count)
        return out

    def scan(self, rows: np.ndarray, chunk_rows: int | None = None):
        """Yields (rows, raw matrix) for sorted, distinct `rows` in chunks, reading whole spans sequentially."""
        chunk_rows = chunk_rows or max(1, SEQUENTIAL_CHUNK // self.row_bytes)
        for start in range(0, len(rows), chunk_rows):
            part = rows[start:start + chunk_rows]
            first, last = int(part[0]), int(part[-1])
            if last - first + 1 == len(part):  # consecutive rows (a bulk load's tail): no gather
                yield part, self.read_range(first, len(part))
            elif last - first + 1 <= 2 * len(part):
                span = self.read_range(first, last - first + 1)
                yield part, span[part - first]
            else:
                yield part, np.concatenate([self.read_range(f, c) for f, c, _ in contiguous_runs(part)])

    def close(self) -> None:
        os.close(self._fd)
