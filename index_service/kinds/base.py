"""What every search structure offers the collection, which holds their locks and decides when to call what.

Rows are the vector file's rows. Writing happens in two steps: `stage` does the slow part (graph
insertion, encoding) where the kind allows it outside the exclusive lock, leaving the new rows unsearchable;
`publish` runs under the exclusive lock, quickly, and makes a whole write visible at once (new rows in,
ended rows out), so no search sees half of one.
"""

from contextlib import AbstractContextManager
from typing import Callable, ClassVar

import faiss
import numpy as np

from index_service.config import KindParams
from index_service.vector_file import VectorFile

Exclusive = Callable[[], AbstractContextManager]
Shared = Callable[[], AbstractContextManager]
State = tuple[dict[str, np.ndarray], dict[str, bytes], dict]
# Rows a kind with a background tail (ivfpq codes, hnsw graph insertion) lets wait, searched exactly, with the
# writes queued, before large writes are held back (about 100 MB read per query at 768-d; at 65,536 a search
# during a 1M load took up to 2.2 s here); past twice as many, a write takes its own rows in itself.
TAIL_LIMIT = 32768
Result = tuple[np.ndarray, np.ndarray]  # (scores, rows) of shape (queries, k), best first, -1 rows past the end
Reads = Callable[[], Result]  # the rest of a search, reading the vector file once the shared lock is let go


class CaptureGivenUp(Exception):
    """The structure was rewritten after a capture (a purge moved entries): it cannot be finished."""


