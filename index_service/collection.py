"""The candidates: the durable store, a FAISS index over their normalised vectors, and their metadata."""

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass

import faiss
import numpy as np

from index_service.errors import DimensionMismatch, InvalidArgument, ModelMismatch
from index_service.locks import ReadWriteLock
from index_service.store import Store, StoredItem

log = logging.getLogger(__name__)


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
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


class Collection:
    """Upserts, deletes and searches. Writes are durable before they return; searches run concurrently."""

    def __init__(self, store: Store, index_kind: str = "flat"):
        self.store = store
        self.index_kind = index_kind
        self._lock = ReadWriteLock()
        self._write_order = threading.Lock()  # one writer at a time, so row numbers and the store agree
        settings = store.settings()
        self.fingerprint = settings.get("model_fingerprint", "")
        self.dimension = int(settings.get("dimension", 0))
        self._row_of: dict[str, int] = {}
        self._item_of: dict[int, tuple[str, dict[str, str]]] = {}
        self._rows_by_value: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        self._next_row = 0
        self._faiss = self._new_faiss_index(self.dimension) if self.dimension else None
        items, matrix = store.load()
        if items:
            self._apply(items, matrix, [])
        log.info("loaded %d candidates (dimension %d, fingerprint %s)", len(items), self.dimension,
                 self.fingerprint or "none")

    def _new_faiss_index(self, dimension: int):
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))

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
            latest = {item.id: item for item in items}
            stored = []
            for item in latest.values():
                row = self._row_of.get(item.id)
                if row is None:
                    row, self._next_row = self._next_row, self._next_row + 1
                stored.append(StoredItem(row, item.id, item.vector.astype("<f4").tobytes(), item.metadata))
            settings = {} if self.fingerprint else {"model_fingerprint": fingerprint, "dimension": str(dimension)}
            self.store.write(stored, [], settings)
            if settings:
                self.fingerprint, self.dimension = fingerprint, dimension
                self._faiss = self._new_faiss_index(dimension)
            matrix = np.stack([item.vector for item in latest.values()]).astype(np.float32)
            with self._lock.writing():
                self._apply(stored, matrix, [])

    def delete(self, ids: list[str]) -> int:
        with self._write_order:
            rows = sorted({self._row_of[i] for i in ids if i in self._row_of})
            if rows:
                self.store.write([], rows, {})
                with self._lock.writing():
                    self._apply([], None, rows)
            return len(rows)

    def _apply(self, stored: list[StoredItem], matrix: np.ndarray | None, deleted_rows: list[int]) -> None:
        """Brings the in-memory structures in line with a write the store already holds."""
        replaced = [item.row for item in stored if item.row in self._item_of]
        gone = deleted_rows + replaced
        if gone:
            self._faiss.remove_ids(faiss.IDSelectorBatch(np.asarray(gone, dtype=np.int64)))
            for row in gone:
                item_id, metadata = self._item_of.pop(row)
                for key, value in metadata.items():
                    self._rows_by_value[key][value].discard(row)
                if row in deleted_rows:
                    del self._row_of[item_id]
        if stored:
            rows = np.asarray([item.row for item in stored], dtype=np.int64)
            self._faiss.add_with_ids(normalise_rows(matrix), rows)
            for item in stored:
                self._row_of[item.id] = item.row
                self._item_of[item.row] = (item.id, item.metadata)
                for key, value in item.metadata.items():
                    self._rows_by_value[key][value].add(item.row)
            self._next_row = max(self._next_row, int(rows.max()) + 1)

    def search(self, fingerprint: str, queries: np.ndarray, k: int,
               conditions: list[tuple[str, list[str]]]) -> list[list[Hit]]:
        """Top-k by cosine for each query row; only candidates meeting every (key, accepted values) condition."""
        with self._lock.reading():
            self.check_model(fingerprint, queries.shape[1])
            if self.count == 0:
                return [[] for _ in queries]
            params = None
            if conditions:
                allowed = self._rows_matching(conditions)
                if not allowed:
                    return [[] for _ in queries]
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.fromiter(allowed, dtype=np.int64)))
            scores, rows = self._faiss.search(normalise_rows(queries), min(k, self.count), params=params)
            scores = np.clip(scores, -1.0, 1.0)  # rounding can push a self-match a hair past 1
            return [[self._hit(row, score) for score, row in zip(query_scores, query_rows) if row >= 0]
                    for query_scores, query_rows in zip(scores, rows)]

    def _hit(self, row: int, score: float) -> Hit:
        item_id, metadata = self._item_of[row]
        return Hit(item_id, float(score), metadata)

    def _rows_matching(self, conditions: list[tuple[str, list[str]]]) -> set[int]:
        allowed = None
        for key, values in conditions:
            by_value = self._rows_by_value.get(key, {})
            matching = set().union(*(by_value.get(v, set()) for v in values))
            allowed = matching if allowed is None else allowed & matching
        return allowed or set()

    def close(self) -> None:
        self.store.close()
