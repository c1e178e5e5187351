"""Every index kind against the exact oracle; snapshots and replay; the Get RPC."""

import grpc
import numpy as np
import pytest

from conftest import start_index
from imgsim import vectors
from imgsim.v1 import index_pb2, index_pb2_grpc
from index_service.collection import Collection, DataDirMismatch, NewItem
from index_service.index import KindParams
from test_index import FP, exact_top_k

# Small enough that ivfpq trains (39 x 16 = 624 vectors) and lsh has real buckets at this size.
SMALL = KindParams(ivf_nlist=16, ivf_nprobe=8, pq_m=16,
                   lsh_tables=12, lsh_bits=8, lsh_radius=1)
APPROXIMATE = ["hnsw", "ivfpq", "lsh"]


def clustered(n: int, d: int, seed: int = 0, centres: int = 20) -> np.ndarray:
    """Centres plus noise: more like real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, d)).astype(np.float32)
    return middle[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)


def candidates_and_queries(n: int, n_queries: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Both drawn around the same centres, as queries and candidates of one domain are."""
    both = clustered(n + n_queries, d)
    return both[:n], both[n:]


def ids_of(found) -> list[list[int]]:
    return [[int(h.id[1:]) for h in hits] for hits in found]


def recall(found, expected_rows: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(ids_of(found), expected_rows.tolist())]))


def filled(tmp_path, kind: str, candidates: np.ndarray, **kwargs) -> Collection:
    collection = Collection(tmp_path / kind, kind, SMALL, **kwargs)
    for start in range(0, len(candidates), 500):
        collection.upsert(FP, [NewItem(f"v{i}", candidates[i], {"label": str(i % 4)})
                               for i in range(start, min(start + 500, len(candidates)))])
    return collection


@pytest.mark.parametrize("kind", APPROXIMATE)
def test_approximate_kinds_reach_high_recall_with_true_cosine_scores(tmp_path, kind):
    candidates, queries = candidates_and_queries(3000, 40, 64)
    collection = filled(tmp_path, kind, candidates)
    found = collection.search(FP, queries, 10, [])
    expected_rows, _ = exact_top_k(candidates, queries, 10)
    assert recall(found, expected_rows) >= 0.9
    unit = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    for query, hits in zip(queries, found):
        true = unit[[int(h.id[1:]) for h in hits]] @ (query / np.linalg.norm(query))
        np.testing.assert_allclose([h.score for h in hits], true, rtol=1e-4, atol=1e-4)
    collection.close()


@pytest.mark.parametrize("kind", ["flat", *APPROXIMATE])
def test_exact_search_on_every_kind_equals_the_oracle(tmp_path, kind):
    candidates, queries = candidates_and_queries(1500, 10, 32)
    collection = filled(tmp_path, kind, candidates)
    found = collection.search(FP, queries, 8, [], exact=True)
    expected_rows, expected_scores = exact_top_k(candidates, queries, 8)
    np.testing.assert_array_equal(ids_of(found), expected_rows)
    np.testing.assert_allclose([[h.score for h in hits] for hits in found], expected_scores, rtol=1e-5, atol=1e-5)
    collection.close()


@pytest.mark.parametrize("kind", ["flat", *APPROXIMATE])
def test_deletes_and_replacements_work_on_every_kind(tmp_path, kind):
    candidates = clustered(1000, 32)
    collection = filled(tmp_path, kind, candidates)
    collection.delete([f"v{i}" for i in range(0, 1000, 2)])
    moved = clustered(1, 32, seed=7)[0]
    collection.upsert(FP, [NewItem("v1", moved, {"label": "moved"})])
    for exact in (False, True):
        found = collection.search(FP, candidates[:20], 10, [], exact=exact)
        assert all(int(h.id[1:]) % 2 == 1 for hits in found for h in hits)
        best = collection.search(FP, moved[None], 1, [], exact=exact)[0][0]
        assert (best.id, best.metadata["label"]) == ("v1", "moved")
    assert collection.count == 500
    collection.close()


