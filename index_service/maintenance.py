"""A collection's background work: verifying checksums after a load from a snapshot, training ivfpq lists,
compaction and snapshots. Nothing here holds the exclusive lock for more than a short step, so searches go
on throughout; writes wait only while a step needs the write mutex (documented per step)."""

import logging
import threading
import time

import faiss
import numpy as np

from index_service.catalog import NewRecords
from index_service.id_table import id_hashes
from index_service.exact import unit_rows
from index_service.kinds.ivfpq import MAX_TRAINING_SAMPLE, append_lists, training_size
from index_service.vector_file import crc32_rows

log = logging.getLogger(__name__)
COMPACT_MIN_ROWS = 1024
RELOCATE_BATCH = 16384
ENCODE_CHUNK = 16384
TRAIN_RETRY_S = 300.0


class ChangeLog:
    """Rows written or ended while an ivfpq training run encodes the collection in the background."""

    def __init__(self):
        self.parts: list[np.ndarray] = []

    def changed(self, new_rows: np.ndarray, ended: np.ndarray) -> None:
        self.parts += [np.asarray(new_rows, np.int64), np.asarray(ended, np.int64)]

    def rows(self) -> np.ndarray:
        return np.unique(np.concatenate(self.parts)) if self.parts else np.zeros(0, np.int64)


