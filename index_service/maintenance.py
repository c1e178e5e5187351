"""A collection's background work: verifying checksums after a load from a snapshot, training ivfpq lists and
encoding rows into them, compaction and snapshots. Nothing here holds the exclusive lock for more than a short step, so searches go
on throughout; writes wait only while a step needs the write mutex (documented per step).

Policy snapshots have a thread of their own: a bulk load waits for the tail to be taken in, and at 10M a
snapshot takes seconds to copy, write and hash; on the encoder's thread the load stood still meanwhile.
Both may run at once: a capture is taken under the write mutex, and the encoder only appends past it."""

import ctypes
import ctypes.util
import logging
import threading
import time

import numpy as np

from index_service.arrays import difference, union
from index_service.catalog import NewRecords
from index_service.id_table import id_hashes
from index_service.exact import unit_rows
from index_service.kinds.ivfpq import MAX_TRAINING_SAMPLE, training_size
from index_service.vector_file import crc32_rows

log = logging.getLogger(__name__)
COMPACT_MIN_ROWS = 1024
RELOCATE_BATCH = 16384
TAIL_STEP_S = 5.0  # tail work per maintenance step, between chances for compaction
TRAIN_RETRY_S = 300.0


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to ask
        return None


MALLOC_TRIM = _malloc_trim()