@pytest.mark.parametrize("kind", ["flat", *APPROXIMATE])
def test_filters_work_on_every_kind(tmp_path, kind):
    candidates = clustered(1200, 32)
    collection = filled(tmp_path, kind, candidates)
    found = collection.search(FP, candidates[:10], 5, [("label", ["2"])])
    assert all(h.metadata["label"] == "2" for hits in found for h in hits)
    assert all(len(hits) == 5 for hits in found)
    collection.close()


@pytest.mark.parametrize("kind", ["flat", *APPROXIMATE])
def test_restart_from_a_snapshot_plus_later_writes_gives_the_same_answers(tmp_path, kind):
    candidates, queries = candidates_and_queries(1400, 15, 32)
    collection = filled(tmp_path, kind, candidates[:1000])
    collection.snapshot()
    assert collection.snapshot_seq > 0
    collection.upsert(FP, [NewItem(f"v{i}", candidates[i], {"label": "late"}) for i in range(1000, 1400)])
    collection.delete(["v3", "v1200"])
    exact_before, approximate_before = (collection.search(FP, queries, 10, [], exact=exact) for exact in (True, False))
    collection.store.close()  # a crash: no closing snapshot, the later writes live only in the store
    reopened = Collection(tmp_path / kind, kind, SMALL)
    assert reopened.count == 1398
    assert reopened.search(FP, queries, 10, [], exact=True) == exact_before
    # HNSW inserts with a random level per node, and its RNG state is not saved: the rebuilt graph can
    # differ slightly, so its answers are held to near-agreement rather than equality.
    assert recall(reopened.search(FP, queries, 10, []), np.array(ids_of(approximate_before))) >= 0.95
    reopened.close()


def test_a_damaged_snapshot_falls_back_to_rebuilding_from_the_store(tmp_path):
    candidates = clustered(300, 16)
    collection = filled(tmp_path, "flat", candidates)
    collection.close()  # writes a closing snapshot
    snapshot_folder = next((tmp_path / "flat" / "snapshots").iterdir())
    (snapshot_folder / "flat.faiss").write_bytes(b"garbage")
    reopened = Collection(tmp_path / "flat", "flat", SMALL)
    assert reopened.count == 300
    assert reopened.search(FP, candidates[5:6], 1, [])[0][0].id == "v5"
    reopened.close()


def test_a_data_directory_keeps_its_index_kind(tmp_path):
    filled(tmp_path, "hnsw", clustered(10, 8)).close()
    with pytest.raises(DataDirMismatch, match="holds a 'hnsw' index"):
        Collection(tmp_path / "hnsw", "flat", SMALL)


def test_snapshots_are_taken_in_the_background_after_enough_changes(tmp_path):
    collection = filled(tmp_path, "flat", clustered(1000, 8), snapshot_every=400)
    for _ in range(100):
        if collection.snapshot_seq:
            break
        __import__("time").sleep(0.05)
    assert collection.snapshot_seq > 0
    collection.close()


def test_get_returns_the_exact_vectors_and_metadata_as_sent(tmp_path):
    running = start_index(tmp_path / "data")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = index_pb2_grpc.IndexStub(channel)
            sent = clustered(3, 8) * 3.5  # not unit length: the stored vector is the one sent
            stub.Upsert(iter([index_pb2.UpsertRequest(model_fingerprint=FP, items=[
                index_pb2.Item(id=f"g{i}", vector=vectors.to_proto(v), metadata={"n": str(i)})
                for i, v in enumerate(sent)])]))
            got = {item.id: item for item in stub.Get(index_pb2.GetRequest(ids=["g0", "g2", "missing"])).items}
    finally:
        running.stop(0)
    assert sorted(got) == ["g0", "g2"]
    np.testing.assert_array_equal(vectors.from_proto(got["g2"].vector), sent[2])
    assert dict(got["g0"].metadata) == {"n": "0"}
