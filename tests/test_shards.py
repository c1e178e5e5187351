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
