"""Moves every item that is not on its home shard (client/shards.py: shard_of) to it, while the shards go on
serving reads and writes.

Before running it, every writer must use the new shard list (so new writes already go home); searches, gets
and deletes of the SDK ask every shard, so they stay right while items move. For each misplaced item, read
with its version from the shard it sits on:

  1. insert it on its home shard only if its id is absent there (UpsertRequest.only_absent): a write that
     reached the home shard meanwhile is newer and is kept;
  2. delete it from where it sat only while it is at the version read (DeleteRequest.if_versions): a newer
     write there is kept, and moved by a later pass;
  3. if step 2 removed nothing (the item was deleted or rewritten meanwhile), remove the copy step 1 made,
     again only at the version step 1 gave it, so a delete made during the move is not undone.

No step overwrites or removes a write it did not read, and the item is on at least one shard throughout. A
reshard stopped at any point leaves every item on its old shard, its home, or both (the same item); running
it again finishes the job. Passes repeat until one finds nothing to move.
"""

from dataclasses import dataclass, field
from typing import Callable

from client.errors import translated_errors
from client.shards import Shard, ShardedIndex, shard_of
from imgsim.v1 import index_pb2

PAGE = 512
PAGE_BYTES = 3 * 1024 * 1024  # of vectors per page: well under gRPC's default 4 MiB message limit
MAX_PASSES = 5


@dataclass
class ReshardReport:
    moved: int = 0
    kept_newer: int = 0  # the home shard already held a newer write of the id
    undone: int = 0  # the item changed or went where it sat during the move: the copy was taken back
    passes: int = 0
    per_collection: dict[str, int] = field(default_factory=dict)


def reshard(index: ShardedIndex, collections: list[str], progress: Callable[[str], None] = lambda _: None
            ) -> ReshardReport:
    report = ReshardReport()
    for collection in collections:
        _create_everywhere(index, collection)
        before = report.moved
        for _ in range(MAX_PASSES):
            report.passes += 1
            if not _one_pass(index, collection, report, progress):
                break
        report.per_collection[collection] = report.moved - before
    return report


def _one_pass(index: ShardedIndex, collection: str, report: ReshardReport, progress) -> int:
    """Moves the misplaced items of one collection; returns how many it found."""
    shards = index.shards
    found = 0
    for source in shards:
        with translated_errors(source.name):
            stats = source.stub.GetStats(index_pb2.GetStatsRequest(collection=collection), timeout=index.timeout)
        if not stats.count:
            continue
        limit = max(1, min(PAGE, PAGE_BYTES // (4 * stats.dimension)))
        cursor = ""
        while True:
            with translated_errors(source.name):
                page = source.stub.Scroll(index_pb2.ScrollRequest(collection=collection, limit=limit, cursor=cursor,
                                                                  with_vectors=True), timeout=index.timeout)
            by_home: dict[int, list[index_pb2.Item]] = {}
            for item in page.items:
                home = shard_of(item.id, len(shards))
                if home != source.number:
                    by_home.setdefault(home, []).append(item)
            for home, items in by_home.items():
                _move(index.timeout, collection, stats.model_fingerprint, source, shards[home], items, report)
                found += len(items)
            if by_home:
                progress(f"{collection}: {report.moved} moved")
            cursor = page.next_cursor
            if not cursor:
                break
    return found


def _create_everywhere(index: ShardedIndex, collection: str) -> None:
    """A shard added since the collection was made gets it, with the same kind, parameters and model."""
    held = {}
    for shard in index.shards:
        with translated_errors(shard.name):
            listing = shard.stub.ListCollections(index_pb2.ListCollectionsRequest(), timeout=index.timeout)
        held[shard.number] = {info.name: info for info in listing.collections}
    model = next((h[collection] for h in held.values() if collection in h and h[collection].dimension), None) or \
        next((h[collection] for h in held.values() if collection in h), None)
    if model is None:
        return
    for shard in index.shards:
        if collection not in held[shard.number]:
            with translated_errors(shard.name):
                shard.stub.CreateCollection(index_pb2.CreateCollectionRequest(
                    name=collection, index_kind=model.index_kind, params=model.params,
                    model_fingerprint=model.model_fingerprint, dimension=model.dimension, exist_ok=True),
                    timeout=index.timeout)


def _move(timeout: float, collection: str, fingerprint: str, source: Shard, home: Shard,
          items: list[index_pb2.Item], report: ReshardReport) -> None:
    copies = [index_pb2.Item(id=item.id, vector=item.vector, typed_metadata=item.typed_metadata,
                             metadata={k: v for k, v in item.metadata.items() if k not in item.typed_metadata})
              for item in items]
    with translated_errors(home.name):
        inserted = home.stub.Upsert(iter([index_pb2.UpsertRequest(
            model_fingerprint=fingerprint, collection=collection, only_absent=True, items=copies)]), timeout=timeout)
    with translated_errors(source.name):
        removed = source.stub.Delete(index_pb2.DeleteRequest(
            collection=collection, ids=[item.id for item in items], if_versions=[item.version for item in items]),
            timeout=timeout)
    skipped, deleted = set(inserted.skipped_ids), set(removed.deleted_ids)
    undo = [item.id for item in items if item.id not in skipped and item.id not in deleted]
    if undo:
        with translated_errors(home.name):
            home.stub.Delete(index_pb2.DeleteRequest(collection=collection, ids=undo,
                                                     if_versions=[inserted.version] * len(undo)), timeout=timeout)
    report.moved += len(deleted)
    report.kept_newer += len(skipped & deleted)
    report.undone += len(undo)
