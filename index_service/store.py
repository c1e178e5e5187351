"""The durable record of the index: SQLite in WAL mode, fsynced before any write is acknowledged.

Every write transaction gets the next sequence number. Items carry the sequence of the write that made
them, and deletions leave a tombstone with theirs, so a snapshot taken at sequence S is brought up to date
by replaying exactly what came after S.
"""

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from index_service.errors import StorageFull

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY,      -- the id FAISS knows the item by; never reused
    id TEXT NOT NULL UNIQUE,      -- the caller's id
    vector BLOB NOT NULL,         -- float32 little-endian, exactly as the caller sent it
    metadata TEXT NOT NULL,       -- JSON object of strings
    seq INTEGER NOT NULL          -- the write that made this row
);
CREATE INDEX IF NOT EXISTS items_by_seq ON items(seq);
CREATE TABLE IF NOT EXISTS tombstones (row INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tombstones_by_seq ON tombstones(seq);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
LOAD_BATCH = 20000


@dataclass(frozen=True)
class StoredItem:
    row: int
    id: str
    vector: bytes
    metadata: dict[str, str]


def metadata_json(metadata: dict[str, str]) -> str:
    return json.dumps(metadata, sort_keys=True) if metadata else "{}"


class Store:
    """Items, tombstones and settings on disk. Each write is one transaction: whole or not at all."""

    def __init__(self, data_dir: Path, max_bytes: int | None = None):
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "index.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        # WAL with synchronous=FULL fsyncs the log at every commit: a write acknowledged survives kill -9
        # and power loss, and SQLite's recovery discards a torn tail rather than loading it half.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        if max_bytes:
            # A full quota fails a write exactly as a full disk does (SQLITE_FULL): whole, and nothing kept.
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            self._db.execute(f"PRAGMA max_page_count = {max(1, max_bytes // page_size)}")
        self.seq = int(self.settings().get("seq", 0))

    def settings(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM settings"))

    def items_after(self, seq: int) -> Iterator[list[StoredItem]]:
        """Live items written after `seq` (all of them for 0), in batches, in row order."""
        last_row = -1
        while True:
            with self._lock:
                batch = self._db.execute(
                    "SELECT row, id, vector, metadata FROM items WHERE seq > ? AND row > ? ORDER BY row LIMIT ?",
                    (seq, last_row, LOAD_BATCH)).fetchall()
            if not batch:
                return
            last_row = batch[-1][0]
            yield [StoredItem(row, item_id, vector, json.loads(metadata)) for row, item_id, vector, metadata in batch]

    def rows_deleted_after(self, seq: int) -> list[int]:
        with self._lock:
            return [row for (row,) in self._db.execute("SELECT row FROM tombstones WHERE seq > ?", (seq,))]

    def get(self, ids: list[str]) -> list[StoredItem]:
        found = []
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                found += self._db.execute(
                    f"SELECT row, id, vector, metadata FROM items WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk).fetchall()
        return [StoredItem(row, item_id, vector, json.loads(metadata)) for row, item_id, vector, metadata in found]

    def write(self, upserts: list[StoredItem], deleted_rows: list[int], settings: dict[str, str]) -> int:
        """Applies upserts, deletes and settings in one durable transaction; returns its sequence number."""
        with self._lock:
            seq = self.seq + 1
            try:
                with _Transaction(self._db):
                    self._db.executemany("INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
                                         [*settings.items(), ("seq", str(seq))])
                    if deleted_rows:
                        self._db.executemany("DELETE FROM items WHERE row = ?", [(row,) for row in deleted_rows])
                        self._db.executemany("INSERT OR REPLACE INTO tombstones(row, seq) VALUES (?, ?)",
                                             [(row, seq) for row in deleted_rows])
                    if upserts:
                        self._db.executemany(
                            "INSERT INTO items(row, id, vector, metadata, seq) VALUES (?, ?, ?, ?, ?)",
                            [(i.row, i.id, i.vector, metadata_json(i.metadata), seq) for i in upserts])
            except sqlite3.OperationalError as err:
                if "full" in str(err).lower():
                    raise StorageFull("the index's storage is full (disk or --max-storage-bytes); nothing of this "
                                      "write was kept, searches go on") from err
                raise
            self.seq = seq
            return seq

    def forget_tombstones_through(self, seq: int) -> None:
        """Tombstones a snapshot already reflects are no longer needed; the log is checkpointed short."""
        with self._lock:
            self._db.execute("DELETE FROM tombstones WHERE seq <= ?", (seq,))
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback):
        if kind is not None:
            if self.db.in_transaction:  # SQLite may already have rolled back itself (SQLITE_FULL does)
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
