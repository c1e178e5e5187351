"""Cost follows live items, not total writes: replacing the same items over and over, or deleting most of
them, leaves a collection whose rows, disk bytes and search structure are those of a fresh one.
(bench/compaction.py measures RSS and search time the same way at 10k items.)"""

import time

import numpy as np
import pytest

from conftest import start_index
from imgsim.v1 import index_pb2
from index_service.config import KindParams
from indexing import Index, clustered

SMALL = KindParams(ivf_nlist=16, ivf_nprobe=8, pq_m=32, lsh_tables=8, lsh_bits=8, lsh_radius=1)
ITEMS, ROUNDS, DIM = 2000, 20, 32


def disk_bytes(stats) -> int:
    return stats.vector_bytes + stats.catalog_bytes + stats.snapshot_bytes


def settle(idx: Index, timeout_s: float = 120.0):
    """Waits until background compaction has nothing left to reclaim."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        stats = idx.stats()
        if stats.dead == 0 and previous is not None and disk_bytes(stats) == disk_bytes(previous):
            return stats
        assert time.monotonic() < deadline, f"compaction did not settle: {stats}"
        previous = stats
        time.sleep(1.0)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "lsh"])
def test_replacing_the_same_items_20_times_ends_where_a_fresh_collection_starts(tmp_path, kind):
    data = clustered(ITEMS, DIM)
    ids = [f"v{i}" for i in range(ITEMS)]
    fresh_server = start_index(tmp_path / "fresh", index_kind=kind, kind_params=SMALL)
    churned_server = start_index(tmp_path / "churned", index_kind=kind, kind_params=SMALL)
    fresh, churned = Index(fresh_server.port), Index(churned_server.port)
    try:
        fresh.upsert(ids, data)
        rng = np.random.default_rng(1)
        for _ in range(ROUNDS):
            churned.upsert(ids, data + 0.01 * rng.standard_normal(data.shape).astype(np.float32))
        churned.upsert(ids, data)  # the same content as the fresh one in the end
        after = settle(churned)
        fresh.stub.Compact(index_pb2.CompactRequest())  # snapshotted and checkpointed, like the churned one
        baseline = settle(fresh)
        assert after.count == baseline.count == ITEMS
        assert after.vector_bytes <= 1.2 * baseline.vector_bytes, (after, baseline)
        assert disk_bytes(after) <= 1.2 * disk_bytes(baseline), (after, baseline)
        queries = data[:20]
        for exact in (True, False):
            assert [h[0][0] for h in churned.search(queries, 1, exact=exact)] == \
                [h[0][0] for h in fresh.search(queries, 1, exact=exact)]
    finally:
        fresh.close()
        churned.close()
        fresh_server.stop(0)
        churned_server.stop(0)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "lsh"])
def test_deleting_most_items_gives_the_space_back(tmp_path, kind):
    data = clustered(ITEMS, DIM)
    running = start_index(tmp_path, index_kind=kind, kind_params=SMALL)
    idx = Index(running.port)
    try:
        idx.upsert([f"v{i}" for i in range(ITEMS)], data)
        full = settle(idx)
        idx.delete([f"v{i}" for i in range(0, ITEMS) if i % 10])  # 90 % gone, the rest spread over the rows
        after = settle(idx)
        assert after.count == ITEMS // 10
        assert after.vector_bytes <= 0.15 * full.vector_bytes + 4096 * 4
        kept = np.arange(0, ITEMS, 10)
        assert [h[0][0] for h in idx.search(data[kept[:20]], 1, exact=True)] == [f"v{i}" for i in kept[:20]]
        reply = idx.stub.Compact(index_pb2.CompactRequest())
        assert reply.reclaimed == 0  # nothing left to do on request either
    finally:
        idx.close()
        running.stop(0)


def test_compacting_a_collection_never_written_reclaims_nothing_and_breaks_nothing(index):
    """Found by the stateful test once compact could run first: an empty collection had no structure."""
    idx = Index(index.port)
    try:
        assert idx.stub.Compact(index_pb2.CompactRequest()).reclaimed == 0
        idx.upsert(["a"], np.ones((1, 4), np.float32))
        assert idx.stats().count == 1
    finally:
        idx.close()
