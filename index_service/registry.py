"""The data directory: owned by one process, holding named collections (one folder each), the default one
among them, and the space budget their writes share."""

import errno
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

from index_service import snapshot
from index_service.catalog import Catalog
from index_service.collection import CATALOG_FILE, Collection
from index_service.config import DEFAULT_COLLECTION, BadParams, KindParams, params_with
from index_service.errors import CollectionExists, CollectionNotFound, InvalidArgument, StorageFull
from index_service.locks import DataDirLock
from index_service.maintenance import Maintenance

log = logging.getLogger(__name__)
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RESERVE_BYTES = 16 * 1024 * 1024  # at most; on a small disk 2% of it (a delete's log pages need far less)
FORMAT = "2"


class DataDirError(RuntimeError):
    """The data directory cannot be used (not a directory, not writable, a file in the way)."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidArgument(f"collection name {name[:80]!r} is not allowed: 1 to 64 characters, lowercase letters, "
                              "digits, '_' and '-', starting with a letter or digit")
    return name


def prepare_data_dir(data_dir: Path) -> None:
    """Creates the directory if needed and proves it writable, or says in one line why it cannot be used."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        raise DataDirError(f"cannot use data directory {data_dir}: a file of that name is in the way") from None
    except NotADirectoryError:
        raise DataDirError(f"cannot use data directory {data_dir}: part of its path is a file") from None
    except OSError as err:
        raise DataDirError(f"cannot use data directory {data_dir}: {err.strerror}") from None
    if (data_dir / "index.sqlite3").exists():
        raise DataDirError(f"{data_dir} holds an index of imgsim's first format (index.sqlite3): export it with the "
                           "version that wrote it, or start with another --data-dir")


class StorageBudget:
    """--max-storage-bytes over the whole data directory, and a small reserve file given up when the disk
    fills, so deletes (which free space) can still commit."""

    def __init__(self, data_dir: Path, max_bytes: int | None):
        self.data_dir = data_dir
        self.max_bytes = max_bytes
        self.reserve = data_dir / "space-reserve"
        self.restore_reserve()

    def used(self) -> int:
        return snapshot.disk_bytes(self.data_dir) - (self.reserve.stat().st_size if self.reserve.exists() else 0)

    def check(self, more_bytes: int) -> None:
        if self.max_bytes is not None:
            used = self.used()
            if used + more_bytes > self.max_bytes:
                raise StorageFull(f"the storage quota (--max-storage-bytes {self.max_bytes}) would be exceeded: "
                                  f"{used} bytes used, this write needs about {more_bytes}; nothing of this write "
                                  "was kept, searches and deletes go on")

    def free_reserve(self) -> bool:
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return False
        log.warning("the index's disk is full: gave up its space reserve so deletes can commit")
        return True

    def restore_reserve(self) -> None:
        if self.reserve.exists():
            return
        disk = os.statvfs(self.data_dir)
        size = min(RESERVE_BYTES, max(64 * 1024, disk.f_blocks * disk.f_frsize // 50))
        try:
            with self.reserve.open("wb") as file:
                os.posix_fallocate(file.fileno(), 0, size)
        except OSError as err:
            self.reserve.unlink(missing_ok=True)
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise


class Registry:
    def __init__(self, data_dir: Path, default_kind: str = "flat", default_params: KindParams = KindParams(),
                 snapshot_every: int = 100_000, compact_fraction: float = 0.2, max_storage_bytes: int | None = None):
        prepare_data_dir(data_dir)
        self.data_dir = data_dir
        self.root = data_dir / "collections"
        self.lock = DataDirLock(data_dir)
        self.default_kind = default_kind
        self.default_params = default_params
        self.snapshot_every = snapshot_every
        self.compact_fraction = compact_fraction
        self.storage = StorageBudget(data_dir, max_storage_bytes)
        self.collections: dict[str, Collection] = {}
        self.maintenance: dict[str, Maintenance] = {}
        self._changing = threading.Lock()  # creating or dropping

    def open_all(self, stopping: threading.Event | None = None) -> None:
        self.root.mkdir(exist_ok=True)
        for leftover in self.root.iterdir():
            if leftover.name.startswith(".") or not (leftover / CATALOG_FILE).exists():
                shutil.rmtree(leftover, ignore_errors=True)  # an interrupted create or drop
        for folder in sorted(self.root.iterdir()):
            self._open(folder, stopping)
        if DEFAULT_COLLECTION not in self.collections:
            self.create(DEFAULT_COLLECTION)

    def _open(self, folder: Path, stopping=None) -> Collection:
        collection = Collection(folder, self.snapshot_every, self.storage)
        collection.load(stopping)
        self.collections[collection.name] = collection
        self.maintenance[collection.name] = Maintenance(collection, self.compact_fraction)
        return collection

    def get(self, name: str) -> Collection:
        collection = self.collections.get(name or DEFAULT_COLLECTION)
        if collection is None:
            check_name(name)
            raise CollectionNotFound(f"no collection {name!r}; create it first (CreateCollection, or imgsim "
                                     "collections create)")
        return collection

    def create(self, name: str, kind: str = "", overrides: dict | None = None, fingerprint: str = "",
               dimension: int = 0, exist_ok: bool = False) -> tuple[Collection, bool]:
        check_name(name)
        kind = kind or self.default_kind
        try:
            params = params_with(self.default_params, overrides or {})
        except BadParams as err:
            raise InvalidArgument(str(err)) from None
        with self._changing:
            existing = self.collections.get(name)
            if existing is not None:
                same = existing.kind == kind and (not fingerprint or fingerprint == existing.fingerprint)
                if exist_ok and same:
                    return existing, False
                raise CollectionExists(f"collection {name!r} exists already ({existing.kind}, "
                                       f"{existing.count} items)" + ("" if exist_ok else "; pass exist_ok to reuse it"))
            staging = self.root / f".creating-{name}-{uuid.uuid4().hex[:8]}"
            staging.mkdir(parents=True)
            catalog = Catalog(staging / CATALOG_FILE)
            settings = {"name": name, "kind": kind, "params": json.dumps(params.as_dict(), sort_keys=True),
                        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            if fingerprint:
                settings.update(fingerprint=fingerprint, dimension=str(dimension))
            catalog.commit(0, None, [], settings)
            catalog.close()
            staging.rename(self.root / name)
            collection = self._open(self.root / name)
        log.info("collection %r created (%s)", name, kind)
        return collection, True

    def drop(self, name: str, missing_ok: bool = False) -> bool:
        check_name(name)
        if name == DEFAULT_COLLECTION:
            raise InvalidArgument("the default collection cannot be dropped (delete its items instead)")
        with self._changing:
            collection = self.collections.pop(name, None)
            if collection is None:
                if missing_ok:
                    return False
                raise CollectionNotFound(f"no collection {name!r}")
            self.maintenance.pop(name).stop()
            collection.close()
            doomed = self.root / f".dropped-{name}-{uuid.uuid4().hex[:8]}"
            collection.folder.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("collection %r dropped and its data deleted", name)
        return True

    def close(self) -> None:
        for maintenance in self.maintenance.values():
            maintenance.stop()
        for collection in self.collections.values():
            collection.close()
        self.lock.release()
