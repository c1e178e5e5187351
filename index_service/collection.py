"""A collection: its catalog, vector file, id table and search structure, and the paths that change and read
them. The write invariants live here, at the layer that commits: every item of a write is checked before
anything is durable, a write commits whole or not at all, and readers see all of it or none of it.

Writes run on the collection's writer thread under `write_mutex` (one writer at a time): vectors into free
rows of the vector file (fdatasync), then the catalog (one SQLite transaction, fsync); only then is the
write staged into the search structure and published under the exclusive lock in one short step. Searches
hold the shared lock, so they never wait for a commit, a snapshot being written or a training run.
"""

import errno
import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from index_service.arrays import difference, union, unique
from index_service import filters as flt
from index_service import snapshot
from index_service.catalog import Catalog, NewRecords
from index_service.config import BadParams, KindParams, params_from_dict, params_with
from index_service.errors import (Cancelled, DeadlineExceeded, DimensionMismatch, IndexServiceError,
                                  InvalidArgument, ModelMismatch, NotReady, StorageFull)
from index_service.id_table import GROW_AHEAD_LOAD, Growth, IdTable, id_hashes
from index_service.kinds import STRUCTURES, Structure
from index_service.kinds.base import TAIL_LIMIT, CaptureGivenUp
from index_service.exact import empty_result, exact_from_file, merge, search_matrix, unit_rows
from index_service.loading import check_catalog_complete, load_memory
from index_service.locks import ReadTickets, ReadWriteLock
from index_service.rows import RowAllocator
from index_service.vector_file import VectorFile, crc32_rows, read_header
from index_service.writes import SMALL_WRITE, WriteOp, Writer  # SMALL_WRITE: never waits for the tail either

log = logging.getLogger(__name__)
# A filter this selective is answered by an exact scan of the rows it allows, even on approximate kinds:
# cheaper than steering a graph or inverted lists around most of the collection, and exact.
EXACT_SCAN_BELOW = 20000
EXACT_GATHER_ROWS = 65536
# A search that reads at most this many floats, all in memory (32 MiB: about a millisecond of memory
# bandwidth here), costs less than its hand-off to a worker thread and back, so the servicer may run it on
# its event loop (see quick_search).
QUICK_SEARCH_FLOATS = 1 << 23
CATALOG_FILE = "catalog.sqlite3"
VECTOR_FILE = "vectors.f32"
SNAPSHOTS = "snapshots"
# A snapshot copies the id table this many slots per hold of the shared lock (24 MB, a few ms): copied whole
# under the write mutex it held every write 0.6 s at 3.3M items.
ID_COPY_SLOTS = 1 << 20


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict


@dataclass(frozen=True)
class StoredItem:
    id: str
    vector: np.ndarray | None
    metadata: dict
    version: int = 0  # the sequence number of the write that stored it


@dataclass(frozen=True)
class WriteResult:
    inserted: int = 0
    replaced: int = 0
    deleted: int = 0
    not_found: int = 0
    count: int = 0
    version: int = 0  # the sequence number of the commit, 0 when it stored nothing
    skipped_ids: tuple[str, ...] = ()  # only_absent upserts: ids held, not written
    deleted_ids: tuple[str, ...] = ()  # conditional deletes: ids removed ...
    changed_ids: tuple[str, ...] = ()  # ... and ids held at another version, left in place


@dataclass(frozen=True)
class Stats:
    name: str
    kind: str
    params: KindParams
    fingerprint: str
    dimension: int
    count: int
    dead: int
    vector_bytes: int
    catalog_bytes: int
    snapshot_bytes: int
    last_seq: int
    snapshot_seq: int
    trained: bool
    damaged: int
    pending: int
    snapshotting: bool = False


