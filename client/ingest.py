"""Indexing real data: dataset splits and folders of images, each item under an id that names the image,
with its label and where it came from; resumable (--skip-existing) and stoppable (Ctrl-C) at any point.

Ids: a folder's files are known by their path relative to the folder given ("cats/001.jpg"), so indexing
the folder again replaces them rather than adding copies, and a removed file leaves nothing behind but its
own item. A dataset's rows are known by their id column when one is given, else by a hash of the image's
bytes (32 hex digits): indexing the same images again, or another split, never overwrites other items; two
rows with byte-identical images are one item.
"""

import glob
import hashlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from client.images import encoded
from client.results import IndexReport
from imgsim import vectors

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
WRITE_BATCH = 1024
HELD_BATCH = 4096


class BadInput(ValueError):
    """A column, path or option that cannot work, found before any work starts."""


@dataclass
class Source:
    id: str
    data: bytes | None  # None: read from `path` when sent
    path: Path | None
    metadata: dict
    where: str  # what the user calls it: a path, or dataset/split/row
    read_error: str = ""

    def bytes(self) -> bytes:
        """The encoded image; empty (and `read_error` set) when the file cannot be read."""
        if self.data is not None:
            return self.data
        try:
            return self.path.read_bytes()
        except OSError as err:  # a file gone or unreadable fails this item, the run goes on
            self.read_error = f"cannot read it: {err.strerror}"
            return b""


