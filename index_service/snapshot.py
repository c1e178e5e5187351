"""Snapshots of the in-memory index: written aside, fsynced, then renamed into place, so one is whole or absent."""

import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)
CATALOG = "catalog.json"


def folder_for(root: Path, seq: int) -> Path:
    return root / f"{seq:012d}"


def fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as file:
            os.fsync(file.fileno())
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write(root: Path, seq: int, save_structure, catalog: dict) -> Path:
    """Writes snapshot `seq`: the structure (by `save_structure(folder)`) and the catalog of rows, ids, metadata."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"staging-{seq:012d}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_structure(staging)
    with (staging / CATALOG).open("w") as file:
        json.dump(catalog, file, separators=(",", ":"))
    fsync_tree(staging)
    final = folder_for(root, seq)
    staging.rename(final)
    fsync_dir(root)
    for older in root.iterdir():
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


def newest(root: Path) -> tuple[int, Path] | None:
    """The newest complete snapshot, as (seq, folder); staging leftovers of a crash are ignored."""
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    return (int(complete[-1].name), complete[-1]) if complete else None


def read_catalog(folder: Path) -> dict:
    with (folder / CATALOG).open() as file:
        return json.load(file)