def give_back_free_memory() -> None:
    """Returns the heap's free pages to the system. FAISS grows each inverted list by reallocating it, and
    glibc keeps what is freed that way resident in its arenas: at 1M x 768 ivfpq, 150 of 680 MB after a
    load and a snapshot (measured here); a few milliseconds after each background step."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


class Maintenance:
    def __init__(self, collection, compact_fraction: float = 0.2, interval_s: float = 0.5):
        self.collection = collection
        self.compact_fraction = compact_fraction
        self.interval_s = interval_s
        self.stopping = threading.Event()
        self.compacting = threading.Lock()
        self.train_failed_at = 0.0
        self.more_to_do = False  # the last step stopped with work left: the next one starts at once
        self._thread = threading.Thread(target=self._run, name=f"maintenance-{collection.name}", daemon=True)
        self._snapshots = threading.Thread(target=self._snapshot_when_due, name=f"snapshots-{collection.name}",
                                           daemon=True)
        self._thread.start()
        self._snapshots.start()

    def _run(self) -> None:
        give_back_free_memory()  # after the load
        woken = self.collection.tail_grew
        while not self.stopping.is_set():
            if not self.more_to_do:
                woken.wait(self.interval_s)  # a write that leaves rows for the background wakes it at once
            woken.clear()
            if self.stopping.is_set():
                return
            self.more_to_do = False
            worked = True
            try:
                worked = self.step()
            except Exception:  # the store holds everything; the next round tries again
                log.exception("collection %r: background maintenance failed", self.collection.name)
                self.stopping.wait(5.0)
            if worked:
                give_back_free_memory()

    def _snapshot_when_due(self) -> None:
        c = self.collection
        while not self.stopping.wait(self.interval_s):
            try:
                if c.structure is not None and not c.closed and c.snapshot_due() and c.take_snapshot():
                    give_back_free_memory()
            except Exception:  # the store holds everything; the next round tries again
                log.exception("collection %r: background snapshot failed", c.name)
                self.stopping.wait(5.0)

    def step(self) -> bool:
        """Does what is due; True if something was."""
        c = self.collection
        if c.structure is None or c.closed:
            return False
        worked = False
        for needed, work in ((lambda: c.scrub_needed, self.scrub), (self.needs_training, self.train),
                             (self.needs_draining, self.drain), (self.needs_compaction, self.compact)):
            if needed():  # in turn: a training makes rows to drain, in the same step
                work()
                worked = True
        return worked

    def drain(self) -> None:
        self.more_to_do = self.drain_tail()

    def stop(self, timeout_s: float = 30.0) -> None:
        self.stopping.set()
        self.collection.tail_grew.set()
        deadline = time.monotonic() + timeout_s
        for thread in (self._thread, self._snapshots):
            thread.join(max(0.0, deadline - time.monotonic()))

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
        """Trains lists on a sample of the live vectors (no lock held) and installs them empty: from then on
        the encoder moves rows from the exact tail into them."""
        c = self.collection
        structure = c.structure
        started = time.monotonic()
        c.training = True  # large writes wait past TAIL_LIMIT (see has_room_for)
        try:
            with c.lock.shared():
                live = c.live_rows().copy()
            sample_rows = np.sort(np.random.default_rng(0).choice(live, min(len(live), MAX_TRAINING_SAMPLE),
                                                                  replace=False))
            try:
                trained = structure.train(self._unit(sample_rows))
            except RuntimeError as err:
                self.train_failed_at = time.monotonic()
                log.error("collection %r: ivfpq training failed (%s); searches stay exact, retrying in %.0f s",
                          c.name, err, TRAIN_RETRY_S)
                return
            with c.lock.exclusive():
                structure.install(trained)
        finally:
            c.training = False
        log.info("collection %r: ivfpq trained on %d vectors in %.1f s; %d rows wait for their codes",
                 c.name, len(sample_rows), time.monotonic() - started, structure.pending())

    def _unit(self, rows: np.ndarray) -> np.ndarray:
        """The unit vectors of sorted rows, each chunk read scaled straight into its place (a tail chunk is
        about 50 MB: no extra copies of it)."""
        out = np.empty((len(rows), self.collection.dimension), dtype=np.float32)
        at = 0
        for part, raw in self.collection.vectors.scan(rows):
            unit_rows(raw, out=out[at:at + len(part)])
            at += len(part)
        return out

    # The tail (ivfpq codes, hnsw graph insertion).

    def needs_draining(self) -> bool:
        structure = self.collection.structure
        return structure is not None and structure.drains_tail() and structure.pending() > 0

    def drain_tail(self) -> bool:
        """Takes tail rows into the structure, tail_chunk at a time, for about TAIL_STEP_S; True if some is
        left (the next step then starts at once, after compaction had its turn)."""
        c = self.collection
        structure = c.structure
        started = time.monotonic()
        with self.compacting:  # rows must not move meanwhile
            while time.monotonic() - started < TAIL_STEP_S:
                if self.stopping.is_set() or c.closed:
                    return False
                with c.lock.exclusive():
                    rows = structure.begin_tail(structure.tail_chunk)
                try:
                    added = structure.absorb_tail(structure.prepare_tail(rows, self._unit(rows)), c.lock.exclusive)
                finally:
                    structure.end_tail()
                c.note_changes(added)
                if not structure.pending():
                    log.info("collection %r: the %s structure holds every live row", c.name, c.kind)
                    return False
            return True

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
            c.rows.release_after_snapshot(difference(released, c.live_rows()))
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
                c.rows.reuse_what_readers_left()
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
                freed = c.structure.freed_at_once(old)
                c.structure.relocate(old, new, staged)
                c.ids.put(high, low, new)
                c.generation += 1
                c._live_rows = None
        except Exception:
            c.recover("moving committed rows failed")
            return
        c.rows.give_back(freed)
        c.note_changes(len(old))

    def _truncate(self) -> None:
        c = self.collection
        with c.write_mutex:
            with c.lock.shared():
                used = union(union(c.live_rows(), c.structure.held_rows()),
                                  np.fromiter(c.damaged, np.int64))
            end = int(used.max()) + 1 if len(used) else 0
            if end >= c.rows.end:
                return
            # A search that began before may still read rows past `end` (live then, moved since); later ones
            # cannot, and writes wait meanwhile (the write mutex), so nothing past `end` comes back.
            c.readers.wait_all_back_before(c.readers.mark())
            c.catalog.drop_rows(c.catalog.rows_beyond(end))
            with c.lock.exclusive():
                c.vectors.shrink(end)
                c.structure.shrink(end)
                c.rows.shrink_to(end)
