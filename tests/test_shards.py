"""Several index shards used as one, checked against a single index holding the same items."""

import numpy as np
import pytest

from client import SimilarityClient, Unavailable
from client.shards import shard_of
from conftest import start_index
from indexing import clustered

FP = "s" * 32


def candidates_and_queries(n: int, n_queries: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    both = clustered(n + n_queries, d)
    return both[:n], both[n:]


@pytest.fixture
def shards(tmp_path):
    running = [start_index(tmp_path / f"shard-{i}") for i in range(3)]
    yield running
    for server in running:
        server.stop(0)


@pytest.fixture
def single(tmp_path):
    running = start_index(tmp_path / "single")
    yield running
    running.stop(0)


def addresses(servers) -> list[str]:
    return [f"127.0.0.1:{s.port}" for s in servers]


def test_sharded_search_is_congruent_with_one_index(shards, single):
    candidates, queries = candidates_and_queries(900, 12, 24)
    ids = [f"item-{i}" for i in range(900)]
    metadata = [{"label": str(i % 3)} for i in range(900)]
    with SimilarityClient(index=addresses(shards)) as sharded, SimilarityClient(index=addresses([single])) as one:
        assert sharded.upsert(ids, candidates, metadata, fingerprint=FP).count == 900
        one.upsert(ids, candidates, metadata, fingerprint=FP)
        held = sharded.get(ids)  # each shard got its own rows, gathered from the one matrix, bit for bit
        assert all(held[i].vector.tobytes() == candidates[n].astype("<f4").tobytes()
                   and held[i].metadata == metadata[n] for n, i in enumerate(ids))
        for where in (None, {"label": ["1"]}):
            got = sharded.search_vectors(queries, k=10, where=where, fingerprint=FP)
            expected = one.search_vectors(queries, k=10, where=where, fingerprint=FP)
            assert [[h.id for h in hits] for hits in got] == [[h.id for h in hits] for hits in expected]
            np.testing.assert_allclose([[h.score for h in hits] for hits in got],
                                       [[h.score for h in hits] for hits in expected], rtol=1e-6)
        assert sharded.delete(ids[:300]) == 300
        assert sharded.stats().count == 600
        assert sorted(sharded.get(ids[295:305])) == ids[300:305]


def test_each_id_lives_on_the_shard_its_stable_hash_picks(shards):
    with SimilarityClient(index=addresses(shards)) as client:
        client.upsert([f"x{i}" for i in range(300)], np.eye(300, 8, dtype=np.float32) + 0.01, fingerprint=FP)
    for number, server in enumerate(shards):
        with SimilarityClient(index=addresses([server])) as alone:
            held = alone.get([f"x{i}" for i in range(300)])
        assert held and all(shard_of(item_id, 3) == number for item_id in held)
    assert shard_of("x1", 3) == shard_of("x1", 3)


def test_a_shard_down_fails_the_search_naming_it_unless_partial_results_are_asked(shards):
    candidates, queries = candidates_and_queries(200, 3, 8)
    with SimilarityClient(index=addresses(shards), timeout=5) as client:
        client.upsert([f"c{i}" for i in range(200)], candidates, fingerprint=FP)
        down = shards[1]
        down.stop(0)
        with pytest.raises(Unavailable, match=f"index shard 1 \\(127.0.0.1:{down.port}\\)"):
            client.search_vectors(queries, k=5, fingerprint=FP)
        partial = client.search_vectors_partial(queries, k=5, fingerprint=FP)
        assert partial.missing_shards == [f"index shard 1 (127.0.0.1:{down.port})"]
        assert all(len(hits) == 5 for hits in partial.hits)
        assert all(shard_of(h.id, 3) != 1 for hits in partial.hits for h in hits)


def test_an_id_held_by_two_shards_is_one_hit(shards):
    """After a change of shard count without moving ids, one id may sit on two shards: never two hits."""
    import grpc

    from imgsim import vectors
    from imgsim.v1 import index_pb2, index_pb2_grpc
    vector = np.ones(8, dtype=np.float32)
    for server in shards[:2]:  # written to each shard directly, bypassing the client's routing
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            index_pb2_grpc.IndexStub(channel).Upsert(iter([index_pb2.UpsertRequest(
                model_fingerprint="fp", items=[index_pb2.Item(id="twice", vector=vectors.to_proto(vector)),
                                               index_pb2.Item(id=f"other{server.port}",
                                                              vector=vectors.to_proto(vector + 0.01))])]))
    with SimilarityClient(index=addresses(shards)) as client:
        hits = client.search_vectors(vector, k=3, fingerprint="fp")[0]
    assert [h.id for h in hits].count("twice") == 1 and len(hits) == 3


def test_jump_hashing_moves_only_the_ids_the_new_shard_takes():
    ids = [f"id-{i}" for i in range(20000)]
    for shards in (2, 3, 7):
        before = [shard_of(i, shards) for i in ids]
        after = [shard_of(i, shards + 1) for i in ids]
        moved = [(b, a) for b, a in zip(before, after) if a != b]
        assert all(a == shards for _, a in moved)  # every moved id goes to the new shard ...
        assert abs(len(moved) / len(ids) - 1 / (shards + 1)) < 0.02  # ... and only its share moves
        assert abs(after.count(0) / len(ids) - 1 / (shards + 1)) < 0.02  # balanced


def held_by_shard(servers, collection: str = "default") -> list[dict]:
    """Each shard's items (id -> StoredItem), read from that shard alone."""
    found = []
    for server in servers:
        with SimilarityClient(index=addresses([server])) as alone:
            found.append({item.id: item for item in alone.scroll(collection, with_vectors=True)})
    return found


def test_resharding_2_to_3_under_reads_and_writes_ends_equal_to_one_index(shards, single):
    import threading
    import time

    n, d = 4000, 16
    data = clustered(n + 2000 + 16, d, seed=3)
    queries = data[-16:]
    ids = [f"r{i}" for i in range(n)]
    meta = [{"label": f"c{i % 5}", "n": i} for i in range(n)]
    with SimilarityClient(index=addresses(shards[:2])) as old, SimilarityClient(index=addresses([single])) as one:
        old.upsert(ids, data[:n], meta, fingerprint=FP)
        one.upsert(ids, data[:n], meta, fingerprint=FP)
    stop, failures, steps, searches = threading.Event(), [], [], [0]
    with SimilarityClient(index=addresses(shards)) as new, SimilarityClient(index=addresses([single])) as one:
        def write():
            """Writers already use the three-shard list: replaces, deletes and inserts, mirrored on one index."""
            rng = np.random.default_rng(5)
            fresh = n
            try:
                while not stop.is_set():
                    action = int(rng.integers(3))
                    chosen = [ids[i] for i in rng.choice(n, 12, replace=False)]
                    if action == 0:
                        vectors = data[rng.integers(0, n, 12)] + 0.5
                        for client in (new, one):
                            client.upsert(chosen, vectors, [{"label": "moved", "n": -1}] * 12, fingerprint=FP)
                    elif action == 1:
                        for client in (new, one):
                            client.delete(chosen)
                    elif fresh < n + 2000:
                        added = [f"new{j}" for j in range(fresh, fresh + 12)]
                        for client in (new, one):
                            client.upsert(added, data[fresh:fresh + 12], fingerprint=FP)
                        fresh += 12
                    steps.append(time.monotonic())
            except Exception as err:  # noqa: BLE001 - reported by the test below
                failures.append(repr(err))

        def read():
            try:
                while not stop.is_set():
                    hits = new.search_vectors(queries[searches[0] % 16], k=10, fingerprint=FP)[0]
                    assert len(hits) == 10 and len({h.id for h in hits}) == 10
                    searches[0] += 1
            except Exception as err:  # noqa: BLE001
                failures.append(repr(err))

        threads = [threading.Thread(target=write), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        report = new.reshard()
        ended = time.monotonic()
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert not failures, failures
        assert sum(started <= t <= ended for t in steps) >= 5, "the writes did not overlap the reshard"
        assert report.moved > n / 5 and searches[0] > 0

        # Afterwards: each item once, on its home shard, exactly as the single index holds it.
        placed = held_by_shard(shards)
        for number, items in enumerate(placed):
            assert all(shard_of(item_id, 3) == number for item_id in items), "an item is off its home shard"
        together = {item_id: item for items in placed for item_id, item in items.items()}
        assert sum(len(items) for items in placed) == len(together), "an item is on two shards"
        expected = {item.id: item for item in one.scroll(with_vectors=True)}
        assert set(together) == set(expected)
        for item_id, item in expected.items():
            assert together[item_id].vector.tobytes() == item.vector.tobytes()
            assert together[item_id].metadata == item.metadata
        got = new.search_vectors(queries, k=10, fingerprint=FP)
        want = one.search_vectors(queries, k=10, fingerprint=FP)
        assert [[h.id for h in hits] for hits in got] == [[h.id for h in hits] for hits in want]
        np.testing.assert_allclose([[h.score for h in hits] for hits in got],
                                   [[h.score for h in hits] for hits in want], rtol=1e-6)
        assert new.reshard().moved == 0


@pytest.mark.parametrize("meanwhile", ["deleted", "rewritten", "rewritten where it sat", "untouched"])
def test_a_move_never_undoes_a_write_made_while_the_item_moved(shards, meanwhile):
    """The three steps of a move, with the item changed between the read and the move."""
    from client.reshard import ReshardReport, _move
    from imgsim.v1 import index_pb2

    item_id = next(f"m{i}" for i in range(100) if shard_of(f"m{i}", 3) == 2)  # home: the third shard
    with SimilarityClient(index=addresses(shards[:1])) as first:  # written where a one-shard client put it
        first.upsert([item_id], np.ones((1, 8), np.float32), fingerprint=FP)
    with SimilarityClient(index=addresses(shards)) as client:
        index = client._index()
        source, home = index.shards[0], index.shards[2]
        read = source.stub.Get(index_pb2.GetRequest(ids=[item_id])).items[0]
        if meanwhile == "deleted":
            client.delete([item_id])
        elif meanwhile == "rewritten":
            client.upsert([item_id], np.full((1, 8), 2.0, np.float32), fingerprint=FP)
        elif meanwhile == "rewritten where it sat":  # by a writer still on the old shard list
            with SimilarityClient(index=addresses(shards[:1])) as lagging:
                lagging.upsert([item_id], np.full((1, 8), 3.0, np.float32), fingerprint=FP)
        report = ReshardReport()
        _move(10.0, "default", FP, source, home, [read], report)
        placed = held_by_shard(shards)
        if meanwhile == "rewritten where it sat":
            assert placed[0][item_id].vector.tolist() == [3.0] * 8 and item_id not in placed[2]  # kept, not lost
            assert report.undone == 1
            client.reshard()  # the next pass moves the newer write home
            placed = held_by_shard(shards)
            assert placed[2][item_id].vector.tolist() == [3.0] * 8
    assert item_id not in placed[0] and item_id not in placed[1]
    if meanwhile == "deleted":
        assert item_id not in placed[2] and report.undone == 1
    else:
        value = {"rewritten": 2.0, "rewritten where it sat": 3.0, "untouched": 1.0}[meanwhile]
        assert placed[2][item_id].vector.tolist() == [value] * 8


def test_imgsim_reshard_moves_a_named_collection_home_and_creates_it_on_the_new_shard(shards):
    import subprocess
    import sys

    from conftest import ROOT
    ids = [f"p{i}" for i in range(300)]
    with SimilarityClient(index=addresses(shards[:2])) as old:
        old.create_collection("photos", "hnsw", {"hnsw_m": 8})
        old.upsert(ids, clustered(300, 8), collection="photos", fingerprint=FP)
    done = subprocess.run([sys.executable, "-m", "client.cli", "reshard", "--collection", "photos", "--index",
                           ",".join(addresses(shards))], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    placed = held_by_shard(shards, "photos")
    moved = sum(1 for i in ids if shard_of(i, 3) == 2)
    assert f"moved {moved} items to their home shard" in done.stdout
    assert all(shard_of(i, 3) == n for n, items in enumerate(placed) for i in items)
    assert sorted(i for items in placed for i in items) == sorted(ids)
    with SimilarityClient(index=addresses(shards[2:])) as new_shard:
        info = {c.name: c for c in new_shard.list_collections()}["photos"]
    assert (info.index_kind, info.params["hnsw_m"], info.dimension) == ("hnsw", 8, 8)