class Collection:
    def __init__(self, folder: Path, snapshot_every: int = 100_000, storage=None):
        self.folder = folder
        self.catalog = Catalog(folder / CATALOG_FILE)
        settings = self.catalog.settings
        self.name = settings["name"]
        self.kind = settings["kind"]
        self.params = params_from_dict(json.loads(settings["params"]))
        self.fingerprint = settings.get("fingerprint", "")
        self.dimension = int(settings.get("dimension", 0))
        self.snapshot_every = snapshot_every
        self.storage = storage  # the data directory's space budget (quota and the disk's reserve)
        self.lock = ReadWriteLock()
        self.readers = ReadTickets()  # searches reading the vector file outside the lock (see search)
        self.write_mutex = threading.RLock()
        self.snapshotting = threading.Lock()
        self.vectors: VectorFile | None = None
        self.structure: Structure | None = None
        self.ids = IdTable()
        self._ids_growth: Growth | None = None  # a bigger id table being built aside (see _grown_ids)
        self.rows = RowAllocator(readers=self.readers)
        self.damaged: set[int] = set()
        self.snapshot_seq = 0
        self.last_snapshot_unix = 0.0
        self.changes_since_snapshot = 0  # changed through note_changes: the writer and the maintenance both add
        self._changes = threading.Lock()
        self.generation = 0  # bumped at every publish: what caches of the live state key on
        self._live_rows = None
        self._filter_cache: dict = {}
        self.scrub_needed = False  # rows loaded from a snapshot whose vectors were not read yet
        self.closed = False
        self.recovering = False
        self.training = False  # the maintenance is training ivfpq lists: the tail cannot be taken in meanwhile
        # Set when a write leaves rows for the background to take in: the maintenance waits on it, so that a
        # bulk load, which waits for the background, never waits for the maintenance's polling as well.
        self.tail_grew = threading.Event()
        self._admission = threading.Lock()
        self.writer: Writer | None = None

    # Opening and closing.

    def load(self, stopping: threading.Event | None = None) -> None:
        started = time.monotonic()
        path = self.folder / VECTOR_FILE
        if path.exists() and path.stat().st_size:
            check_catalog_complete(self, read_header(path)[1])
        if self.dimension:
            self._open_vectors(self.dimension)
            load_memory(self, stopping)
        self.writer = Writer(self.name, self._apply)
        log.info("collection %r: %d items (%s, dimension %d) loaded in %.2f s", self.name, self.count, self.kind,
                 self.dimension, time.monotonic() - started)

    def _open_vectors(self, dimension: int) -> None:
        path = self.folder / VECTOR_FILE
        if not self.fingerprint and path.exists():
            path.unlink()  # left by a first write that never committed: it holds nothing
        self.vectors = VectorFile(path, dimension, create=True)
        self.structure = STRUCTURES[self.kind](dimension, self.params, self.vectors)

    def close(self) -> None:
        """Finishes the write in progress, refuses queued ones, snapshots what changed, closes the files."""
        if self.closed:
            return
        if self.writer is not None:
            self.writer.close()
        with self.write_mutex:
            self.closed = True
        if self.changes_since_snapshot and self.structure is not None:
            try:
                self.take_snapshot()
            except Exception:  # the store holds everything; the next start replays it
                log.exception("collection %r: closing snapshot failed", self.name)
        self.readers.wait_all_back_before(self.readers.mark())  # searches still reading the files finish first
        self.catalog.close()
        if self.vectors is not None:
            self.vectors.close()

    # The model.

    @property
    def count(self) -> int:
        return self.ids.count

    def check_model(self, fingerprint: str, dimension: int) -> None:
        if not fingerprint:
            raise InvalidArgument("model_fingerprint is empty: pass the fingerprint the embedder returned")
        if self.fingerprint and fingerprint != self.fingerprint:
            raise ModelMismatch(
                f"collection {self.name!r} holds vectors of model {self.fingerprint}, not of {fingerprint}: mixing "
                "embedding spaces would give meaningless scores; re-embed with its model or use another collection")
        if self.dimension and dimension != self.dimension:
            raise DimensionMismatch(f"vectors have dimension {dimension}, collection {self.name!r} holds dimension "
                                    f"{self.dimension}")

    # Writing: the writer thread.

    def has_room_for(self, items: int) -> bool:
        """False while a write of this size should wait: a large write waits while it would take the tail
        and the writes queued before it past TAIL_LIMIT, for kinds whose background takes the tail in (hnsw
        insertion, ivfpq encoding) and while ivfpq lists train (until then nothing takes the tail in, and at
        10M a bulk load left 606k rows, 1.8 GB, for every search to scan). A bulk load goes at the pace of the
        background, the tail stays under the limit, and small writes and searches go on meanwhile. With
        nothing waiting, any write may go (a call may be larger than the limit)."""
        structure = self.structure
        if items <= SMALL_WRITE or structure is None:
            return True
        if not self.training and not (structure.waits_for_tail and structure.drains_tail()):
            return True
        backlog = structure.pending() + (self.writer.backlog() if self.writer is not None else 0)
        # Small writes never wait, so they get headroom: a few of their rows in the tail must not keep a bulk
        # load's next call out while the background works on the last one (without it, encoder and writer
        # took turns at 1M, and ingest fell from about 11.5k to 9.6k vectors/s).
        return backlog == 0 or backlog + items <= TAIL_LIMIT + SMALL_WRITE

    def submit(self, op: WriteOp, only_if_room: bool = False):
        """Queues a write for the writer; its future. only_if_room: None instead while has_room_for says it
        should wait (checked and queued at once: calls waiting side by side must not all pass one check)."""
        if self.writer is None or self.closed:
            raise Cancelled(f"collection {self.name!r} is closing; nothing of this write was kept")
        with self._admission:
            if only_if_room and not self.has_room_for(op.size()):
                return None
            return self.writer.submit(op)

    def _apply(self, ops: list[WriteOp]) -> None:
        with self.write_mutex:
            ops = self._admissible(ops)
            if not ops:
                return
            try:
                plan = self._plan(ops)
            except IndexServiceError as err:
                for op in ops:
                    op.future.set_exception(err)
                return
            try:
                self._commit(plan)
            except Superseded:
                return
            except BaseException as err:
                self.rows.give_back(plan.new_rows)
                for op in plan.ops:
                    op.future.set_exception(err)
                if not isinstance(err, IndexServiceError):
                    raise
                return
            try:
                self._publish(plan)
            except BaseException:
                self.recover("publishing a committed write failed")
                self._settle(plan)

    def _still_wanted(self, plan: "Plan") -> bool:
        """Checked once more right before the commit point (the vectors are written by now, which gives a
        cancellation time to arrive): if a caller left meanwhile, the group is planned again without it."""
        if not any(op.expired() for op in plan.ops):
            return True
        self.rows.give_back(plan.new_rows)
        plan.new_rows = plan.new_rows[:0]  # given back once: a failure further on must not free them again
        kept = self._admissible(plan.ops)
        if kept:
            self._apply(kept)
        return False

    def _admissible(self, ops: list[WriteOp]) -> list[WriteOp]:
        """Drops ops whose caller is gone or out of time, and upserts of another model (a group's first
        upsert may fix the model of a new collection; the others must agree with it)."""
        kept, fingerprint, dimension = [], self.fingerprint, self.dimension
        for op in ops:
            if op.abandoned.is_set():
                op.future.set_exception(Cancelled("the call ended before its write committed; nothing was kept"))
                continue
            if op.deadline is not None and time.monotonic() > op.deadline:
                op.future.set_exception(DeadlineExceeded("the deadline passed before the write committed; nothing "
                                                         "was kept"))
                continue
            if op.items is not None:
                try:
                    saved = (self.fingerprint, self.dimension)
                    self.fingerprint, self.dimension = fingerprint, dimension
                    self.check_model(op.fingerprint, op.items.raw.shape[1])
                except IndexServiceError as err:
                    op.future.set_exception(err)
                    continue
                finally:
                    self.fingerprint, self.dimension = saved
                fingerprint, dimension = op.fingerprint, op.items.raw.shape[1]
            kept.append(op)
        return kept

    def _plan(self, ops: list[WriteOp]) -> "Plan":
        plan = Plan()
        for op in ops:
            if op.items is not None:
                old = self.ids.lookup(op.items.high, op.items.low)
                if op.only_absent and (old >= 0).any():
                    op.skipped_ids += [item_id for item_id, row in zip(op.items.ids, old.tolist()) if row >= 0]
                    op.items, old = op.items.subset(old < 0), old[old < 0]
                plan.add_upsert(op, old)
            else:
                unique = list(dict.fromkeys(op.delete_ids))
                high, low = id_hashes(unique)
                plan.add_delete(op, unique, high, low, self.ids.lookup(high, low))
        ended = plan.ended_rows()
        records, _ = self.catalog.records(ended) if len(ended) else ({}, [])
        plan.keep_changed(records)
        plan.check_ended(records)
        if plan.new_count:
            if not self.fingerprint:
                first = next(op for op in plan.ops if op.items is not None)
                plan.fixes_model = (first.fingerprint, first.items.raw.shape[1])
                if self.vectors is None or self.vectors.dimension != plan.fixes_model[1]:
                    self._open_vectors(plan.fixes_model[1])
            if self.storage is not None:
                self.storage.check(plan.new_count * (self.vectors.row_bytes + 256))
            plan.new_rows = self.rows.take(plan.new_count)
        return plan

    def _commit(self, plan: "Plan") -> None:
        seq = self.catalog.seq + 1
        settings = None
        if plan.new_count:
            try:
                self.vectors.reserve(int(plan.new_rows.max()) + 1)
                for rows, raw, _ in plan.parts():
                    self.vectors.write(rows, raw)
            except OSError as err:
                raise StorageFull(f"no room for the vectors on the index's disk ({err.strerror}); nothing of "
                                  "this write was kept, searches go on") from None
            if plan.fixes_model:
                settings = {"fingerprint": plan.fixes_model[0], "dimension": str(plan.fixes_model[1])}
        if self.vectors is not None:
            self.vectors.sync(seq)
        if not self._still_wanted(plan):
            raise Superseded()
        plan.seq = seq
        records = NewRecords(plan.new_rows.tolist(), plan.new_ids(), plan.new_metadata(), plan.new_list("metadata_json"),
                             plan.new_crcs().tolist(), plan.new_list("record_bases")) if plan.new_count else None
        ended = [(row, plan.ended_metadata.get(row, {})) for row in plan.ended_rows().tolist()]
        try:
            self.catalog.commit(seq, records, ended, settings)
        except StorageFull:
            if plan.new_count or self.storage is None or not self.storage.free_reserve():
                raise
            self.catalog.commit(seq, records, ended, settings)  # a delete frees space: it may use the reserve
        if plan.fixes_model:
            self.fingerprint, self.dimension = plan.fixes_model

    def _publish(self, plan: "Plan") -> None:
        """After the commit: stage the new rows, then make the whole write visible at once."""
        ended = plan.ended_rows()
        if self.structure is None:  # deletes in a collection never written: nothing to do
            return self._settle(plan)
        staged = [self.structure.stage(rows, unit, self.lock.exclusive) for rows, _, unit in plan.parts()] or \
            [(np.zeros(0, np.int64), None)]
        grown = self._grown_ids(plan.new_count)
        with self.lock.exclusive():
            freed = self.structure.freed_at_once(ended)
            self.structure.publish(staged[0], ended)
            for more in staged[1:]:
                self.structure.publish(more, np.zeros(0, np.int64))
            if grown is not None:
                self.ids = grown
            if plan.new_count:
                self.ids.put(plan.new_high(), plan.new_low(), plan.new_rows)
            high, low = plan.deleted_hashes()
            if len(high):
                self.ids.remove(high, low)
            self.damaged -= set(ended.tolist())
            self.generation += 1
            self._live_rows = None
        self.rows.give_back(freed)
        if plan.new_count and self.structure.drains_tail():
            self.tail_grew.set()
        self.note_changes(plan.new_count + len(ended))
        self._settle(plan)

    def _grown_ids(self, more: int) -> IdTable | None:
        """Under the write mutex: the id table to swap in before `more` new ids go in, or None to keep this one.
        A bigger one is built aside once this one passes GROW_AHEAD_LOAD, and taken when it is ready, or
        (waiting for it) once this one is full."""
        ids, growth = self.ids, self._ids_growth
        full = not ids.has_room(more)
        if growth is not None and (growth.done() or full):
            self._ids_growth = None
            table = growth.finish()
            return table.grown_for(more) or table
        if full:
            return ids.grown_for(more)
        if growth is None and not ids.has_room(more, GROW_AHEAD_LOAD):
            self._ids_growth = Growth(ids)
        return None

    def _settle(self, plan: "Plan") -> None:
        for op, result in plan.results(self.count):
            op.future.set_result(result)

    def recover(self, why: str) -> None:
        """After a failure past the commit point, memory may disagree with the store: reload it from the store
        (under the write mutex and the exclusive lock; searches wait meanwhile)."""
        log.exception("collection %r: %s; reloading it from the store", self.name, why)
        with self.write_mutex:
            with self.lock.exclusive():
                self.recovering = True
            self.readers.wait_all_back_before(self.readers.mark())  # the reload frees every unused row at once
            try:
                if self._ids_growth is not None:
                    self.ids.changes, self._ids_growth = None, None
                load_memory(self)
                self._filter_cache.clear()
            finally:
                self.recovering = False

    def _check_readable(self) -> None:
        if self.recovering:
            raise NotReady(f"collection {self.name!r} is reloading from its store after an internal error; retry")

    # Reading.

    def live_rows(self) -> np.ndarray:
        """Sorted rows of the live, undamaged items (the caller holds the shared lock)."""
        if self._live_rows is None:
            rows = np.sort(self.ids.entries()[2])
            if self.damaged:
                rows = np.setdiff1d(rows, np.fromiter(self.damaged, np.int64), assume_unique=True)
            self._live_rows = rows
        return self._live_rows

    def allowed_rows(self, where: flt.Filter) -> np.ndarray:
        """Sorted live rows passing a filter (the caller holds the shared lock)."""
        unknown = sorted(flt.keys(where) - set(self.catalog.key_counts))
        if unknown:
            held = ", ".join(sorted(self.catalog.key_counts)[:20]) or "none"
            raise InvalidArgument(f"filter key {unknown[0]!r} is held by no item of collection {self.name!r} "
                                  f"(keys held: {held})")
        key = (self.generation, where)
        if key not in self._filter_cache:
            if len(self._filter_cache) > 16:
                self._filter_cache.clear()
            self._filter_cache[key] = np.intersect1d(self._evaluate(where), self.live_rows(), assume_unique=True)
        return self._filter_cache[key]

    def _evaluate(self, node: flt.Filter) -> np.ndarray:
        if isinstance(node, (flt.Equals, flt.InRange)):
            return self.catalog.rows_where(node)
        if isinstance(node, flt.Not):
            return np.setdiff1d(self.live_rows(), self._evaluate(node.part), assume_unique=True)
        parts = [self._evaluate(part) for part in node.parts]
        combine = np.intersect1d if isinstance(node, flt.All) else union
        result = parts[0]
        for part in parts[1:]:
            result = combine(result, part)
        return result

    def quick_search(self, n_queries: int, params: dict[str, int] | None = None) -> bool:
        """True when a plain search (no filter, not exact) of `n_queries` reads no file and at most
        QUICK_SEARCH_FLOATS: cheap enough to run where blocking must stay short."""
        structure = self.structure
        if structure is None or self.damaged:
            return False
        try:
            effort = params_with(self.params, params) if params else self.params
        except BadParams:
            return False
        floats = structure.memory_search_floats(n_queries, effort)
        return floats is not None and floats <= QUICK_SEARCH_FLOATS

    def search(self, fingerprint: str, queries: np.ndarray, k: int, where: flt.Filter | None,
               exact: bool = False, params: dict[str, int] | None = None, wait: bool = True) -> list[list[Hit]]:
        """`params`: search-time parameters for this call instead of the collection's (checked against their
        ranges by the caller; here against the collection's other parameters). wait=False: raises
        locks.Busy instead of waiting for a writer.

        What a search reads from the vector file (ivfpq's tail and re-rank, exact scans of kinds that keep no
        vectors in memory) it reads after letting go of the lock, so that a long scan does not hold writes
        back: it holds a ticket instead, and rows freed meanwhile are not reused until it is done."""
        try:
            effort = params_with(self.params, params) if params else self.params
        except BadParams as err:
            raise InvalidArgument(f"params: {err}") from None
        unit = unit_rows(queries)
        with self.lock.shared(wait):
            self._check_readable()
            self.check_model(fingerprint, queries.shape[1])
            if self.count == 0 or self.structure is None:
                return [[] for _ in queries]
            allowed = self.allowed_rows(where) if where is not None else None
            if allowed is not None and not len(allowed):
                return [[] for _ in queries]
            if self.damaged and allowed is None:
                allowed = self.live_rows()
            approximate = self.structure.approximate
            if exact and approximate or (approximate and allowed is not None and len(allowed) < EXACT_SCAN_BELOW):
                found = self._exact(unit, allowed if allowed is not None else self.live_rows(), k)
            else:
                found = self.structure.search(unit, k, allowed, effort)
            if not callable(found):
                return self._hits(*found)
            ticket = self.readers.take()
        try:
            return self._hits(*found(), locked=False)
        finally:
            self.readers.give_back(ticket)

    def _exact(self, unit: np.ndarray, rows: np.ndarray, k: int):
        if self.structure.unit_vectors(rows[:0]) is None:
            vectors = self.vectors
            return lambda: exact_from_file(vectors, rows, unit, k)
        best = empty_result(len(unit), k)
        for start in range(0, len(rows), EXACT_GATHER_ROWS):
            part = rows[start:start + EXACT_GATHER_ROWS]
            best = merge(best, search_matrix(unit, self.structure.unit_vectors(part), part, k), k)
        return best

    def _hits(self, scores: np.ndarray, rows: np.ndarray, locked: bool = True) -> list[list[Hit]]:
        """locked: the caller holds the shared lock; if not, it holds a ticket (the rows are not reused)."""
        scores = np.clip(scores, -1.0, 1.0)
        wanted = unique(rows[rows >= 0])
        records, damaged = self.catalog.records(wanted)
        if damaged and locked:
            self.quarantine(damaged)
        elif damaged:
            with self.lock.exclusive():  # quarantine changes what searches read
                self.quarantine(damaged)
        return [[Hit(records[row].id, float(score), records[row].metadata)
                 for score, row in zip(query_scores, query_rows) if row >= 0 and row in records]
                for query_scores, query_rows in zip(scores.tolist(), rows.tolist())]

    def quarantine(self, rows) -> None:
        """Rows whose stored bytes fail their checksum: never served again until rewritten."""
        fresh = set(int(r) for r in rows) - self.damaged
        if fresh:
            log.error("collection %r: %d stored item(s) fail their checksum (rows %s...): they are left out of "
                      "searches and Get reports them damaged; write them again to repair them", self.name,
                      len(fresh), sorted(fresh)[:5])
            self.damaged |= fresh
            self._live_rows = None
            self.generation += 1

    def get(self, item_ids: list[str], omit_vectors: bool = False) -> tuple[list[StoredItem], list[str]]:
        """The stored items of the ids held, and the ids held whose record or vector is damaged."""
        unique = list(dict.fromkeys(item_ids))
        high, low = id_hashes(unique)
        with self.lock.shared():
            self._check_readable()
            rows = self.ids.lookup(high, low)
            held = [(item_id, int(row)) for item_id, row in zip(unique, rows) if row >= 0]
            records, damaged_rows = self.catalog.records([row for _, row in held])
            bad = set(damaged_rows) | self.damaged
            if not omit_vectors and held:
                good_rows = np.asarray([row for _, row in held if row in records and row not in bad], np.int64)
                raw = self.vectors.read(good_rows)
                crcs = crc32_rows(raw)
                vectors_of = {}
                for row, vector, crc in zip(good_rows.tolist(), raw, crcs.tolist()):
                    if crc != records[row].vector_crc:
                        bad.add(row)
                    else:
                        vectors_of[row] = vector
        if bad - self.damaged:
            self.quarantine(bad - self.damaged)
        found, damaged_ids = [], []
        for item_id, row in held:
            record = records.get(row)
            if row in bad or record is None or record.id != item_id:
                damaged_ids.append(item_id)
            else:
                found.append(StoredItem(item_id, None if omit_vectors else vectors_of[row], record.metadata,
                                        record.seq))
        return found, damaged_ids

    def scroll(self, cursor: tuple[int, int] | None, limit: int, where: flt.Filter | None,
               with_vectors: bool) -> tuple[list[StoredItem], tuple[int, int] | None]:
        """The next `limit` items in the order of their id hash after `cursor`; the cursor of the last one
        returned (None at the end)."""
        with self.lock.shared():
            self._check_readable()
            high, low, rows = self.ids.entries()
            keep = ~np.isin(rows, np.fromiter(self.damaged, np.int64)) if self.damaged else np.ones(len(rows), bool)
            if where is not None:
                keep &= np.isin(rows, self.allowed_rows(where))
            if cursor is not None:
                after_high, after_low = np.uint64(cursor[0]), np.uint64(cursor[1])
                keep &= (high > after_high) | ((high == after_high) & (low > after_low))
            high, low, rows = high[keep], low[keep], rows[keep]
            if len(high) > limit:
                cut = np.partition(high, limit - 1)[limit - 1]
                pick = high <= cut
                high, low, rows = high[pick], low[pick], rows[pick]
            order = np.lexsort((low, high))[:limit]
            high, low, rows = high[order], low[order], rows[order]
            records, damaged = self.catalog.records(rows)
            raw = self.vectors.read(rows) if with_vectors and len(rows) else None
        items = []
        for i, row in enumerate(rows.tolist()):
            if row in records:
                items.append(StoredItem(records[row].id, raw[i] if raw is not None else None, records[row].metadata,
                                        records[row].seq))
        last = (int(high[-1]), int(low[-1])) if len(rows) == limit else None
        return items, last

    def count_where(self, where: flt.Filter | None) -> int:
        with self.lock.shared():
            self._check_readable()
            return self.count if where is None else len(self.allowed_rows(where))

    def stats(self) -> Stats:
        """Counts from one moment (under the shared lock); file sizes read after it, since each stat call gives
        up the GIL and a hold stretched by them (0.33 s once during a 1M load) held back the writers' publish."""
        with self.lock.shared():
            trained = bool(getattr(self.structure, "trained", False))
            held = len(self.structure.held_rows()) if self.structure is not None else 0
            counted = Stats(self.name, self.kind, self.params, self.fingerprint, self.dimension, self.count,
                            self.rows.unused() + held, 0, 0, 0, self.catalog.seq, self.snapshot_seq, trained,
                            len(self.damaged), self.structure.pending() if self.structure is not None else 0,
                            self.snapshotting.locked())
        try:
            return replace(counted, vector_bytes=self.vectors.disk_bytes if self.vectors else 0,
                           catalog_bytes=self.catalog.disk_bytes,
                           snapshot_bytes=snapshot.disk_bytes(self.folder / SNAPSHOTS))
        except OSError as err:  # the collection was dropped or closed meanwhile: its files are gone
            if err.errno not in (errno.EBADF, errno.ENOENT):
                raise
            return counted

    # Snapshots.

    def note_changes(self, count: int) -> None:
        with self._changes:
            self.changes_since_snapshot += count

    def snapshot_due(self) -> bool:
        """The policy: every snapshot_every changed items, or a quarter of the collection if that is more."""
        changes = self.changes_since_snapshot
        return bool(changes) and changes >= max(self.snapshot_every, self.count // 4)

    def take_snapshot(self, force: bool = False) -> bool:
        """Writes the in-memory state aside so a restart loads it. Writers wait only for the copy. `force`:
        even when no write came since the last one (the structure changed by itself: compaction)."""
        with self.snapshotting:  # one at a time (shutdown's and the background one may meet)
            return self._take_snapshot(force)

    def _take_snapshot(self, force: bool) -> bool:
        with self.write_mutex:
            if self.structure is None or (self.catalog.seq == self.snapshot_seq and not force):
                return False
            seq = self.catalog.seq
            if not self.structure.snapshots_state:  # rebuilt from the vector file at every start
                self.snapshot_seq = seq
                with self._changes:
                    self.changes_since_snapshot = 0
                self.rows.snapshot_taken()
                self.catalog.vacuum()
                return False
            with self.lock.shared():
                finish = self.structure.capture()
                ids = self.ids
                arrays = {"damaged": np.fromiter(sorted(self.damaged), np.int64)}
            released = self.rows.awaiting_snapshot.copy()
            changes = self.changes_since_snapshot
        started = time.monotonic()
        try:  # writes go on: what the structure copies now is as it was at `seq`
            arrays |= self._copy_ids(ids)
            structure_arrays, blobs, info = finish(self.lock.shared)
            arrays |= structure_arrays
            info.update(kind=self.kind, dimension=self.dimension, fingerprint=self.fingerprint, count=len(arrays))
            snapshot.write(self.folder / SNAPSHOTS, seq, info, arrays, blobs)
        except CaptureGivenUp as err:
            log.info("collection %r: snapshot %d given up (%s); the next round takes one", self.name, seq, err)
            return False
        with self.write_mutex:
            self.snapshot_seq, self.last_snapshot_unix = seq, time.time()
            self.note_changes(-changes)
            self.rows.give_back(released)
            self.rows.awaiting_snapshot = difference(self.rows.awaiting_snapshot, released)
            self.catalog.vacuum()
        log.info("collection %r: snapshot %d written in %.2f s", self.name, seq, time.monotonic() - started)
        return True

    def _copy_ids(self, table: IdTable) -> dict[str, np.ndarray]:
        """The id table, ID_COPY_SLOTS slots per hold of the shared lock while writes go on. A slot's entry may
        be newer than the snapshot's `seq`, but only for a row the catalog changed after `seq`, and restoring
        drops those entries and puts the live ones back from the catalog (loading.restore); a slot never goes
        back to empty, so probe chains stay whole. A table swapped for a bigger one gives the capture up."""
        copies = {name: np.empty_like(array) for name, array in table.state().items()}
        for start in range(0, table.capacity, ID_COPY_SLOTS):
            with self.lock.shared():
                if self.ids is not table:
                    raise CaptureGivenUp("the id table was swapped for a bigger one")
                for name, array in table.state().items():  # a slot's three fields in one hold: never torn
                    copies[name][start:start + ID_COPY_SLOTS] = array[start:start + ID_COPY_SLOTS]
        return {f"ids_{name}": copy for name, copy in copies.items()}


class Superseded(Exception):
    """A planned write group was replaced by a new plan without the callers that left."""


class Plan:
    """What a group of writes does: rows ended, rows taken, records stored; the answers once done."""

    def __init__(self):
        self.ops: list[WriteOp] = []
        self.upserts: list[tuple[WriteOp, np.ndarray]] = []  # (op, old rows: -1 where new)
        self.deletes: list[tuple[WriteOp, list[str], np.ndarray, np.ndarray, np.ndarray]] = []
        self.new_rows = np.zeros(0, dtype=np.int64)
        self.ended_metadata: dict[int, dict] = {}
        self.fixes_model: tuple[str, int] | None = None
        self.seq = 0  # set at the commit
        self.changed: dict[int, list[str]] = {}  # per conditional delete: ids held at another version

    @property
    def new_count(self) -> int:
        return sum(len(op.items) for op, _ in self.upserts)

    def add_upsert(self, op: WriteOp, old_rows: np.ndarray) -> None:
        self.ops.append(op)
        self.upserts.append((op, old_rows))

    def add_delete(self, op, ids, high, low, rows) -> None:
        self.ops.append(op)
        self.deletes.append((op, ids, high, low, rows))

    def ended_rows(self) -> np.ndarray:
        parts = [old[old >= 0] for _, old in self.upserts] + [rows[rows >= 0] for *_, rows in self.deletes]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def keep_changed(self, records: dict) -> None:
        """Conditional deletes leave in place the ids held at another version than the caller saw."""
        for number, (op, ids, _, _, rows) in enumerate(self.deletes):
            if op.versions is None:
                continue
            for position, (item_id, version) in enumerate(zip(ids, op.versions)):
                row = int(rows[position])
                if row >= 0 and row in records and records[row].seq != version:
                    rows[position] = -1
                    self.changed.setdefault(number, []).append(item_id)

    def check_ended(self, records: dict) -> None:
        """Keeps the metadata of what ends; an id whose hash points at another id's record is refused."""
        for row, record in records.items():
            self.ended_metadata[row] = record.metadata
        for op, old in self.upserts:
            for item_id, row in zip(op.items.ids, old.tolist()):
                if row >= 0 and row in records and records[row].id != item_id:
                    raise InvalidArgument(f"id {item_id!r} collides with the stored id {records[row].id!r} "
                                          "(same 128-bit hash); use another id")

    def _concat(self, attribute: str) -> np.ndarray:
        parts = [getattr(op.items, attribute) for op, _ in self.upserts]
        if len(parts) == 1:  # the usual case: one call, no copy
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0)

    def parts(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(new rows, raw vectors, unit vectors) of each upsert, without copying them into one array."""
        found, start = [], 0
        for op, _ in self.upserts:
            count = len(op.items)
            if count:  # an only_absent upsert whose ids were all held writes nothing
                found.append((self.new_rows[start:start + count], op.items.raw, op.items.unit))
            start += count
        return found

    def new_high(self) -> np.ndarray:
        return self._concat("high").astype(np.uint64)

    def new_low(self) -> np.ndarray:
        return self._concat("low").astype(np.uint64)

    def new_crcs(self) -> np.ndarray:
        return self._concat("crcs").astype(np.int64)

    def new_ids(self) -> list[str]:
        if len(self.upserts) == 1:
            return self.upserts[0][0].items.ids
        return [item_id for op, _ in self.upserts for item_id in op.items.ids]

    def new_metadata(self) -> list[dict]:
        return self.new_list("metadata")

    def new_list(self, attribute: str) -> list:
        if len(self.upserts) == 1:
            return getattr(self.upserts[0][0].items, attribute)
        return [value for op, _ in self.upserts for value in getattr(op.items, attribute)]

    def deleted_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        highs = [high[rows >= 0] for _, _, high, _, rows in self.deletes]
        lows = [low[rows >= 0] for _, _, _, low, rows in self.deletes]
        if not highs:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        return np.concatenate(highs), np.concatenate(lows)

    def results(self, count: int):
        for op, old in self.upserts:
            replaced = int((old >= 0).sum())
            yield op, WriteResult(inserted=len(op.items) - replaced, replaced=replaced, count=count,
                                  version=self.seq if len(op.items) else 0, skipped_ids=tuple(op.skipped_ids))
        for number, (op, ids, _, _, rows) in enumerate(self.deletes):
            deleted = int((rows >= 0).sum())
            changed = self.changed.get(number, [])
            removed = tuple(i for i, row in zip(ids, rows.tolist()) if row >= 0) if op.versions is not None else ()
            yield op, WriteResult(deleted=deleted, not_found=len(ids) - deleted - len(changed), count=count,
                                  deleted_ids=removed, changed_ids=tuple(changed))
