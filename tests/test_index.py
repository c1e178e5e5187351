"""The index's contract through real gRPC calls: exact search against the numpy oracle, replacements,
deletes, atomic calls, refusals that leave no trace, and data kept across restarts."""

import grpc
import numpy as np
import pytest

from conftest import start_index
from imgsim import vectors
from imgsim.server.config import ServingConfig
from imgsim.v1 import index_pb2
from indexing import FP, Index, exact_top_k, ids_as_numbers, item, random_vectors


@pytest.fixture
def idx(index):
    opened = Index(index.port)
    yield opened
    opened.close()


def numbered(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_search_returns_the_exact_top_k_for_flat(idx):
    candidates, queries = random_vectors(1500, 48), random_vectors(30, 48, seed=2)
    reply = idx.upsert(numbered(1500), candidates, per_message=500)
    assert (reply.inserted, reply.replaced, reply.count) == (1500, 0, 1500)
    found = idx.search(queries, 7)
    expected_rows, expected_scores = exact_top_k(candidates, queries, 7)
    np.testing.assert_array_equal(ids_as_numbers(found), expected_rows)
    np.testing.assert_allclose([[s for _, s in hits] for hits in found], expected_scores, rtol=1e-5, atol=1e-5)
    stats = idx.stats()
    assert (stats.count, stats.dimension, stats.index_kind, stats.model_fingerprint) == (1500, 48, "flat", FP)


def test_an_upsert_of_a_held_id_replaces_it_and_says_so(idx):
    matrix = random_vectors(10, 8)
    idx.upsert(numbered(10), matrix)
    replacement = -matrix[3]
    reply = idx.upsert(["v3", "new"], [replacement, matrix[0] + 1], [{"label": "moved"}, {}])
    assert (reply.inserted, reply.replaced, reply.upserted, reply.count) == (1, 1, 2, 11)
    best = idx.search(replacement, 1)[0][0]
    assert best[0] == "v3" and best[1] == pytest.approx(1.0, abs=1e-6)
    assert dict(idx.get(["v3"]).items[0].metadata) == {"label": "moved"}


def test_within_one_call_the_last_item_of_an_id_wins(idx):
    messages = [index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("dup", [1, 0, 0, 0], {"v": "1"}),
                                                                     item("dup", [0, 1, 0, 0], {"v": "2"})]),
                index_pb2.UpsertRequest(items=[item("dup", [0, 0, 1, 0], {"v": "3"})])]
    reply = idx.stub.Upsert(iter(messages))
    assert (reply.count, reply.inserted, reply.upserted) == (1, 1, 1)
    stored = idx.get(["dup"]).items[0]
    assert dict(stored.metadata) == {"v": "3"}
    np.testing.assert_array_equal(vectors.from_proto(stored.vector), [0, 0, 1, 0])


def test_deleted_ids_are_never_returned_and_missing_ones_are_counted(idx):
    candidates = random_vectors(100, 16)
    idx.upsert(numbered(100), candidates)
    reply = idx.delete(["v0", "v1", "missing", "v0"])
    assert (reply.deleted, reply.not_found, reply.count) == (2, 1, 98)
    for exact in (False, True):
        found = idx.search(candidates[:2], 100, exact=exact)
        assert all(item_id not in ("v0", "v1") for hits in found for item_id, _ in hits)
    assert [i.id for i in idx.get(["v0", "v2"]).items] == ["v2"]


def test_get_returns_the_exact_vectors_as_sent_whatever_their_length(idx):
    sent = random_vectors(3, 8) * np.float32(3.5)
    sent[1] *= np.float32(1e-12)  # tiny and huge lengths are kept bit for bit
    sent[2] *= np.float32(1e12)
    idx.upsert(["g0", "g1", "g2"], sent, [{"n": 0}, {"n": 1}, {"n": 2}])
    got = {i.id: i for i in idx.get(["g0", "g1", "g2", "missing"]).items}
    assert sorted(got) == ["g0", "g1", "g2"]
    for i in range(3):
        assert vectors.from_proto(got[f"g{i}"].vector).tobytes() == sent[i].tobytes()
    assert got["g1"].typed_metadata["n"].int_value == 1 and got["g1"].metadata["n"] == "1"
    light = idx.get(["g0"], omit_vectors=True).items[0]
    assert light.id == "g0" and not light.vector.float32_le


def test_a_poison_call_stores_nothing_at_all(idx):
    """One call whose second message changes dimension (same fingerprint): refused whole, before anything
    is committed, and the index stays writable and restartable (the old write path committed both)."""
    idx.upsert(["keep"], random_vectors(1, 8))
    poison = [index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("p0", np.ones(8)), item("p1", np.ones(8))]),
              index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("p2", np.ones(5)), item("p3", np.ones(5))])]
    with pytest.raises(grpc.RpcError) as caught:
        idx.stub.Upsert(iter(poison))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "upsert message 1, item 2 (id 'p2'): dimension 5 differs from the call's first items (8)" in \
        caught.value.details()
    assert idx.stats().count == 1
    assert idx.get(["p0", "p1", "p2", "p3"]).items == []
    assert idx.upsert(["p0"], np.ones((1, 8))).count == 2  # the ids are free to write