class Maintenance:
    def __init__(self, collection, compact_fraction: float = 0.2, interval_s: float = 0.5):
        self.collection = collection
        self.compact_fraction = compact_fraction
        self.interval_s = interval_s
        self.stopping = threading.Event()
        self.compacting = threading.Lock()
        self.train_failed_at = 0.0
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=f"maintenance-{collection.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self.busy = True
            try:
                self.step()
            except Exception:  # the store holds everything; the next round tries again
                log.exception("collection %r: background maintenance failed", self.collection.name)
                self.stopping.wait(5.0)
            finally:
                self.busy = False

    def step(self) -> None:
        c = self.collection
        if c.structure is None or c.closed:
            return
        if c.scrub_needed:
            self.scrub()
        if self.needs_training():
            self.train()
        if self.needs_compaction():
            self.compact()
        if c.changes_since_snapshot and c.changes_since_snapshot >= max(c.snapshot_every, c.count // 4):
            c.take_snapshot()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stopping.set()
        self._thread.join(timeout_s)

    def idle(self) -> bool:
        """Nothing due: no compaction or training pending (for tests and operators)."""
        return not (self.busy or self.needs_compaction() or self.needs_training())

    # Checksums.

    def scrub(self) -> None:
        """Reads every live vector and compares it with its checksum; damaged ones are quarantined."""
        c = self.collection
        with c.lock.shared():
            rows = c.live_rows().copy()
        damaged = []
        for start in range(0, len(rows), 65536):
            if self.stopping.is_set():
                return
            part = rows[start:start + 65536]
            crcs = c.catalog.vector_crcs(part)
            for chunk, raw in c.vectors.scan(part):
                actual = crc32_rows(raw)
                damaged += [int(r) for r, crc in zip(chunk.tolist(), actual.tolist()) if crcs.get(r) != crc]
        if damaged:
            c.quarantine(damaged)
        c.scrub_needed = False
        log.info("collection %r: verified %d stored vectors, %d damaged", c.name, len(rows), len(damaged))

    # ivfpq training.

    def needs_training(self) -> bool:
        c = self.collection
        return (c.kind == "ivfpq" and c.structure is not None and not c.structure.trained
                and c.count >= training_size(c.params) and time.monotonic() - self.train_failed_at > TRAIN_RETRY_S)

    def train(self) -> None:
        c = self.collection
        structure = c.structure
        started = time.monotonic()
        with c.lock.shared():
            live = c.live_rows().copy()
        sample_rows = np.sort(np.random.default_rng(0).choice(live, min(len(live), MAX_TRAINING_SAMPLE),
                                                              replace=False))
        try:
            lists = structure.train(self._unit(sample_rows))
        except RuntimeError as err:
            self.train_failed_at = time.monotonic()
            log.error("collection %r: ivfpq training failed (%s); searches stay exact, retrying in %.0f s",
                      c.name, err, TRAIN_RETRY_S)
            return
        with c.write_mutex:
            c.training = ChangeLog()
            with c.lock.shared():
                todo = c.live_rows().copy()
        encoded = np.zeros(0, np.int64)
        while True:  # encode without blocking writers, until what changed meanwhile is small
            self._encode_into(lists, todo)
            encoded = np.union1d(encoded, todo)
            with c.lock.shared():
                todo = np.union1d(np.setdiff1d(c.live_rows(), encoded), np.intersect1d(c.training.rows(), c.live_rows()))
            if len(todo) < ENCODE_CHUNK or self.stopping.is_set():
                break
        with c.write_mutex:  # writers wait while the last changes are encoded
            if self.stopping.is_set() or c.closed:
                c.training = None
                return
            changed = c.training.rows()
            stale = np.intersect1d(encoded, changed)
            if len(stale):
                lists.remove_ids(faiss.IDSelectorBatch(stale))
            with c.lock.shared():
                live = c.live_rows().copy()
            todo = np.union1d(np.setdiff1d(live, encoded), np.intersect1d(changed, live))
            self._encode_into(lists, todo)
            with c.lock.exclusive():
                structure.install(lists, live)
                c.training = None
                c.generation += 1
        log.info("collection %r: ivfpq trained on %d vectors and %d encoded in %.1f s; searches use it now",
                 c.name, len(sample_rows), len(live), time.monotonic() - started)
        c.take_snapshot()

    def _unit(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([unit_rows(raw) for _, raw in self.collection.vectors.scan(rows)]) if len(rows) \
            else np.zeros((0, self.collection.dimension), np.float32)

    def _encode_into(self, lists, rows: np.ndarray) -> None:
        template = faiss.clone_index(lists)
        template.reset()
        for start in range(0, len(rows), ENCODE_CHUNK):
            part = rows[start:start + ENCODE_CHUNK]
            delta = faiss.clone_index(template)
            delta.add_with_ids(self._unit(part), part)
            append_lists(lists, delta)

    # Compaction.

    def needs_compaction(self) -> bool:
        c = self.collection
        if c.structure is None or c.closed:
            return False
        if c.structure.needs_purge(c.count):
            return True
        unused = c.rows.unused() + len(c.structure.held_rows())
        return unused > max(COMPACT_MIN_ROWS, self.compact_fraction * c.rows.end)

    def compact(self) -> int:
        """Frees what ended items left behind and gives the space back: purge the structure, move the last
        live rows into the holes, truncate the vector file. Returns the rows reclaimed."""
        c = self.collection
        with self.compacting:
            if c.structure is None:  # never written: nothing to reclaim
                return 0
            before = c.rows.end
            self._purge()
            self._relocate()
            self._purge()
            self._truncate()
            c.take_snapshot()
            reclaimed = before - c.rows.end
            log.info("collection %r: compacted, %d rows reclaimed (%d live)", c.name, reclaimed, c.count)
            return reclaimed

    def _purge(self) -> None:
        c = self.collection
        with c.write_mutex:  # hnsw rebuilds its graph here: writes wait for it
            released = c.structure.purge(c.lock.exclusive)
            if not len(released):
                return
            c.rows.release_after_snapshot(np.setdiff1d(released, c.live_rows()))
        c.take_snapshot(force=True)  # the old snapshot still refers to the released rows

    def _relocate(self) -> None:
        c = self.collection
        while not self.stopping.is_set():
            with c.write_mutex:
                with c.lock.shared():
                    live = c.live_rows()
                    held = c.structure.held_rows()
                    used = len(live) + len(held) + len(c.damaged)
                    movers = live[live >= used][::-1]
                holes = c.rows.free[c.rows.free < used]
                batch = min(len(movers), len(holes), RELOCATE_BATCH)
                if batch == 0:
                    return
                self._move(movers[:batch], holes[:batch])

    def _move(self, old: np.ndarray, new: np.ndarray) -> None:
        """Under the write mutex: the items at `old` rows move to free `new` rows, committed like a write."""
        c = self.collection
        records, damaged = c.catalog.records(old)
        raw = c.vectors.read(old)
        crcs = crc32_rows(raw)
        good = np.asarray([row in records and records[row].vector_crc == crc
                           for row, crc in zip(old.tolist(), crcs.tolist())], dtype=bool)
        if not good.all():
            c.quarantine(old[~good])
        old, new, raw, crcs = old[good], new[good], raw[good], crcs[good]
        if not len(old):
            return
        c.rows.free = np.setdiff1d(c.rows.free, new, assume_unique=True)
        seq = c.catalog.seq + 1
        c.vectors.write(new, raw)
        c.vectors.sync(seq)
        moved = [records[row] for row in old.tolist()]
        c.catalog.commit(seq, NewRecords.of(new.tolist(), [r.id for r in moved], [r.metadata for r in moved],
                                            crcs.tolist()), [(r.row, r.metadata) for r in moved])
        high, low = id_hashes([r.id for r in moved])
        try:
            staged = c.structure.stage_relocation(new, unit_rows(raw))
            with c.lock.exclusive():
                c.structure.relocate(old, new, staged)
                c.ids.put(high, low, new)
                c.generation += 1
                c._live_rows = None
        except Exception:
            c.recover("moving committed rows failed")
            return
        if not c.structure.keeps_ended():
            c.rows.give_back(old)
        c.changes_since_snapshot += len(old)

    def _truncate(self) -> None:
        c = self.collection
        with c.write_mutex:
            with c.lock.shared():
                used = np.union1d(np.union1d(c.live_rows(), c.structure.held_rows()),
                                  np.fromiter(c.damaged, np.int64))
            end = int(used.max()) + 1 if len(used) else 0
            if end >= c.rows.end:
                return
            c.catalog.drop_rows(c.catalog.rows_beyond(end))
            with c.lock.exclusive():
                c.vectors.shrink(end)
                c.structure.shrink(end)
                c.rows.shrink_to(end)
