"""A collection's catalog: ids, typed metadata and checksums by row, in SQLite (WAL, synchronous=FULL).

Every commit gets the next sequence number. A record carries the sequence of the write that stored it and,
once deleted or replaced, of the write that ended it; ended records (and their metadata rows, so filtered
searches stay consistent until the end is published) remain until a snapshot covers them or their row is
reused. A snapshot taken at S is brought up to date by undoing every row changed after S and adding the
live ones. Each record has a CRC-32 over its fields: a damaged record is refused, never served.
"""

import sqlite3
import threading
import zlib
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Iterator

import numpy as np

from index_service.arrays import unique
from index_service import metadata as meta
from index_service.errors import CatalogDamaged, StorageFull, StorageReadOnly
from index_service.filters import Equals, InRange

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY,      -- the row of the vector file holding the vector
    id TEXT NOT NULL,
    metadata TEXT NOT NULL,       -- JSON of typed values
    vector_crc INTEGER NOT NULL,  -- CRC-32 of the vector's bytes
    record_crc INTEGER NOT NULL,  -- CRC-32 of row, id, metadata and vector_crc
    seq INTEGER NOT NULL,         -- the write that stored it
    dead_seq INTEGER              -- the write that deleted or replaced it; NULL while live
);
CREATE INDEX IF NOT EXISTS items_by_seq ON items(seq);
CREATE INDEX IF NOT EXISTS ended_items ON items(dead_seq) WHERE dead_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT NOT NULL, type TEXT NOT NULL, value NOT NULL, row INTEGER NOT NULL,
    PRIMARY KEY (key, type, value, row)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta_keys (key TEXT PRIMARY KEY, items INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
CHUNK = 500  # host parameters per statement stay well under SQLite's limit
SCAN_BATCH = 50_000


@dataclass(frozen=True)
class Record:
    row: int
    id: str
    metadata: dict
    vector_crc: int
    seq: int  # the write that stored it: the item's version


@dataclass
class NewRecords:
    """Records to store, in columns. `bases` are record_base() of each (what does not depend on the row, so
    the validating thread computes it, not the writer)."""
    rows: list[int]
    ids: list[str]
    metadata: list[dict]
    metadata_json: list[str]
    vector_crcs: list[int]
    bases: list[int]

    @classmethod
    def of(cls, rows: list[int], ids: list[str], metadata: list[dict], vector_crcs: list[int]) -> "NewRecords":
        jsons = [meta.encode(m) for m in metadata]
        return cls(rows, ids, metadata, jsons, vector_crcs,
                   [record_base(i, j, c) for i, j, c in zip(ids, jsons, vector_crcs)])


def record_base(item_id: str, metadata_json: str, vector_crc: int) -> int:
    return zlib.crc32(f"{item_id}\0{metadata_json}\0{vector_crc}\0".encode())


def record_crc(row: int, base: int) -> int:
    """CRC-32 of a record's id, metadata, vector CRC and row."""
    return zlib.crc32(str(row).encode(), base)


def give_back_free_pages(db: sqlite3.Connection) -> None:
    """Shrinks the file by its free pages (auto_vacuum=INCREMENTAL). Through Python's sqlite3 each execution of
    the pragma frees a single page, so it runs once per free page."""
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    for _ in range(free):
        db.execute("PRAGMA incremental_vacuum").fetchall()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def storage_error(err: sqlite3.Error, path: Path) -> Exception:
    """The domain error for an SQLite failure, by its result code."""
    code = getattr(err, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StorageFull("the index's disk is full; nothing of this write was kept, searches go on")
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        return StorageReadOnly(f"cannot write {path}: {err}")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return CatalogDamaged(f"{path} is damaged: {err}")
    return err


class Catalog:
    """One writer (the collection's writer thread) and any number of reader threads, each on its own
    connection; in WAL mode readers never wait for the writer."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._db = self._connect(cache_kib=65536)
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect on a new file
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(SCHEMA)
            self.settings = dict(self._db.execute("SELECT key, value FROM settings"))
            self.key_counts = dict(self._db.execute("SELECT key, items FROM meta_keys WHERE items > 0"))
        except sqlite3.Error as err:
            error = storage_error(err, path)
            if isinstance(error, StorageFull):
                error = StorageFull(f"cannot open {path}: the disk is full; free some space and start again")
            raise error from None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.seq = int(self.settings.get("seq", 0))

    def _connect(self, cache_kib: int) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60)
        db.execute(f"PRAGMA cache_size = -{cache_kib}")
        return db

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._connect(cache_kib=16384)
            db.execute("PRAGMA query_only = 1")
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        return db

    @property
    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists())

    # Reading.

    def records(self, rows) -> tuple[dict[int, Record], list[int]]:
        """The records of `rows` (live or ended), and the rows whose record failed its checksum."""
        found, damaged = {}, []
        rows = [int(r) for r in rows]
        db = self._reader()
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            query = (f"SELECT row, id, metadata, vector_crc, record_crc, seq FROM items "
                     f"WHERE row IN ({','.join('?' * len(chunk))})")
            for row, item_id, metadata_json, vector_crc, crc, seq in db.execute(query, chunk):
                try:
                    if record_crc(row, record_base(item_id, metadata_json, vector_crc)) != crc:
                        raise ValueError("checksum")
                    found[row] = Record(row, item_id, meta.decode(metadata_json), vector_crc, seq)
                except ValueError:
                    damaged.append(row)
        return found, damaged

    def live_rows(self) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        """(rows, ids, vector CRCs) of every live record, in row order, in batches."""
        db = self._reader()
        last = -1
        while True:
            batch = db.execute("SELECT row, id, vector_crc FROM items WHERE dead_seq IS NULL AND row > ? "
                               "ORDER BY row LIMIT ?", (last, SCAN_BATCH)).fetchall()
            if not batch:
                return
            last = batch[-1][0]
            yield (np.fromiter((b[0] for b in batch), np.int64, len(batch)), [b[1] for b in batch],
                   np.fromiter((b[2] for b in batch), np.int64, len(batch)))

    def changed_after(self, seq: int) -> tuple[np.ndarray, list[tuple[int, str, int]]]:
        """Rows whose record changed after `seq` (stored or ended), and the live ones among them as
        (row, id, vector CRC): what replaying a snapshot taken at `seq` undoes and redoes."""
        db = self._reader()
        changed = np.fromiter((r for (r,) in db.execute(
            "SELECT row FROM items WHERE seq > ? UNION SELECT row FROM items WHERE dead_seq > ?", (seq, seq))),
            np.int64)
        live = db.execute("SELECT row, id, vector_crc FROM items WHERE seq > ? AND dead_seq IS NULL ORDER BY row",
                          (seq,)).fetchall()
        return np.sort(changed), live

    def max_row(self) -> int:
        """The highest row holding a record, live or ended; -1 for none."""
        (highest,) = self._reader().execute("SELECT MAX(row) FROM items").fetchone()
        return -1 if highest is None else highest

    def vector_crcs(self, rows) -> dict[int, int]:
        db = self._reader()
        rows = [int(r) for r in rows]
        crcs = {}
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            crcs.update(db.execute(f"SELECT row, vector_crc FROM items WHERE row IN ({','.join('?' * len(chunk))})",
                                   chunk))
        return crcs

    def rows_where(self, condition: Equals | InRange) -> np.ndarray:
        """Sorted rows (live or ended) whose metadata passes one condition."""
        db = self._reader()
        if isinstance(condition, InRange):
            clauses, params = [], [condition.key, meta.NUMBER]
            for name, op in (("gt", ">"), ("gte", ">="), ("lt", "<"), ("lte", "<=")):
                bound = getattr(condition, name)
                if bound is not None:
                    clauses.append(f"value {op} ?")
                    params.append(bound)
            query = f"SELECT row FROM meta WHERE key = ? AND type = ? AND {' AND '.join(clauses)}"
            return unique(np.fromiter((r for (r,) in db.execute(query, params)), np.int64))
        by_type: dict[str, list] = {}
        for value in condition.values:
            by_type.setdefault(meta.value_type(value), []).append(meta.stored_value(value))
        found = []
        for kind, values in by_type.items():
            for start in range(0, len(values), CHUNK):
                chunk = values[start:start + CHUNK]
                query = f"SELECT row FROM meta WHERE key = ? AND type = ? AND value IN ({','.join('?' * len(chunk))})"
                found.append(np.fromiter((r for (r,) in db.execute(query, [condition.key, kind, *chunk])), np.int64))
        return unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    # Writing (the writer thread only).

    def commit(self, seq: int, records: NewRecords | None, ended: list[tuple[int, dict]],
               settings: dict[str, str] | None = None) -> None:
        """Stores records (into free rows), ends records (row, metadata), and sets settings, all in one
        durable transaction numbered `seq`."""
        db = self._db
        counts: dict[str, int] = {}
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if records is not None:
                    self._forget_rows_reused(db, records.rows)
                if ended:
                    db.executemany("UPDATE items SET dead_seq = ? WHERE row = ?", [(seq, row) for row, _ in ended])
                    for _, values in ended:
                        for key in values:
                            counts[key] = counts.get(key, 0) - 1
                if records is not None:
                    db.executemany("INSERT OR REPLACE INTO items (row, id, metadata, vector_crc, record_crc, seq) "
                                   "VALUES (?, ?, ?, ?, ?, ?)",
                                   zip(records.rows, records.ids, records.metadata_json, records.vector_crcs,
                                       map(record_crc, records.rows, records.bases), repeat(seq)))
                    meta_rows = []
                    for row, values in zip(records.rows, records.metadata):
                        for key, value in values.items():
                            meta_rows.append((key, meta.value_type(value), meta.stored_value(value), row))
                            counts[key] = counts.get(key, 0) + 1
                    db.executemany("INSERT OR REPLACE INTO meta (key, type, value, row) VALUES (?, ?, ?, ?)",
                                   meta_rows)
                db.executemany("INSERT INTO meta_keys (key, items) VALUES (?, ?) "
                               "ON CONFLICT(key) DO UPDATE SET items = items + excluded.items",
                               [(k, v) for k, v in counts.items() if v])
                new_settings = {**(settings or {}), "seq": str(seq)}
                db.executemany("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", new_settings.items())
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may already have rolled back (SQLITE_FULL does)
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise storage_error(err, self.path) from None
        self.seq = seq
        self.settings.update(new_settings)
        for key, change in counts.items():
            self.key_counts[key] = self.key_counts.get(key, 0) + change
            if self.key_counts[key] <= 0:
                del self.key_counts[key]

    def _forget_rows_reused(self, db: sqlite3.Connection, rows: list[int]) -> None:
        """Removes the metadata rows of ended records whose row is about to hold a new one."""
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            old = db.execute(f"SELECT row, metadata FROM items WHERE row IN ({','.join('?' * len(chunk))})",
                             chunk).fetchall()
            self._delete_meta(db, old)

    @staticmethod
    def _delete_meta(db: sqlite3.Connection, records: list[tuple[int, str]]) -> None:
        doomed = []
        for row, metadata_json in records:
            try:
                values = meta.decode(metadata_json)
            except ValueError:
                continue  # a damaged record: its metadata rows go with a later rebuild
            doomed += [(k, meta.value_type(v), meta.stored_value(v), row) for k, v in values.items()]
        db.executemany("DELETE FROM meta WHERE key = ? AND type = ? AND value = ? AND row = ?", doomed)

    def purge(self, through_seq: int) -> int:
        """Deletes records that ended at or before `through_seq` (a snapshot covers them); returns how many."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                old = db.execute("SELECT row, metadata FROM items WHERE dead_seq IS NOT NULL AND dead_seq <= ?",
                                 (through_seq,)).fetchall()
                self._delete_meta(db, old)
                db.execute("DELETE FROM items WHERE dead_seq IS NOT NULL AND dead_seq <= ?", (through_seq,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            give_back_free_pages(db)
        except sqlite3.Error as err:
            raise storage_error(err, self.path) from None
        return len(old)

    def vacuum(self) -> None:
        """Gives free pages back to the file system when they are over a tenth of the file (replacements and
        deletes free pages), so the catalog's size follows what it holds."""
        try:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if free > max(16, pages // 10):
                give_back_free_pages(self._db)
        except sqlite3.Error as err:
            raise storage_error(err, self.path) from None

    def rows_beyond(self, end: int) -> list[int]:
        """Rows at or past `end` that hold a record (compaction moves the live ones, purges the rest)."""
        return [r for (r,) in self._db.execute("SELECT row FROM items WHERE row >= ?", (end,))]

    def drop_rows(self, rows: list[int]) -> None:
        """Deletes ended records outright (their rows are being given back by compaction)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            old = []
            for start in range(0, len(rows), CHUNK):
                chunk = rows[start:start + CHUNK]
                old += self._db.execute(f"SELECT row, metadata FROM items WHERE dead_seq IS NOT NULL AND "
                                        f"row IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            self._delete_meta(self._db, old)
            self._db.executemany("DELETE FROM items WHERE row = ? AND dead_seq IS NOT NULL", [(r,) for r, _ in old])
            self._db.execute("COMMIT")
            give_back_free_pages(self._db)
        except sqlite3.Error as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise storage_error(err, self.path) from None

    def close(self) -> None:
        with self._readers_lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
        self._db.close()
