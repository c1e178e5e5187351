"""The index: exact search against a numpy oracle, durability across restarts, and refusals."""

import grpc
import numpy as np
import pytest

from conftest import start_index
from imgsim.serving import ServingConfig
from imgsim import vectors
from imgsim.v1 import index_pb2, index_pb2_grpc
from index_service.collection import Collection, NewItem
from index_service.errors import DimensionMismatch, ModelMismatch

FP = "f" * 32


def random_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def exact_top_k(candidates: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ c.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def items(matrix: np.ndarray, prefix: str = "v", labels=None) -> list[NewItem]:
    return [NewItem(f"{prefix}{i}", row, {"label": str(labels[i]) if labels is not None else "x"})
            for i, row in enumerate(matrix)]


def upsert_request(matrix: np.ndarray, fingerprint: str = FP, prefix: str = "v") -> index_pb2.UpsertRequest:
    return index_pb2.UpsertRequest(model_fingerprint=fingerprint, items=[
        index_pb2.Item(id=f"{prefix}{i}", vector=vectors.to_proto(row), metadata={"label": str(i % 3)})
        for i, row in enumerate(matrix)])


def search_request(queries: np.ndarray, k: int, fingerprint: str = FP, **kwargs) -> index_pb2.SearchRequest:
    return index_pb2.SearchRequest(model_fingerprint=fingerprint, k=k,
                                   queries=[vectors.to_proto(q) for q in queries], **kwargs)


@pytest.fixture
def collection(tmp_path):
    opened = Collection(tmp_path / "data")
    yield opened
    opened.close()


def test_search_returns_exact_top_k_for_flat_index(collection):
    candidates, queries = random_vectors(2000, 64), random_vectors(50, 64, seed=1)
    collection.upsert(FP, items(candidates))
    found = collection.search(FP, queries, 10, [])
    expected_rows, expected_scores = exact_top_k(candidates, queries, 10)
    np.testing.assert_array_equal([[int(h.id[1:]) for h in hits] for hits in found], expected_rows)
    np.testing.assert_allclose([[h.score for h in hits] for hits in found], expected_scores, rtol=1e-5, atol=1e-5)


def test_upsert_of_a_known_id_replaces_vector_and_metadata(collection):
    matrix = random_vectors(10, 8)
    collection.upsert(FP, items(matrix))
    replacement = -matrix[3]
    collection.upsert(FP, [NewItem("v3", replacement, {"label": "new"})])
    assert collection.count == 10
    best = collection.search(FP, replacement[None], 1, [])[0][0]
    assert (best.id, best.metadata) == ("v3", {"label": "new"})
    assert best.score == pytest.approx(1.0, abs=1e-5)


def test_last_item_of_an_id_wins_within_one_upsert(collection):
    matrix = random_vectors(2, 8)
    collection.upsert(FP, [NewItem("same", matrix[0], {"n": "1"}), NewItem("same", matrix[1], {"n": "2"})])
    assert collection.count == 1
    assert collection.search(FP, matrix[1][None], 1, [])[0][0].metadata == {"n": "2"}


def test_deleted_ids_are_never_returned(collection):
    candidates = random_vectors(100, 16)
    collection.upsert(FP, items(candidates))
    assert collection.delete(["v0", "v1", "missing"]) == 2
    found = collection.search(FP, candidates[:2], 100, [])
    assert all(h.id not in ("v0", "v1") for hits in found for h in hits)
    assert collection.count == 98


def test_filter_keeps_only_candidates_with_accepted_metadata(collection):
    candidates = random_vectors(300, 16)
    labels = np.arange(300) % 5
    collection.upsert(FP, items(candidates, labels=labels))
    found = collection.search(FP, candidates[:5], 20, [("label", ["1", "3"])])
    assert all(h.metadata["label"] in ("1", "3") for hits in found for h in hits)
    allowed = np.flatnonzero(np.isin(labels, [1, 3]))
    expected_rows, _ = exact_top_k(candidates[allowed], candidates[:5], 20)
    np.testing.assert_array_equal([[int(h.id[1:]) for h in hits] for hits in found], allowed[expected_rows])
    assert collection.search(FP, candidates[:1], 5, [("no-such-key", ["1"])]) == [[]]


def test_everything_written_survives_reopening_the_data_directory(tmp_path):
    candidates = random_vectors(500, 32)
    first = Collection(tmp_path / "data")
    first.upsert(FP, items(candidates))
    first.delete(["v7"])
    first.upsert(FP, [NewItem("v8", random_vectors(1, 32, seed=9)[0], {"label": "moved"})])
    before = first.search(FP, candidates[:20], 10, [])
    first.close()
    reopened = Collection(tmp_path / "data")
    assert (reopened.count, reopened.dimension, reopened.fingerprint) == (499, 32, FP)
    assert reopened.search(FP, candidates[:20], 10, []) == before
    reopened.close()


def test_vectors_of_another_model_or_dimension_are_refused(collection):
    collection.upsert(FP, items(random_vectors(5, 8)))
    with pytest.raises(ModelMismatch, match="holds vectors of model"):
        collection.upsert("another-model", items(random_vectors(1, 8), prefix="x"))
    with pytest.raises(DimensionMismatch, match="dimension 9"):
        collection.upsert(FP, items(random_vectors(1, 9), prefix="x"))
    assert collection.count == 5


def test_served_search_equals_exact_numpy_cosine(index_channel):
    stub = index_pb2_grpc.IndexStub(index_channel)
    candidates, queries = random_vectors(1500, 48), random_vectors(30, 48, seed=2)
    chunks = [upsert_request(candidates[s:s + 500]) for s in range(0, 1500, 500)]
    for offset, chunk in zip(range(0, 1500, 500), chunks):
        for i, item in enumerate(chunk.items):
            item.id = f"v{offset + i}"
    assert stub.Upsert(iter(chunks)).count == 1500
    response = stub.Search(search_request(queries, 7))
    expected_rows, expected_scores = exact_top_k(candidates, queries, 7)
    np.testing.assert_array_equal([[int(h.id[1:]) for h in r.hits] for r in response.results], expected_rows)
    np.testing.assert_allclose([[h.score for h in r.hits] for r in response.results], expected_scores,
                               rtol=1e-5, atol=1e-5)
    stats = stub.GetStats(index_pb2.GetStatsRequest())
    assert (stats.count, stats.dimension, stats.index_kind, stats.model_fingerprint) == (1500, 48, "flat", FP)


def test_served_index_keeps_its_data_across_a_restart(tmp_path):
    candidates = random_vectors(50, 16)
    running = start_index(tmp_path / "data")
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        index_pb2_grpc.IndexStub(channel).Upsert(iter([upsert_request(candidates)]))
    running.stop(0)
    restarted = start_index(tmp_path / "data")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            stub = index_pb2_grpc.IndexStub(channel)
            assert stub.GetStats(index_pb2.GetStatsRequest()).count == 50
            assert stub.Search(search_request(candidates[4:5], 1)).results[0].hits[0].id == "v4"
    finally:
        restarted.stop(0)


def refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


@pytest.mark.parametrize("case, code, words", [
    ("wrong dimension", grpc.StatusCode.INVALID_ARGUMENT, "dimension 5"),
    ("k zero", grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 1000, got 0"),
    ("k too large", grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 1000, got 1001"),
    ("other model", grpc.StatusCode.FAILED_PRECONDITION, "holds vectors of model"),
    ("no queries", grpc.StatusCode.INVALID_ARGUMENT, "no query vectors"),
    ("nan query", grpc.StatusCode.INVALID_ARGUMENT, "query 0: vector holds NaN or Inf"),
    ("zero query", grpc.StatusCode.INVALID_ARGUMENT, "all zeros"),
    ("ragged bytes", grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of 4"),
    ("empty filter values", grpc.StatusCode.INVALID_ARGUMENT, "any_of is empty"),
])
def test_bad_searches_get_the_right_status_and_a_message_naming_the_problem(index_channel, case, code, words):
    stub = index_pb2_grpc.IndexStub(index_channel)
    stub.Upsert(iter([upsert_request(random_vectors(10, 8))]))
    query = random_vectors(1, 8, seed=5)
    requests = {
        "wrong dimension": search_request(random_vectors(1, 5), 3),
        "k zero": search_request(query, 0),
        "k too large": search_request(query, 1001),
        "other model": search_request(query, 3, fingerprint="0" * 32),
        "no queries": search_request(query[:0], 3),
        "nan query": search_request(np.full((1, 8), np.nan, dtype=np.float32), 3),
        "zero query": search_request(np.zeros((1, 8), dtype=np.float32), 3),
        "ragged bytes": index_pb2.SearchRequest(model_fingerprint=FP, k=3, queries=[{"float32_le": b"abcdef"}]),
        "empty filter values": search_request(query, 3, filter=[index_pb2.MetadataCondition(key="label")]),
    }
    error = refusal(stub.Search, requests[case])
    assert error.code() == code
    assert words in error.details()


@pytest.mark.parametrize("case, code, words", [
    ("other model", grpc.StatusCode.FAILED_PRECONDITION, "holds vectors of model"),
    ("wrong dimension", grpc.StatusCode.INVALID_ARGUMENT, "dimension 4"),
    ("empty id", grpc.StatusCode.INVALID_ARGUMENT, "item 0: id is empty"),
    ("no fingerprint", grpc.StatusCode.INVALID_ARGUMENT, "model_fingerprint is empty"),
    ("empty message", grpc.StatusCode.INVALID_ARGUMENT, "carries no items"),
])
def test_bad_upserts_get_the_right_status_and_write_nothing(index_channel, case, code, words):
    stub = index_pb2_grpc.IndexStub(index_channel)
    stub.Upsert(iter([upsert_request(random_vectors(10, 8))]))
    bad = {
        "other model": upsert_request(random_vectors(2, 8), fingerprint="0" * 32, prefix="new"),
        "wrong dimension": upsert_request(random_vectors(2, 4), prefix="new"),
        "empty id": upsert_request(random_vectors(2, 8), prefix=""),
        "no fingerprint": upsert_request(random_vectors(2, 8), fingerprint="", prefix="new"),
        "empty message": index_pb2.UpsertRequest(model_fingerprint=FP),
    }[case]
    if case == "empty id":
        bad.items[0].id = ""
    error = refusal(lambda r: stub.Upsert(iter([r])), bad)
    assert error.code() == code
    assert words in error.details()
    assert stub.GetStats(index_pb2.GetStatsRequest()).count == 10


def test_search_of_an_empty_index_returns_no_hits(index_channel):
    stub = index_pb2_grpc.IndexStub(index_channel)
    response = stub.Search(search_request(random_vectors(2, 8), 5))
    assert [len(r.hits) for r in response.results] == [0, 0]


def test_a_second_server_on_a_taken_port_fails_fast(tmp_path, index):
    from imgsim.serving import PortInUse

    with pytest.raises(PortInUse, match=f"cannot listen on 127.0.0.1:{index.port}"):
        start_index(tmp_path / "other", ServingConfig(port=index.port))