@pytest.mark.parametrize("case, values, words", [
    ("all 1e-25", np.full(8, 1e-25), "vector norm 2.83e-25 is outside [1e-15, 1e+15]"),
    ("all 3e38", np.full(8, 3e38), "vector norm 8.49e+38 is outside [1e-15, 1e+15]"),
    ("subnormal", np.full(8, 1e-45), "is outside [1e-15, 1e+15]"),
    ("signed tiny", np.array([1e-25, 0, -1e-25, 0, 0, 0, 0, 0]), "is outside [1e-15, 1e+15]"),
    ("nan", np.array([1, np.nan, 0, 0, 0, 0, 0, 0]), "vector holds NaN or Inf"),
    ("zeros", np.zeros(8), "all zeros"),
])
def test_vectors_that_float32_normalisation_would_lose_are_refused(idx, case, values, words):
    idx.upsert(["ok"], random_vectors(1, 8))
    with pytest.raises(grpc.RpcError) as caught:
        idx.upsert(["ok2", "bad"], [np.ones(8), values])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "item 1 (id 'bad')" in caught.value.details() and words in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        idx.search(values, 3)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "query 0" in caught.value.details()
    assert idx.stats().count == 1


def test_tiny_and_huge_but_allowed_vectors_are_found_by_their_own_direction(idx):
    base = random_vectors(20, 8)
    scaled = base.copy()
    scaled[0] *= np.float32(1e-14)
    scaled[1] *= np.float32(1e14)
    idx.upsert(numbered(20), scaled)
    for row in (0, 1):
        top = idx.search(base[row] * np.float32(1e-14 if row == 0 else 1e14), 1)[0][0]
        assert top[0] == f"v{row}" and top[1] == pytest.approx(1.0, abs=1e-5)


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("case, code, words", [
    ("wrong dimension", grpc.StatusCode.INVALID_ARGUMENT, "dimension 5"),
    ("k zero", grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 1000, got 0"),
    ("k too large", grpc.StatusCode.INVALID_ARGUMENT, "k must be between 1 and 1000, got 1001"),
    ("other model", grpc.StatusCode.FAILED_PRECONDITION, "holds vectors of model"),
    ("no queries", grpc.StatusCode.INVALID_ARGUMENT, "no query vectors"),
    ("ragged bytes", grpc.StatusCode.INVALID_ARGUMENT, "not a multiple of 4"),
    ("empty filter values", grpc.StatusCode.INVALID_ARGUMENT, "any_of is empty"),
    ("unknown filter key", grpc.StatusCode.INVALID_ARGUMENT, "filter key 'colour' is held by no item of collection "
                                                            "'default' (keys held: label)"),
    ("unknown collection", grpc.StatusCode.NOT_FOUND, "no collection 'nope'"),
])
def test_bad_searches_get_the_right_status_and_a_message_naming_the_problem(idx, case, code, words):
    idx.upsert(numbered(10), random_vectors(10, 8), [{"label": "a"}] * 10)
    query = random_vectors(1, 8, seed=5)
    calls = {
        "wrong dimension": lambda: idx.search(random_vectors(1, 5), 3),
        "k zero": lambda: idx.search(query, 0),
        "k too large": lambda: idx.search(query, 1001),
        "other model": lambda: idx.search(query, 3, fingerprint="0" * 32),
        "no queries": lambda: idx.stub.Search(index_pb2.SearchRequest(model_fingerprint=FP, k=3)),
        "ragged bytes": lambda: idx.stub.Search(index_pb2.SearchRequest(model_fingerprint=FP, k=3,
                                                                        queries=[{"float32_le": b"abcdef"}])),
        "empty filter values": lambda: idx.stub.Search(index_pb2.SearchRequest(
            model_fingerprint=FP, k=3, queries=[vectors.to_proto(query[0])],
            filter=[index_pb2.MetadataCondition(key="label")])),
        "unknown filter key": lambda: idx.stub.Search(index_pb2.SearchRequest(
            model_fingerprint=FP, k=3, queries=[vectors.to_proto(query[0])],
            filter=[index_pb2.MetadataCondition(key="colour", any_of=["red"])])),
        "unknown collection": lambda: idx.stub.Search(index_pb2.SearchRequest(
            model_fingerprint=FP, k=3, queries=[vectors.to_proto(query[0])], collection="nope")),
    }
    error = refusal(calls[case])
    assert error.code() == code
    assert words in error.details()


@pytest.mark.parametrize("case, code, words", [
    ("other model", grpc.StatusCode.FAILED_PRECONDITION, "holds vectors of model"),
    ("wrong dimension", grpc.StatusCode.INVALID_ARGUMENT, "dimension 4"),
    ("empty id", grpc.StatusCode.INVALID_ARGUMENT, "item 0: id is empty"),
    ("no fingerprint", grpc.StatusCode.INVALID_ARGUMENT, "model_fingerprint is empty"),
    ("empty message", grpc.StatusCode.INVALID_ARGUMENT, "carries no items"),
    ("two models in one call", grpc.StatusCode.INVALID_ARGUMENT, "differs from the call's first message"),
    ("over the dimension cap", grpc.StatusCode.INVALID_ARGUMENT, "dimension 16385 is over the limit of 16384"),
    ("too many items in a call", grpc.StatusCode.INVALID_ARGUMENT, "more than 16384 items"),
    ("float NaN metadata", grpc.StatusCode.INVALID_ARGUMENT, "float values must be finite"),
    ("reserved key", grpc.StatusCode.INVALID_ARGUMENT, "starts with '_', which is reserved"),
    ("too many metadata keys", grpc.StatusCode.INVALID_ARGUMENT, "65 keys"),
    ("metadata too large", grpc.StatusCode.INVALID_ARGUMENT, "over the limits of 64 keys and 4096 bytes"),
    ("unknown collection", grpc.StatusCode.NOT_FOUND, "no collection 'nope'"),
])
def test_bad_upserts_get_the_right_status_and_write_nothing(idx, case, code, words):
    idx.upsert(numbered(10), random_vectors(10, 8))
    ok = item("new", np.ones(8))
    bad = {
        "other model": [index_pb2.UpsertRequest(model_fingerprint="0" * 32, items=[ok])],
        "wrong dimension": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("new", np.ones(4))])],
        "empty id": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("", np.ones(8))])],
        "no fingerprint": [index_pb2.UpsertRequest(items=[ok])],
        "empty message": [index_pb2.UpsertRequest(model_fingerprint=FP)],
        "two models in one call": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[ok]),
                                   index_pb2.UpsertRequest(model_fingerprint="e" * 32, items=[item("n2", np.ones(8))])],
        "over the dimension cap": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("new", np.ones(16385))])],
        "too many items in a call": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[
            item(f"n{i}", np.ones(8)) for i in range(s, s + 4096)]) for s in range(0, 5 * 4096, 4096)],
        "float NaN metadata": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[
            index_pb2.Item(id="new", vector=ok.vector, typed_metadata={"x": index_pb2.Value(float_value=np.nan)})])],
        "reserved key": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("new", np.ones(8), {"_x": "1"})])],
        "too many metadata keys": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[
            item("new", np.ones(8), {f"k{i}": "v" for i in range(65)})])],
        "metadata too large": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[
            item("new", np.ones(8), {"note": "v" * 1000, "more": "w" * 1000, "x": "y" * 1000, "z": "q" * 1000,
                                     "a": "b" * 200})])],
        "unknown collection": [index_pb2.UpsertRequest(model_fingerprint=FP, items=[ok], collection="nope")],
    }[case]
    error = refusal(lambda: idx.stub.Upsert(iter(bad)))
    assert error.code() == code, error.details()
    assert words in error.details()
    assert idx.stats().count == 10
    assert idx.get(["new", "n2"]).items == []


