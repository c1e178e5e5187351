"""Which row holds each id: an open-addressing hash table in numpy arrays, off the Python heap.

Ids are known by a 128-bit BLAKE2b hash (two uint64 words), so the table never stores the strings: about 40
bytes per item at most loads, where a Python dict of strings costs over 130. Two ids with the same
128-bit hash are as unlikely as a collision of a content-addressed store's keys; the catalog still compares
the stored id whenever it reads a record, so a collision would be refused, never served as the other item.
Every operation works on a whole batch of ids at once.
"""

import hashlib
import threading
from typing import Sequence

import numpy as np

MAX_LOAD = 0.7
# Past this load a bigger table is built in a thread of its own while writes go on into this one (see
# Growth); it is swapped in once built, or when this one reaches MAX_LOAD. Close to MAX_LOAD, because the
# table grows at this load instead: at 0.5, a 10M collection sat in a 32M-slot table (768 MB) instead of a
# 16M-slot one, 0.36 GiB more resident; 0.05 of the capacity is still far more writes than a build lasts.
GROW_AHEAD_LOAD = 0.65
MIN_CAPACITY = 1024
# Marks a slot whose item was removed: probing goes on past it, an insert may take it.
TOMBSTONE = np.uint64(1)


def id_hashes(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The (high, low) uint64 words of each id's hash. High words are never 0 (0 marks a free slot)."""
    digests = b"".join(hashlib.blake2b(item_id.encode(), digest_size=16).digest() for item_id in ids)
    words = np.frombuffer(digests, dtype=">u8").reshape(len(ids), 2).astype(np.uint64)
    high = words[:, 0].copy()
    high[high == 0] = 1
    return high, words[:, 1].copy()


def hash_cursor(high: int, low: int) -> str:
    return f"{high:016x}{low:016x}"


def parse_cursor(cursor: str) -> tuple[int, int]:
    """The (high, low) words a scroll cursor names; ValueError when it is not one."""
    if len(cursor) != 32:
        raise ValueError("a cursor is 32 hex digits")
    return int(cursor[:16], 16), int(cursor[16:], 16)


class IdTable:
    """id hash -> row. `high == 0` marks a free slot (low 0: never used, low 1: a tombstone)."""

    def __init__(self, capacity: int = MIN_CAPACITY):
        capacity = max(MIN_CAPACITY, 1 << int(np.ceil(np.log2(capacity))))
        self.high = np.zeros(capacity, dtype=np.uint64)
        self.low = np.zeros(capacity, dtype=np.uint64)
        self.rows = np.full(capacity, -1, dtype=np.int64)
        self.count = 0  # live entries
        self.used = 0  # live entries and tombstones
        self.changes: list[tuple] | None = None  # puts and removes since a Growth began, while one runs

    @property
    def capacity(self) -> int:
        return len(self.high)

    @property
    def nbytes(self) -> int:
        return self.high.nbytes + self.low.nbytes + self.rows.nbytes

    def _home(self, low: np.ndarray) -> np.ndarray:
        return (low & np.uint64(self.capacity - 1)).astype(np.int64)

    def slots(self, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        """The slot of each hash, -1 where it is not held."""
        found = np.full(len(high), -1, dtype=np.int64)
        active = np.arange(len(high))
        position = self._home(low)
        mask = self.capacity - 1
        while active.size:
            slot_high, slot_low = self.high[position], self.low[position]
            hit = (slot_high == high[active]) & (slot_low == low[active])
            found[active[hit]] = position[hit]
            never_used = (slot_high == 0) & (slot_low == 0)
            going_on = ~(hit | never_used)
            active, position = active[going_on], (position[going_on] + 1) & mask
        return found

    def lookup(self, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        """The row of each hash, -1 where it is not held."""
        slots = self.slots(high, low)
        return np.where(slots >= 0, self.rows[np.maximum(slots, 0)], -1)

    def put(self, high: np.ndarray, low: np.ndarray, rows: np.ndarray) -> None:
        """Sets the row of each hash (distinct within the batch), inserting those not held."""
        if self.changes is not None:
            self.changes.append((high.copy(), low.copy(), rows.copy()))
        slots = self.slots(high, low)
        held = slots >= 0
        self.rows[slots[held]] = rows[held]
        new = ~held
        if new.any():
            self._reserve(int(new.sum()))
            self._insert(high[new], low[new], rows[new])

    def remove(self, high: np.ndarray, low: np.ndarray) -> int:
        """Forgets the hashes held; returns how many were."""
        if self.changes is not None:
            self.changes.append((high.copy(), low.copy(), None))
        slots = self.slots(high, low)
        slots = slots[slots >= 0]
        self.high[slots] = 0
        self.low[slots] = TOMBSTONE
        self.rows[slots] = -1
        self.count -= len(slots)
        return len(slots)

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(high, low, row) of every live entry, in slot order."""
        live = self.high != 0
        return self.high[live], self.low[live], self.rows[live]

    def has_room(self, more: int, load: float = MAX_LOAD) -> bool:
        """Whether `more` new entries keep the table at or under `load`."""
        return self.used + more <= load * self.capacity

    def grown_for(self, more: int) -> "IdTable | None":
        """A copy with room for `more` new entries if this table has not room for them; else None. Built
        aside, so the caller can swap it in under its lock instead of rebuilding under it."""
        if self.has_room(more):
            return None
        copy = IdTable.__new__(IdTable)
        copy.high, copy.low, copy.rows, copy.count, copy.used = self.high, self.low, self.rows, self.count, self.used
        copy.changes = None
        copy._reserve(more)
        return copy

    def _reserve(self, more: int) -> None:
        if self.has_room(more):
            return
        needed = (self.count + more) / MAX_LOAD
        self._rebuild(max(MIN_CAPACITY, 1 << int(np.ceil(np.log2(needed)))))

    def _rebuild(self, capacity: int) -> None:
        high, low, rows = self.entries()
        self.high = np.zeros(capacity, dtype=np.uint64)
        self.low = np.zeros(capacity, dtype=np.uint64)
        self.rows = np.full(capacity, -1, dtype=np.int64)
        self.count = self.used = 0
        self._fill_empty(high, low, rows)

    def _fill_empty(self, high: np.ndarray, low: np.ndarray, rows: np.ndarray) -> None:
        """Bulk insert into a table without tombstones: in order of home slot, each key lands at
        max(its home, the previous key's slot + 1), computed for all keys at once; the few that run past the
        end wrap around through the ordinary insert."""
        if not len(high):
            return
        home = self._home(low)
        order = np.argsort(home, kind="stable")
        home = home[order]
        occupied = np.flatnonzero(self.high != 0)
        if occupied.size:  # only fresh tables take the fast path
            self._insert(high, low, rows)
            return
        step = np.arange(len(home))
        position = np.maximum.accumulate(home - step) + step
        fits = position < self.capacity
        placed = order[fits]
        self.high[position[fits]] = high[placed]
        self.low[position[fits]] = low[placed]
        self.rows[position[fits]] = rows[placed]
        self.count += len(placed)
        self.used += len(placed)
        wrapped = order[~fits]
        if wrapped.size:
            self._insert(high[wrapped], low[wrapped], rows[wrapped])

    def _insert(self, high: np.ndarray, low: np.ndarray, rows: np.ndarray) -> None:
        """Places hashes known not to be held in the first free slot of their probe sequence."""
        pending = np.arange(len(high))
        position = self._home(low)
        mask = self.capacity - 1
        while pending.size:
            free = np.flatnonzero(self.high[position] == 0)
            _, first = np.unique(position[free], return_index=True)
            winners = free[first]
            slots = position[winners]
            self.used += int((self.low[slots] == 0).sum())  # a tombstone taken was already counted
            self.high[slots] = high[pending[winners]]
            self.low[slots] = low[pending[winners]]
            self.rows[slots] = rows[pending[winners]]
            self.count += len(winners)
            losing = np.ones(len(pending), dtype=bool)
            losing[winners] = False
            pending, position = pending[losing], (position[losing] + 1) & mask

    def state(self) -> dict[str, np.ndarray]:
        return {"high": self.high, "low": self.low, "rows": self.rows}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "IdTable":
        table = cls.__new__(cls)
        table.changes = None
        table.high = np.ascontiguousarray(state["high"], dtype=np.uint64)
        table.low = np.ascontiguousarray(state["low"], dtype=np.uint64)
        table.rows = np.ascontiguousarray(state["rows"], dtype=np.int64)
        if len(table.high) & (len(table.high) - 1) or not len(table.high) == len(table.low) == len(table.rows):
            raise ValueError("an id table's arrays must have one power-of-two length")
        table.count = int((table.high != 0).sum())
        table.used = table.count + int(((table.high == 0) & (table.low == TOMBSTONE)).sum())
        return table

    @classmethod
    def build(cls, high: np.ndarray, low: np.ndarray, rows: np.ndarray, capacity: int = 0) -> "IdTable":
        """A table holding these (distinct) hashes, built in bulk (with at least `capacity` slots)."""
        table = cls(max(capacity, int(len(high) / MAX_LOAD) + 1))
        table._fill_empty(np.asarray(high, np.uint64), np.asarray(low, np.uint64), np.asarray(rows, np.int64))
        return table


class Growth:
    """A table twice the size of `table`, built in a thread from a copy of its entries while writes go on into
    `table`, which records them; `finish` replays them onto the new one. A one-pass rebuild of the table at 10M
    items took the collection's writer over a second, and every write waited for it."""

    def __init__(self, table: IdTable):
        self._entries = table.entries()  # copies: consistent as of now
        self._capacity = 2 * table.capacity
        self._source = table
        self._built: IdTable | None = None
        table.changes = []
        self._thread = threading.Thread(target=self._build, name="id-table-growth", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        self._built = IdTable.build(*self._entries, capacity=self._capacity)
        self._entries = None

    def done(self) -> bool:
        return not self._thread.is_alive()

    def finish(self) -> IdTable:
        """The bigger table holding what `table` holds now (waits for the build if it is still running)."""
        self._thread.join()
        if self._built is None:
            raise RuntimeError("building the larger id table failed")
        table, changes = self._built, self._source.changes
        self._source.changes = None
        for high, low, rows in changes:
            if rows is None:
                table.remove(high, low)
            else:
                table.put(high, low, rows)
        return table
