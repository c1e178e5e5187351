"""The candidates: the durable store, a search structure over their unit vectors, and their metadata."""

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index_service import snapshot
from index_service.errors import DimensionMismatch, InvalidArgument, ModelMismatch, StorageFull
from index_service.index import KINDS, KindParams, top_k_by_exact_score
from index_service.locks import ReadWriteLock
from index_service.store import Store, StoredItem
from index_service.vector_file import VectorFile

log = logging.getLogger(__name__)
# A filter this selective is answered by an exact scan of the rows it allows, even on approximate kinds:
# cheaper than steering a graph or inverted lists around most of the index, and exact.
EXACT_SCAN_BELOW = 20000


class DataDirMismatch(ValueError):
    """The data directory holds an index of another kind than the one asked for."""


@dataclass(frozen=True)
class NewItem:
    id: str
    vector: np.ndarray
    metadata: dict[str, str]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, str]


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


class Collection:
    """Upserts, deletes and searches. Writes are durable before they return; searches run concurrently."""

    def __init__(self, data_dir: Path, index_kind: str = "flat", params: KindParams | None = None,
                 snapshot_every: int = 100_000, search_threads: int = 1, max_storage_bytes: int | None = None):
        self.data_dir = data_dir
        self.search_threads = search_threads
        self.store = Store(data_dir, max_storage_bytes)
        self.params = params or KindParams()
        self.snapshot_every = snapshot_every
        settings = self.store.settings()
        stored_kind = settings.get("index_kind")
        if stored_kind and stored_kind != index_kind:
            raise DataDirMismatch(f"{data_dir} holds a {stored_kind!r} index, not {index_kind!r}: start with "
                                  f"--index-kind {stored_kind}, or use another data directory")
        self.index_kind = index_kind
        self.fingerprint = settings.get("model_fingerprint", "")
        self.dimension = int(settings.get("dimension", 0))
        self._next_row = int(settings.get("next_row", 0))
        self._lock = ReadWriteLock()
        self._write_order = threading.Lock()  # one writer at a time, so row numbers and the store agree
        self._row_of: dict[str, int] = {}
        self._item_of: dict[int, tuple[str, dict[str, str]]] = {}
        self._rows_by_value: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        self._live_rows: np.ndarray | None = None
        self._structure = None
        self._vectors: VectorFile | None = None
        self.snapshot_seq = 0
        self.last_snapshot_unix = 0.0
        self._changes_since_snapshot = 0
        self._snapshot_wanted = threading.Event()
        self._closing = False
        started = time.monotonic()
        if self.dimension:
            self._open_structure()
        log.info("loaded %d candidates (%s, dimension %d, fingerprint %s) in %.2f s", self.count, index_kind,
                 self.dimension, self.fingerprint or "none", time.monotonic() - started)
        self._snapshotter = threading.Thread(target=self._snapshot_when_asked, name="snapshotter", daemon=True)
        self._snapshotter.start()

    # Loading.

    def _vector_file(self, dimension: int | None = None) -> VectorFile | None:
        """The exact vectors on disk, which only the approximate kinds need (to re-rank and scan exactly).
        `dimension` is the first write's, before the index has one of its own."""
        if KINDS[self.index_kind].approximate and self._vectors is None:
            self._vectors = VectorFile(self.data_dir / "vectors.f32", dimension or self.dimension)
        return self._vectors

    def _new_structure(self):
        return KINDS[self.index_kind](self.dimension, self.params, self._vector_file())

    def _open_structure(self) -> None:
        """The newest snapshot plus what the store holds after it; or, failing that, everything from the store."""
        found = snapshot.newest(self.data_dir / "snapshots")
        if found:
            seq, folder = found
            try:
                self._structure = KINDS[self.index_kind].load(folder, self.dimension, self.params,
                                                              self._vector_file())
                catalog = snapshot.read_catalog(folder)
                self._catalog_add(catalog["rows"], catalog["ids"], catalog["metadata"])
                self.snapshot_seq = seq
                self._replay(after_seq=seq)
                return
            except Exception:  # a damaged snapshot costs a slower start, never the data
                log.exception("snapshot %s is unreadable; rebuilding from the store", folder)
                self._row_of, self._item_of = {}, {}
                self._rows_by_value.clear()
        self._structure = self._new_structure()
        self._replay(after_seq=0)

    def _replay(self, after_seq: int) -> None:
        deleted = self.store.rows_deleted_after(after_seq) if after_seq else []
        if deleted:
            self._remove_rows(np.asarray(deleted, dtype=np.int64))
        for batch in self.store.items_after(after_seq):
            matrix = np.frombuffer(b"".join(i.vector for i in batch), dtype="<f4").reshape(len(batch), -1)
            self._add(batch, normalise_rows(matrix))

    # Writing.

    @property
    def count(self) -> int:
        return len(self._row_of)

    def check_model(self, fingerprint: str, dimension: int) -> None:
        if not fingerprint:
            raise InvalidArgument("model_fingerprint is empty: pass the fingerprint the embedder returned")
        if self.fingerprint and fingerprint != self.fingerprint:
            raise ModelMismatch(
                f"the index holds vectors of model {self.fingerprint}, not of {fingerprint}: mixing embedding "
                "spaces would give meaningless scores; re-embed with the index's model or use another index")
        if self.dimension and dimension != self.dimension:
            raise DimensionMismatch(f"vectors have dimension {dimension}, the index holds dimension {self.dimension}")

    def upsert(self, fingerprint: str, items: list[NewItem]) -> None:
        """Adds or replaces items (the last of an id wins), durably. Vectors are checked by the caller."""
        dimension = len(items[0].vector)
        with self._write_order:
            self.check_model(fingerprint, dimension)
            latest = list({item.id: item for item in items}.values())
            replaced = [self._row_of[item.id] for item in latest if item.id in self._row_of]
            first_row = self._next_row
            stored = [StoredItem(first_row + i, item.id, np.asarray(item.vector, dtype="<f4").tobytes(),
                                 item.metadata) for i, item in enumerate(latest)]
            settings = {"next_row": str(first_row + len(stored))}
            if not self.fingerprint:
                settings.update(model_fingerprint=fingerprint, dimension=str(dimension), index_kind=self.index_kind)
            self._reserve_vector_space(first_row + len(stored), dimension)
            self.store.write(stored, replaced, settings)
            self._next_row = first_row + len(stored)
            if not self.fingerprint:
                self.fingerprint, self.dimension = fingerprint, dimension
                self._structure = self._new_structure()
            unit = normalise_rows(np.stack([item.vector for item in latest]))
            with self._lock.writing():
                if replaced:
                    self._remove_rows(np.asarray(replaced, dtype=np.int64))
                self._add(stored, unit)
            self._count_changes(len(stored) + len(replaced))

    def _reserve_vector_space(self, rows: int, dimension: int) -> None:
        """Allocates the vector file's room before the store commits, so a full disk refuses the write whole."""
        if not KINDS[self.index_kind].approximate:
            return
        try:
            self._vector_file(dimension).reserve(rows)
        except OSError as err:
            raise StorageFull(f"no room for the vectors on the index's disk ({err.strerror}); nothing of this "
                              "write was kept, searches go on") from err

    def delete(self, ids: list[str]) -> int:
        with self._write_order:
            rows = sorted({self._row_of[i] for i in ids if i in self._row_of})
            if rows:
                self.store.write([], rows, {})
                with self._lock.writing():
                    self._remove_rows(np.asarray(rows, dtype=np.int64))
                self._count_changes(len(rows))
            return len(rows)

    def _add(self, stored: list[StoredItem], unit_vectors: np.ndarray) -> None:
        rows = np.asarray([item.row for item in stored], dtype=np.int64)
        if self._vectors is not None:
            self._vectors.write(rows, unit_vectors)
        self._structure.add(rows, unit_vectors)
        self._catalog_add(rows.tolist(), [item.id for item in stored], [item.metadata for item in stored])

    def _remove_rows(self, rows: np.ndarray) -> None:
        self._structure.remove(rows)
        for row in rows.tolist():
            entry = self._item_of.pop(row, None)
            if entry is None:
                continue
            item_id, metadata = entry
            if self._row_of.get(item_id) == row:
                del self._row_of[item_id]
            for key, value in metadata.items():
                self._rows_by_value[key][value].discard(row)
        self._live_rows = None

    def _catalog_add(self, rows: list[int], ids: list[str], metadata: list[dict[str, str]]) -> None:
        for row, item_id, meta in zip(rows, ids, metadata):
            self._row_of[item_id] = row
            self._item_of[row] = (item_id, meta)
            for key, value in meta.items():
                self._rows_by_value[key][value].add(row)
        self._live_rows = None

    # Reading.

    def get(self, ids: list[str]) -> list[StoredItem]:
        """The stored items (exact vectors as sent, metadata) of the ids held; unknown ids are left out."""
        return self.store.get(ids)

    def search(self, fingerprint: str, queries: np.ndarray, k: int, conditions: list[tuple[str, list[str]]],
               exact: bool = False) -> list[list[Hit]]:
        """Top-k by cosine for each query row; only candidates meeting every (key, accepted values) condition."""
        # OpenMP's thread count belongs to the calling thread, and gRPC serves each call on a pool thread:
        # set it here, or a search runs on every core and concurrent searches oversubscribe the CPU.
        faiss.omp_set_num_threads(self.search_threads)
        with self._lock.reading():
            self.check_model(fingerprint, queries.shape[1])
            if self.count == 0:
                return [[] for _ in queries]
            allowed = self._rows_matching(conditions) if conditions else None
            if allowed is not None and len(allowed) == 0:
                return [[] for _ in queries]
            unit = normalise_rows(queries)
            k = min(k, self.count)
            if self._structure.approximate and (exact or (allowed is not None and len(allowed) < EXACT_SCAN_BELOW)):
                scores, rows = top_k_by_exact_score(self._vectors, allowed if allowed is not None else self.live_rows(),
                                                    unit, k)
            else:
                scores, rows = self._structure.search(unit, k, allowed)
            scores = np.clip(scores, -1.0, 1.0)  # rounding can push a self-match a hair past 1
            return [[self._hit(row, score) for score, row in zip(query_scores, query_rows) if row >= 0]
                    for query_scores, query_rows in zip(scores, rows)]

    def live_rows(self) -> np.ndarray:
        if self._live_rows is None:
            self._live_rows = np.sort(np.fromiter(self._item_of.keys(), dtype=np.int64, count=len(self._item_of)))
        return self._live_rows

    def _hit(self, row: int, score: float) -> Hit:
        item_id, metadata = self._item_of[row]
        return Hit(item_id, float(score), metadata)

    def _rows_matching(self, conditions: list[tuple[str, list[str]]]) -> np.ndarray:
        allowed = None
        for key, values in conditions:
            by_value = self._rows_by_value.get(key, {})
            matching = set().union(*(by_value.get(v, set()) for v in values))
            allowed = matching if allowed is None else allowed & matching
        return np.sort(np.fromiter(allowed or (), dtype=np.int64))

    # Snapshots.

    def _count_changes(self, n: int) -> None:
        self._changes_since_snapshot += n
        # A snapshot rewrites the whole index, so they come further apart as it grows (after a quarter of
        # it has changed): snapshot writing stays proportional to what is ingested, and a restart replays
        # at most a quarter of the index from the store.
        if self._changes_since_snapshot >= max(self.snapshot_every, self.count // 4):
            self._snapshot_wanted.set()

    def _snapshot_when_asked(self) -> None:
        while True:
            self._snapshot_wanted.wait()
            if self._closing:
                return
            self._snapshot_wanted.clear()
            try:
                self.snapshot()
            except Exception:  # the store still holds everything; the next snapshot may succeed
                log.exception("snapshot failed")

    def snapshot(self) -> None:
        """Writes the in-memory index aside so that a restart loads it instead of rebuilding it."""
        with self._write_order:
            seq = self.store.seq
            if self._structure is None or seq == self.snapshot_seq:
                return
            started = time.monotonic()
            with self._lock.reading():
                rows = list(self._item_of)
                catalog = {"rows": rows, "ids": [self._item_of[r][0] for r in rows],
                           "metadata": [self._item_of[r][1] for r in rows]}
                if self._vectors is not None:
                    self._vectors.flush()
                snapshot.write(self.data_dir / "snapshots", seq, self._structure.save, catalog)
            self.store.forget_tombstones_through(seq)
            self.snapshot_seq, self.last_snapshot_unix = seq, time.time()
            self._changes_since_snapshot = 0
            log.info("snapshot %d written (%d candidates) in %.2f s", seq, len(rows), time.monotonic() - started)

    def close(self) -> None:
        """Snapshots what changed (so the next start is fast), then closes the store."""
        self._closing = True
        self._snapshot_wanted.set()
        self._snapshotter.join()
        if self._changes_since_snapshot:
            self.snapshot()
        self.store.close()