def test_search_of_an_empty_collection_returns_no_hits(idx):
    assert [len(hits) for hits in idx.search(random_vectors(2, 8), 5)] == [0, 0]


def test_everything_written_survives_a_restart(tmp_path):
    candidates = random_vectors(500, 16)
    running = start_index(tmp_path / "data")
    idx = Index(running.port)
    idx.upsert(numbered(500), candidates)
    idx.delete(["v7"])
    idx.upsert(["v8"], random_vectors(1, 16, seed=9), [{"label": "moved"}])
    before = idx.search(candidates[:20], 10)
    idx.close()
    running.stop(0)
    restarted = start_index(tmp_path / "data")
    idx = Index(restarted.port)
    try:
        stats = idx.stats()
        assert (stats.count, stats.dimension, stats.model_fingerprint) == (499, 16, FP)
        assert idx.search(candidates[:20], 10) == before
        assert dict(idx.get(["v8"]).items[0].metadata) == {"label": "moved"}
    finally:
        idx.close()
        restarted.stop(0)


def test_a_second_server_on_a_taken_port_fails_fast(tmp_path, index):
    from imgsim.server.runner import PortInUse

    with pytest.raises(PortInUse, match=f"cannot listen on 127.0.0.1:{index.port}"):
        start_index(tmp_path / "other", ServingConfig(port=index.port))
