"""The durable record of the index: SQLite in WAL mode, fsynced before any write is acknowledged."""

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index_service.errors import StorageFull

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY,      -- the id FAISS knows the item by
    id TEXT NOT NULL UNIQUE,      -- the caller's id
    vector BLOB NOT NULL,         -- float32 little-endian, exactly as the caller sent it
    metadata TEXT NOT NULL        -- JSON object of strings
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredItem:
    row: int
    id: str
    vector: bytes
    metadata: dict[str, str]


class Store:
    """Items and settings on disk. Each write is one transaction: whole or not at all."""

    def __init__(self, data_dir: Path):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "index.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # WAL with synchronous=FULL fsyncs the log at every commit: a write acknowledged survives kill -9
        # and power loss, and a torn tail is discarded by SQLite's own recovery.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def settings(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM settings"))

    def load(self) -> tuple[list[StoredItem], np.ndarray]:
        """Everything held: the items, and their vectors stacked as a float32 matrix in the same order."""
        rows = self._db.execute("SELECT row, id, vector, metadata FROM items ORDER BY row").fetchall()
        items = [StoredItem(row, item_id, vector, json.loads(metadata)) for row, item_id, vector, metadata in rows]
        if not items:
            return items, np.zeros((0, 0), dtype=np.float32)
        matrix = np.frombuffer(b"".join(item.vector for item in items), dtype="<f4").reshape(len(items), -1)
        return items, matrix.astype(np.float32)

    def write(self, upserts: list[StoredItem], deleted_rows: list[int], settings: dict[str, str]) -> None:
        """Applies upserts, deletes and settings in one durable transaction."""
        try:
            with self._transaction():
                if settings:
                    self._db.executemany("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
                                         settings.items())
                if deleted_rows:
                    self._db.executemany("DELETE FROM items WHERE row = ?", [(row,) for row in deleted_rows])
                if upserts:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO items(row, id, vector, metadata) VALUES (?, ?, ?, ?)",
                        [(i.row, i.id, i.vector, json.dumps(i.metadata, sort_keys=True)) for i in upserts])
        except sqlite3.OperationalError as err:
            if "full" in str(err).lower():
                raise StorageFull(f"the index's disk is full; nothing of this write was kept ({err})") from err
            raise

    def _transaction(self):
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback):
        if kind is not None:
            self.db.execute("ROLLBACK")
            return False
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error:
            # A failed COMMIT (disk full) can leave the transaction open; close it so nothing half lands.
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return False