def content_id(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# Datasets.

def pick_label_column(dataset, label_column: str | None) -> str | None:
    columns = list(dataset.features or {})
    if label_column == "auto":
        return next((c for c in ("label", "labels") if c in columns), None)
    if label_column and label_column not in columns:
        raise BadInput(f"no column {label_column!r} in the dataset; its columns are: {', '.join(columns)}")
    return label_column


def check_columns(dataset, image_column: str, id_column: str | None) -> None:
    columns = list(dataset.features or {})
    for role, column in (("image", image_column), ("id", id_column)):
        if column and column not in columns:
            raise BadInput(f"no {role} column {column!r} in the dataset; its columns are: {', '.join(columns)}")


def original_indices(dataset):
    """Row numbers in the dataset as loaded, surviving shuffle() and select() (datasets keeps them in its
    indices mapping); None for a dataset never reordered."""
    mapping = getattr(dataset, "_indices", None)
    return None if mapping is None else mapping.column(0).to_pylist()


def dataset_sources(dataset, image_column: str = "image", label_column: str | None = "auto",
                    id_column: str | None = None) -> tuple[Iterator[Source], int | None]:
    from datasets import ClassLabel, Image as ImageFeature, IterableDataset

    check_columns(dataset, image_column, id_column)
    label_column = pick_label_column(dataset, label_column)
    feature = (dataset.features or {}).get(label_column) if label_column else None
    names = feature.names if isinstance(feature, ClassLabel) else None
    raw = dataset.cast_column(image_column, ImageFeature(decode=False))
    streaming = isinstance(dataset, IterableDataset)
    name = f"{dataset.info.dataset_name or 'dataset'}/{dataset.split or 'split'}"
    indices = None if streaming else original_indices(dataset)

    def sources() -> Iterator[Source]:
        for row, example in enumerate(raw):
            data = encoded(example[image_column])
            metadata = {"source": f"{name}/{indices[row] if indices else row}"}
            if label_column:
                value = example[label_column]
                metadata["label"] = names[value] if names is not None and isinstance(value, int) else value
            item_id = str(example[id_column]) if id_column else content_id(data)
            yield Source(item_id, data, None, metadata, f"{name} row {indices[row] if indices else row}")

    return sources(), None if streaming else len(dataset)


# Files and folders.

def expand(paths: list[str]) -> list[tuple[Path, Path]]:
    """(file, the folder its id is relative to) for every image under the paths: folders recursively,
    globs, single files."""
    found = []
    for given in paths:
        path = Path(given)
        if any(ch in given for ch in "*?["):
            root = Path(glob.escape(given.split("*")[0].split("?")[0].split("[")[0])).parent
            matches = sorted(Path(p) for p in glob.glob(given, recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise BadInput(f"{given}: no file matches")
            found += [(f, root) for f in files]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise BadInput(f"{given}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            found += [(f, path) for f in files]
        elif path.is_file():
            found.append((path, path.parent))
        else:
            raise BadInput(f"{given}: no such file or folder")
    return found


def path_sources(paths: list[str]) -> tuple[Iterator[Source], int]:
    files = expand(paths)

    def sources() -> Iterator[Source]:
        for file, root in files:
            relative = file.relative_to(root)
            metadata = {"source": str(file.resolve())}
            if len(relative.parts) > 1:  # ImageFolder: the class is the folder the file sits in
                metadata["label"] = relative.parts[-2]
            yield Source(relative.as_posix(), None, file, metadata, str(file))

    return sources(), len(files)


# The run.

class Replayable:
    """The sources with what the embedder has not answered yet kept, so a stream cut by a restarting
    replica can resume from the first unanswered one (embedding is idempotent)."""

    def __init__(self, sources: Iterator[Source]):
        self.sources = sources
        self.kept: list[Source] = []
        self.first_kept = 0  # the stream position of kept[0]

    def answered(self, count: int) -> None:
        """The first `count` positions have results: forget them."""
        drop = count - self.first_kept
        if drop > 0:
            self.kept, self.first_kept = self.kept[drop:], count

    def items_from(self, position: int):
        self.answered(position)
        for source in list(self.kept):
            yield source.id, source.bytes()
        for source in self.sources:
            self.kept.append(source)
            yield source.id, source.bytes()


class Writer:
    """Writes embedded items in batches on a thread of its own, so embedding and writing overlap."""

    def __init__(self, client, collection: str):
        self.client, self.collection = client, collection
        self.batches: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.inserted = self.replaced = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="index-writer")
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.batches.get()) is not None:
            if self.error is not None:
                continue
            fingerprint, rows = batch
            try:
                packed = np.frombuffer(b"".join(row[1] for row in rows), dtype=vectors.WIRE_DTYPE)
                report = self.client._write(self.collection, fingerprint, [row[0] for row in rows],
                                            packed.reshape(len(rows), -1), [row[2] for row in rows])
                self.inserted += report.inserted
                self.replaced += report.replaced
            except BaseException as err:
                self.error = err

    def put(self, fingerprint: str, rows: list) -> None:
        if self.error is not None:
            raise self.error
        self.batches.put((fingerprint, rows))

    def finish(self) -> None:
        self.batches.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def not_held(client, sources: Iterator[Source], collection: str, report: IndexReport) -> Iterator[Source]:
    """The sources whose id the collection does not hold yet (asked in batches)."""
    batch: list[Source] = []

    def flush():
        held = client.held([s.id for s in batch], collection)
        report.skipped += sum(1 for s in batch if s.id in held)
        yield from (s for s in batch if s.id not in held)

    for source in sources:
        batch.append(source)
        if len(batch) >= HELD_BATCH:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def run(client, sources: Iterator[Source], total: int | None, collection: str, batch_size: int = 64,
        progress: bool = True, skip_existing: bool = False) -> IndexReport:
    """Embeds and writes every source; on Ctrl-C stops, writes what was embedded, and returns the report so
    far (interrupted=True)."""
    from tqdm.auto import tqdm

    report = IndexReport()
    if skip_existing:
        sources = not_held(client, sources, collection, report)
    stream = Replayable(sources)
    writer = Writer(client, collection)
    pending: list = []
    fingerprint = None
    bar = tqdm(total=total, desc="indexing", unit="img", disable=not progress)
    results = client._embed_stream(stream.items_from, batch_size)
    position = 0
    try:
        for result, result_fingerprint in results:
            source = stream.kept[position - stream.first_kept]
            position += 1
            stream.answered(position)
            bar.update(1)
            if result.HasField("error"):
                report.failed.append((source.where, source.read_error or result.error.message.split(": ", 1)[-1]))
                continue
            if pending and (result_fingerprint != fingerprint or len(pending) >= WRITE_BATCH):
                writer.put(fingerprint, pending)
                pending = []
            fingerprint = result_fingerprint
            pending.append((source.id, result.vector.float32_le, source.metadata))
            report.indexed += 1
    except KeyboardInterrupt:
        report.interrupted = True
        results.close()
    finally:
        bar.close()
        try:
            if pending:
                writer.put(fingerprint, pending)
        finally:
            writer.finish()
    report.inserted, report.replaced = writer.inserted, writer.replaced
    return report


def index_dataset(client, dataset, image_column="image", label_column="auto", id_column=None, batch_size=64,
                  progress=True, collection="default", skip_existing=False) -> IndexReport:
    """Items: id from `id_column` or the image bytes' hash; metadata "label" (the ClassLabel's name, or the
    column's value) and "source" (dataset/split/row, the row as loaded even after shuffle or select)."""
    sources, total = dataset_sources(dataset, image_column, label_column, id_column)
    return run(client, sources, total, collection, batch_size, progress, skip_existing)


def index_paths(client, paths, collection="default", batch_size=64, progress=True,
                skip_existing=False) -> IndexReport:
    """Items: id = the path relative to the folder given; metadata "label" = the subfolder a file sits in
    (ImageFolder), "source" = the file's absolute path."""
    sources, total = path_sources(list(paths))
    return run(client, sources, total, collection, batch_size, progress, skip_existing)

