"""Snapshots of a collection's in-memory search state, so a restart loads instead of rebuilding.

Written aside, each file's size and BLAKE2b recorded in a manifest that carries its own checksum, fsynced,
then renamed into place: a snapshot is whole or absent. Reading verifies every checksum first; a snapshot
that fails is reported as damaged and the caller rebuilds from the store (and writes a fresh one at once).

An array too large to copy whole (ivfpq's codes: about 2 GB at 10M) is given as `Pieces` and written as it is
copied, hashed on the way, so a snapshot costs its process a piece of memory, not a second index.

Every file is flushed to disk each SYNC_BYTES as it is written, not once at the end: an fsync of hundreds of
MB makes the filesystem's journal commit wait for all of it, and the writer's own small fsyncs (the catalog's,
the vector file's) wait behind that commit (in a scratch probe, a 512 MB file synced whole held a 100 KB append's fdatasync
126-144 ms here; synced every 16 MB, 7-8 ms).
"""

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)
MANIFEST = "MANIFEST.json"
FORMAT = 1
HASH_CHUNK = 8 * 1024 * 1024
SYNC_BYTES = 16 * 1024 * 1024


class SnapshotDamaged(Exception):
    """A snapshot file is missing, truncated or altered."""


@dataclass
class Pieces:
    """An array written as its consecutive pieces come (flattened, in order); they must fill `shape`."""
    dtype: np.dtype | type
    shape: tuple[int, ...]
    pieces: Iterator[np.ndarray]

    def collect(self) -> np.ndarray:
        """The whole array in memory (for callers that keep it, and tests)."""
        out = np.empty(int(np.prod(self.shape)), dtype=self.dtype)
        at = 0
        for piece in self.pieces:
            out[at:at + piece.size] = piece.reshape(-1)
            at += piece.size
        if at != out.size:
            raise ValueError(f"pieces held {at} of {out.size} values")
        return out.reshape(self.shape)


def collected(arrays: dict) -> dict[str, np.ndarray]:
    return {name: a.collect() if isinstance(a, Pieces) else a for name, a in arrays.items()}


class _Hashing:
    """A file whose bytes are hashed as they are written, and flushed to disk every SYNC_BYTES."""

    def __init__(self, file):
        self.file, self.digest, self.bytes, self.unsynced = file, hashlib.blake2b(digest_size=32), 0, 0

    def write(self, data) -> None:
        whole = memoryview(data).cast("B")
        for at in range(0, len(whole), SYNC_BYTES):
            view = whole[at:at + SYNC_BYTES]
            self.digest.update(view)
            self.file.write(view)
            self.bytes += len(view)
            self.unsynced += len(view)
            if self.unsynced >= SYNC_BYTES:
                self.file.flush()
                os.fdatasync(self.file.fileno())
                self.unsynced = 0


def write_pieces(path: Path, array: Pieces) -> dict:
    """Writes `array` as a .npy file; returns its manifest entry (size and digest)."""
    dtype, expected = np.dtype(array.dtype), int(np.prod(array.shape))
    with path.open("wb") as file:
        out = _Hashing(file)
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": tuple(array.shape)})
        written = 0
        for piece in array.pieces:
            piece = np.ascontiguousarray(piece, dtype=dtype)
            out.write(piece)
            written += piece.size
    if written != expected:
        raise ValueError(f"{path.name}: pieces held {written} of {expected} values")
    return {"bytes": out.bytes, "blake2b": out.digest.hexdigest()}


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=32)
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def manifest_text(body: dict) -> str:
    payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return json.dumps({"body": body, "blake2b": hashlib.blake2b(payload.encode(), digest_size=32).hexdigest()})


def write(root: Path, seq: int, info: dict, arrays: dict[str, np.ndarray | Pieces], blobs: dict[str, bytes]) -> Path:
    """Writes snapshot `seq` under `root` and removes older ones; returns its folder. An exception from the
    pieces of an array (a capture given up) leaves nothing behind."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"staging-{seq:012d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        files = {}
        for name, array in arrays.items():
            files[f"{name}.npy"] = write_pieces(staging / f"{name}.npy",
                                                array if isinstance(array, Pieces)
                                                else Pieces(array.dtype, array.shape, iter([array])))
        for name, blob in blobs.items():
            (staging / name).write_bytes(blob)
        for path in sorted(staging.iterdir()):
            fsync_path(path)
            if path.name not in files:
                files[path.name] = {"bytes": path.stat().st_size, "blake2b": file_digest(path)}
        (staging / MANIFEST).write_text(manifest_text({"format": FORMAT, "seq": seq, "info": info, "files": files}))
        fsync_path(staging / MANIFEST)
        fsync_path(staging)
        final = root / f"{seq:012d}"
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for older in root.iterdir():
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


def newest(root: Path) -> tuple[int, Path] | None:
    """The newest snapshot folder, as (seq, folder); staging leftovers of a crash are ignored."""
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    return (int(complete[-1].name), complete[-1]) if complete else None


def read(folder: Path, mapped: frozenset[str] = frozenset()) -> tuple[dict, dict[str, np.ndarray], dict[str, bytes]]:
    """(info, arrays, blobs) of a snapshot, every checksum verified. Raises SnapshotDamaged. Arrays named in
    `mapped` come as read-only maps of their files (clean page cache, not a copy on the heap: for arrays
    only copied from while loading)."""
    try:
        wrapper = json.loads((folder / MANIFEST).read_text())
        body = wrapper["body"]
        payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
        if hashlib.blake2b(payload.encode(), digest_size=32).hexdigest() != wrapper["blake2b"]:
            raise SnapshotDamaged(f"{folder / MANIFEST} fails its checksum")
        if body["format"] != FORMAT or int(folder.name) != body["seq"]:
            raise SnapshotDamaged(f"{folder / MANIFEST} describes another snapshot")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SnapshotDamaged(f"{folder / MANIFEST} is unreadable: {err}") from None
    arrays, blobs = {}, {}
    for name, expected in body["files"].items():
        path = folder / name
        try:
            if path.stat().st_size != expected["bytes"] or file_digest(path) != expected["blake2b"]:
                raise SnapshotDamaged(f"{path} fails its checksum")
            if name.endswith(".npy"):
                arrays[name[:-4]] = np.load(path, allow_pickle=False,
                                            mmap_mode="r" if name[:-4] in mapped else None)
            else:
                blobs[name] = path.read_bytes()
        except OSError as err:
            raise SnapshotDamaged(f"{path} is unreadable: {err}") from None
    return body["info"], arrays, blobs


def disk_bytes(root: Path) -> int:
    """Bytes of the files under `root`; files that vanish while it looks (a snapshot being replaced) count 0."""
    total = 0
    for path in root.rglob("*") if root.is_dir() else ():
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:
            pass
    return total
