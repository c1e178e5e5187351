"""Locks: a readers-writer lock over a collection's in-memory state, and exclusive ownership of a data
directory by one process."""

import fcntl
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path


class Busy(Exception):
    """The lock was asked for without waiting and a writer holds it or waits for it."""


class ReadWriteLock:
    """Many readers or one writer; a waiting writer stops new readers, so writes are not starved. Writers
    hold it only for short, bounded steps (publishing a write, a chunk of graph insertion)."""

    def __init__(self):
        self._changed = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self, wait: bool = True):
        """wait=False: raises Busy instead of waiting (for callers that must not block, the event loop)."""
        with self._changed:
            if not wait and (self._writing or self._writers_waiting):
                raise Busy
            while self._writing or self._writers_waiting:
                self._changed.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                if not self._readers:
                    self._changed.notify_all()

    @contextmanager
    def exclusive(self):
        with self._changed:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._changed.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._changed:
                self._writing = False
                self._changed.notify_all()


class ReadTickets:
    """Searches reading the vector file after they let go of the shared lock, each holding a ticket taken
    while it still held the lock. A row freed meanwhile may still be read by a search holding an older ticket:
    it is reused, and the file cut below it, only once those searches are done (see RowAllocator)."""

    def __init__(self):
        self._changed = threading.Condition()
        self._next = 0
        self._held: dict[int, None] = {}  # tickets in the order taken: the first is the oldest

    def take(self) -> int:
        with self._changed:
            ticket, self._next = self._next, self._next + 1
            self._held[ticket] = None
            return ticket

    def give_back(self, ticket: int) -> None:
        with self._changed:
            del self._held[ticket]
            self._changed.notify_all()

    def mark(self) -> int:
        """Tickets below the mark were taken before now."""
        with self._changed:
            return self._next

    def all_back_before(self, mark: int) -> bool:
        with self._changed:
            return self._back_before(mark)

    def wait_all_back_before(self, mark: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._back_before(mark))

    def _back_before(self, mark: int) -> bool:
        return not self._held or next(iter(self._held)) >= mark


class DataDirInUse(RuntimeError):
    """Another live process owns the data directory."""


class DataDirLock:
    """An exclusive flock on DATA_DIR/LOCK, held for the life of the process. The kernel drops it when the
    holder dies, however it dies, so a stale lock never blocks a restart; the file names the holder so the
    refusal can say who it is."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / "LOCK"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise DataDirInUse(f"data directory {data_dir} is in use by {holder}; stop it, or give this "
                               "process another --data-dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
