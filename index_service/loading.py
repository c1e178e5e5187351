"""Bringing a collection's memory up to date at start: the newest snapshot (every checksum verified) plus
what the catalog committed after it; or, without a usable snapshot, everything from the store, verifying
every vector's checksum on the way (and writing a fresh snapshot at once)."""

import logging
import threading

import numpy as np

from index_service.arrays import union
from index_service import snapshot
from index_service.errors import CatalogDamaged
from index_service.id_table import TOMBSTONE, IdTable, id_hashes
from index_service.kinds import STRUCTURES
from index_service.exact import unit_rows
from index_service.rows import RowAllocator
from index_service.vector_file import crc32_rows

log = logging.getLogger(__name__)
ADD_CHUNK = 4096  # rows between checks for a stop signal


class LoadAborted(Exception):
    """A stop signal came while loading."""


def check_not_stopping(stopping: threading.Event | None) -> None:
    if stopping is not None and stopping.is_set():
        raise LoadAborted("stopped while loading")


def check_catalog_complete(collection, durable_seq: int) -> None:
    """The vector file records the last write made durable (just before its catalog commit): a catalog that
    ends earlier than that lost committed writes."""
    catalog = collection.catalog
    if durable_seq > catalog.seq + 1:
        raise CatalogDamaged(
            f"collection {collection.name!r}: its vector file records write {durable_seq} but the catalog ends at "
            f"write {catalog.seq}: committed writes are missing (was {catalog.path.name}-wal deleted or the "
            "catalog restored from an older copy?). Restore the catalog's -wal file, or move the collection's "
            "folder aside and import a backup (imgsim export/import).")


def load_memory(collection, stopping: threading.Event | None = None) -> None:
    catalog = collection.catalog
    structure_kind = STRUCTURES[collection.kind]
    found = snapshot.newest(collection.folder / "snapshots") if structure_kind.snapshots_state else None
    if found and found[0] > catalog.seq:
        raise CatalogDamaged(f"collection {collection.name!r}: snapshot {found[0]} is newer than the catalog's last "
                             f"write {catalog.seq}: the catalog lost committed writes")
    if found:
        try:
            info, arrays, blobs = snapshot.read(found[1], mapped=frozenset({"lists_codes"}))
            restore(collection, found[0], info, arrays, blobs, stopping)
            finish(collection)
            return
        except snapshot.SnapshotDamaged as err:
            log.error("collection %r: SNAPSHOT DAMAGED, %s; rebuilding from the store (the vectors and the catalog "
                      "are intact; a fresh snapshot replaces it)", collection.name, err)
    rebuild(collection, stopping)
    finish(collection)
    if found or (structure_kind.snapshots_state and collection.count):
        collection.take_snapshot()


def add_rows(collection, structure, rows: np.ndarray, crcs: np.ndarray, stopping=None) -> list[int]:
    """Reads, verifies and adds live rows (sorted) to a structure nothing searches yet; returns the damaged."""
    damaged = []
    for part, raw in collection.vectors.scan(rows, ADD_CHUNK):
        check_not_stopping(stopping)
        expected = crcs[np.searchsorted(rows, part)]
        good = crc32_rows(raw) == expected
        damaged += part[~good].tolist()
        if good.any():
            structure.rebuild(part[good], unit_rows(raw[good]))
    return damaged


def rebuild(collection, stopping) -> None:
    structure = STRUCTURES[collection.kind](collection.dimension, collection.params, collection.vectors)
    all_rows, highs, lows, damaged = [], [], [], []
    for rows, item_ids, crcs in collection.catalog.live_rows():
        check_not_stopping(stopping)
        damaged += add_rows(collection, structure, rows, crcs, stopping)
        high, low = id_hashes(item_ids)
        all_rows.append(rows)
        highs.append(high)
        lows.append(low)
    collection.structure = structure
    collection.ids = IdTable.build(np.concatenate(highs), np.concatenate(lows), np.concatenate(all_rows)) \
        if all_rows else IdTable()
    collection.damaged = set(damaged)
    collection.snapshot_seq = 0 if structure.snapshots_state else collection.catalog.seq
    collection.scrub_needed = False


def restore(collection, seq: int, info: dict, arrays: dict, blobs: dict, stopping) -> None:
    """The snapshot taken at `seq`, then every row the catalog changed after it undone and the live ones
    among them added again."""
    kind = STRUCTURES[collection.kind]
    structure = kind.restore(collection.dimension, collection.params, collection.vectors, arrays, blobs, info)
    ids = IdTable.from_state({name: arrays[f"ids_{name}"] for name in ("high", "low", "rows")})
    changed, live = collection.catalog.changed_after(seq)
    if len(changed):
        stale = np.flatnonzero(np.isin(ids.rows, changed))
        ids.high[stale], ids.low[stale], ids.rows[stale] = 0, TOMBSTONE, -1
        ids.count -= len(stale)
        structure.publish((np.zeros(0, np.int64), None), changed)
    damaged = set(arrays["damaged"].tolist()) - set(changed.tolist())
    if live:
        check_not_stopping(stopping)
        rows = np.asarray([row for row, _, _ in live], dtype=np.int64)
        crcs = np.asarray([crc for _, _, crc in live], dtype=np.int64)
        damaged |= set(add_rows(collection, structure, rows, crcs, stopping))
        high, low = id_hashes([item_id for _, item_id, _ in live])
        ids.put(high, low, rows)
    collection.structure, collection.ids, collection.damaged = structure, ids, damaged
    collection.snapshot_seq = seq
    collection.scrub_needed = True  # rows loaded from the snapshot were not read: verify them in the background


def finish(collection) -> None:
    """Which rows are free, now that the live and held ones are known."""
    end = collection.catalog.max_row() + 1
    used = union(collection.ids.entries()[2], collection.structure.held_rows())
    end = max(end, int(used.max()) + 1 if len(used) else 0)
    collection.rows = RowAllocator(end, np.setdiff1d(np.arange(end, dtype=np.int64), used, assume_unique=True),
                                   collection.readers)
    collection.generation += 1
    collection._live_rows = None