class Structure:
    kind: ClassVar[str] = ""
    approximate: ClassVar[bool] = False
    # False: nothing is snapshotted, the structure is rebuilt from the vector file at every start.
    snapshots_state: ClassVar[bool] = True

    def __init__(self, dimension: int, params: KindParams, vectors: VectorFile):
        self.dimension = dimension
        self.params = params
        self.vectors = vectors

    # Writing (the collection's writer only).

    def stage(self, rows: np.ndarray, unit: np.ndarray, exclusive: Exclusive):
        """Prepares rows for `publish`; may take `exclusive()` for short pieces of work. Returns what
        publish needs."""
        return rows, unit

    def publish(self, staged, ended: np.ndarray) -> None:
        """Under the exclusive lock: staged rows become searchable, `ended` rows stop being searchable."""
        raise NotImplementedError

    def stage_relocation(self, new_rows: np.ndarray, unit: np.ndarray):
        """Outside the exclusive lock: whatever `relocate` will need for the same vectors at new rows."""
        return None

    def relocate(self, old_rows: np.ndarray, new_rows: np.ndarray, staged=None) -> None:
        """Under the exclusive lock: the same vectors now live at new rows (compaction)."""
        raise NotImplementedError

    def freed_at_once(self, ended: np.ndarray) -> np.ndarray:
        """Under the exclusive lock, right before `publish` or `relocate` ends them: of these rows, those free
        at once; the others stay held (see held_rows)."""
        return ended

    def held_rows(self) -> np.ndarray:
        """Ended rows whose slot the structure still needs (their vectors guide a graph, or their codes wait
        in inverted lists); they are reusable only after `purge`."""
        return np.zeros(0, dtype=np.int64)

    def needs_purge(self, live: int) -> bool:
        return False

    def purge(self, exclusive: Exclusive) -> np.ndarray:
        """Drops what ended rows left behind; returns the rows now free. May run long (outside the exclusive
        lock except for short pieces)."""
        return np.zeros(0, dtype=np.int64)

    def shrink(self, end: int) -> None:
        """Under the exclusive lock: no row at or past `end` is used any more."""

    # Reading (any number of threads, under the shared lock).

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
               params: KindParams | None = None) -> Result | Reads:
        """Top k of unit queries among live rows (or the `allowed` ones), with the search-time values of
        `params` (a request's own) or of the structure's; or, for a kind that reads the vector file, a
        function that finishes the search from the file once the lock is let go (it must use nothing that
        the exclusive lock's holders change in place)."""
        raise NotImplementedError

    def memory_search_floats(self, n_queries: int, params: KindParams) -> int | None:
        """About how many floats a search of `n_queries` reads, for a kind whose search reads memory only and
        uses every core (BLAS); None otherwise. None for hnsw: FAISS searches its graph on one core, so two
        searches in the pool run side by side where on the event loop they would queue (with 8 clients at 20k,
        485 queries/s in the pool, 336 on the loop)."""
        return None

    def unit_vectors(self, rows: np.ndarray) -> np.ndarray | None:
        """The unit vectors of live rows if the structure keeps them in memory; None to read the vector file.
        Only kinds that hold every live row at all times answer from memory: exact scores from the file and
        from memory differ in the last bits, and an hnsw graph's answers changed with how far its background
        insertion had got."""
        return None

    # The tail: live rows the approximate structure does not hold yet, searched exactly meanwhile. Kinds
    # that have one take them in in the background (the collection's maintenance runs these).

    tail_chunk: ClassVar[int] = 16384  # rows the background takes in per step of work
    # True: past TAIL_LIMIT large writes wait for the background: taking rows in inline would hold the writer,
    # and every small write queued behind it, for a second or more.
    waits_for_tail: ClassVar[bool] = False

    def pending(self) -> int:
        """Live rows searched exactly because the approximate structure does not hold them yet."""
        return 0

    def drains_tail(self) -> bool:
        """True when background work can take the tail in now."""
        return False

    def begin_tail(self, limit: int) -> np.ndarray:
        """Under the exclusive lock: up to `limit` of the tail's rows to take in next."""
        raise NotImplementedError

    def prepare_tail(self, rows: np.ndarray, unit: np.ndarray):
        """No lock: the slow part of taking rows in that needs no change to the structure (encoding)."""
        raise NotImplementedError

    def absorb_tail(self, prepared, exclusive: Exclusive) -> int:
        """Takes prepared rows in, holding `exclusive()` for short pieces; rows ended meanwhile never come back
        as live. Returns how many rows left the tail."""
        raise NotImplementedError

    def end_tail(self) -> None:
        """Always called after begin_tail, also when absorbing failed."""

    def memory_bytes(self) -> int:
        return 0

    # Persistence.

    def state(self) -> State:
        """(arrays, blobs, info) to snapshot, copied: the caller holds the write mutex, searches go on."""
        return {}, {}, {}

    def capture(self) -> Callable[[Shared], State]:
        """Under the write mutex and the shared lock: a function that returns the state as it is now when
        called later, with neither held (it takes `shared()` for short pieces; an array may be given as
        snapshot.Pieces, copied as the snapshot is written). It, or the pieces, raise CaptureGivenUp if the
        structure was rewritten meanwhile. Writes wait only for the capture, so a kind whose state is large
        copies it in the function. By default the state is copied now."""
        state = self.state()
        return lambda shared: state

    @classmethod
    def restore(cls, dimension: int, params: KindParams, vectors: VectorFile, arrays: dict, blobs: dict,
                info: dict) -> "Structure":
        raise NotImplementedError

    def rebuild(self, rows: np.ndarray, unit: np.ndarray) -> None:
        """Adds live rows in bulk while nothing searches yet (loading)."""
        staged = self.stage(rows, unit, no_lock)
        self.publish(staged, np.zeros(0, dtype=np.int64))


class _NoLock(AbstractContextManager):
    def __exit__(self, *exc_info):
        return False


def no_lock() -> AbstractContextManager:
    return _NoLock()


def bitmap(flags: np.ndarray) -> np.ndarray:
    """A bool array as the little-endian packed bits FAISS's IDSelectorBitmap reads."""
    return np.packbits(flags, bitorder="little")


def selector(bits: np.ndarray) -> faiss.IDSelectorBitmap:
    """Selects the ids whose bit is set in `bits` (from `bitmap`); ids past its end are not selected. Built from
    the array itself, so FAISS's size is its length in bytes and the selector holds a reference to it: given
    the number of flags instead, it read up to eight times past the array, and a search during a graph
    insertion (nodes beyond a cached bitmap) returned whatever those bytes said."""
    return faiss.IDSelectorBitmap(bits)
