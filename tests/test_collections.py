"""Collections, typed metadata, filters, scroll, count, export and import, through the SDK and real servers."""

import json
import time

import grpc
import numpy as np
import pytest

from client import AlreadyExists, InvalidArgument, ModelMismatch, NotFound, SimilarityClient
from client.export import export_collection, import_collection
from conftest import start_index
from index_service.config import KindParams
from indexing import clustered

SMALL = KindParams(ivf_nlist=16, ivf_nprobe=16, pq_m=32, lsh_tables=12, lsh_bits=8, lsh_radius=1, hnsw_ef_search=256)
KINDS = ["flat", "hnsw", "ivfpq", "lsh"]


@pytest.fixture
def client(index):
    with SimilarityClient(index=f"127.0.0.1:{index.port}") as opened:
        yield opened


def test_two_collections_with_their_own_model_and_dimension_live_side_by_side(client):
    client.create_collection("small", "flat")
    client.create_collection("wide", "hnsw", {"hnsw_m": 16})
    a, b = clustered(50, 8, seed=1), clustered(60, 32, seed=2)
    assert client.upsert([f"a{i}" for i in range(50)], a, fingerprint="model-a", collection="small").count == 50
    assert client.upsert([f"b{i}" for i in range(60)], b, fingerprint="model-b", collection="wide").count == 60
    assert client.search_vectors(a[3], k=1, fingerprint="model-a", collection="small")[0][0].id == "a3"
    assert client.search_vectors(b[4], k=1, fingerprint="model-b", collection="wide")[0][0].id == "b4"
    with pytest.raises(ModelMismatch) as caught:
        client.search_vectors(b[4], k=1, fingerprint="model-a", collection="wide")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "collection 'wide' holds vectors of model model-b, not of model-a" in str(caught.value)
    listed = {c.name: c for c in client.list_collections()}
    assert sorted(listed) == ["default", "small", "wide"]
    assert (listed["wide"].index_kind, listed["wide"].params["hnsw_m"], listed["wide"].dimension) == ("hnsw", 16, 32)
    assert client.stats("small").count == 50 and client.stats().count == 0


def test_creating_dropping_and_unknown_collections_answer_clearly(client, index, tmp_path):
    client.create_collection("temp")
    with pytest.raises(AlreadyExists):
        client.create_collection("temp")
    assert client.create_collection("temp", exist_ok=True).name == "temp"
    client.upsert(["x"], np.ones((1, 4)), fingerprint="m", collection="temp")
    folder = next(p for p in (index.servicer.registry.root).iterdir() if p.name == "temp")
    assert folder.exists()
    assert client.drop_collection("temp") is True
    assert not folder.exists()  # its data is deleted from disk
    assert client.drop_collection("temp", missing_ok=True) is False
    with pytest.raises(NotFound, match="no collection 'temp'"):
        client.stats("temp")
    with pytest.raises(InvalidArgument, match="cannot be dropped"):
        client.drop_collection("default")
    with pytest.raises(InvalidArgument, match="collection name 'Bad Name!' is not allowed"):
        client.create_collection("Bad Name!")


def test_a_collection_can_fix_its_model_at_creation(client):
    client.create_collection("fixed", fingerprint="model-x", dimension=4)
    with pytest.raises(ModelMismatch):
        client.upsert(["a"], np.ones((1, 4)), fingerprint="model-y", collection="fixed")
    with pytest.raises(InvalidArgument, match="dimension 5, collection 'fixed' holds dimension 4"):
        client.upsert(["a"], np.ones((1, 5)), fingerprint="model-x", collection="fixed")


def typed_metadata(i: int) -> dict:
    return {"label": ["cat", "dog", "bird", "fish"][i % 4], "n": i % 50, "weight": float(i % 7) / 2,
            "ok": i % 3 == 0, **({"rare": "yes"} if i % 11 == 0 else {})}


FILTERS = {
    "range on an integer": ({"n": {"gte": 10, "lt": 20}}, lambda m: 10 <= m["n"] < 20),
    "any of strings": ({"label": ["cat", "bird"]}, lambda m: m["label"] in ("cat", "bird")),
    "not": ({"$not": {"label": "dog"}}, lambda m: m["label"] != "dog"),
    "or": ({"$any": [{"ok": True}, {"weight": {"gt": 2.5}}]}, lambda m: m["ok"] or m["weight"] > 2.5),
    "and with a sparse key": ({"rare": "yes", "n": {"lte": 30}}, lambda m: m.get("rare") == "yes" and m["n"] <= 30),
    "not equal and none of": ({"label": {"ne": "fish"}, "n": {"nin": [1, 2, 3]}},
                              lambda m: m["label"] != "fish" and m["n"] not in (1, 2, 3)),
    "a float equal to an int": ({"weight": 3}, lambda m: m["weight"] == 3.0),
}


@pytest.mark.parametrize("kind", KINDS)
def test_typed_filters_equal_a_brute_force_filter_over_an_export(tmp_path, kind):
    running = start_index(tmp_path / "data", index_kind=kind, kind_params=SMALL)
    vectors = clustered(1200, 16, seed=3)
    try:
        with SimilarityClient(index=f"127.0.0.1:{running.port}") as client:
            client.upsert([f"v{i}" for i in range(1200)], vectors, [typed_metadata(i) for i in range(1200)],
                          fingerprint="m")
            export = tmp_path / "all.parquet"
            export_collection(client, "default", export, progress=False)
            import pyarrow.parquet as pq
            table = pq.read_table(export).to_pydict()
            held = {item_id: json.loads(meta) for item_id, meta in zip(table["id"], table["metadata"])}
            assert len(held) == 1200 and held["v11"]["rare"] == "yes" and held["v3"]["ok"] is True
            queries = vectors[:5] + 0.01
            for name, (where, holds) in FILTERS.items():
                expected = {item_id for item_id, meta in held.items() if holds(meta)}
                assert client.count(where) == len(expected), name
                assert {item.id for item in client.scroll(where=where)} == expected, name
                k = min(1000, max(1, len(expected)))
                for hits in client.search_vectors(queries, k=k, where=where, fingerprint="m"):
                    assert {h.id for h in hits} <= expected, name
                    assert len(hits) == min(k, len(expected)) or kind != "flat", name
                exact = client.search_vectors(queries, k=10, where=where, fingerprint="m", exact=True)
                allowed = np.asarray([int(i[1:]) for i in sorted(expected)])
                unit = vectors[allowed] / np.linalg.norm(vectors[allowed], axis=1, keepdims=True)
                for query, hits in zip(queries, exact):
                    scores = unit @ (query / np.linalg.norm(query))
                    best = allowed[np.argsort(-scores, kind="stable")[:10]]
                    assert [h.id for h in hits] == [f"v{i}" for i in best], name
    finally:
        running.stop(0)


def test_a_filter_on_a_key_no_item_has_is_refused_naming_it(client):
    client.upsert(["a"], np.ones((1, 4)), [{"label": "cat"}], fingerprint="m")
    with pytest.raises(InvalidArgument, match="filter key 'lable' is held by no item of collection 'default'"):
        client.search_vectors(np.ones(4), k=1, where={"lable": "cat"}, fingerprint="m")


def test_the_sdk_where_takes_scalars_and_lists_without_surprises(client):
    client.upsert(["a", "b", "c", "d"], np.eye(4) + 0.1,
                  [{"label": "10"}, {"label": "1"}, {"label": 10}, {"label": "0"}], fingerprint="m")
    assert {i.id for i in client.scroll(where={"label": "10"})} == {"a"}  # one string, not its characters
    assert {i.id for i in client.scroll(where={"label": 10})} == {"c"}  # the int, not the string
    assert {i.id for i in client.scroll(where={"label": ["1", "0"]})} == {"b", "d"}


def test_scroll_pages_through_every_item_once_in_a_stable_order_even_while_items_are_replaced(client):
    vectors = clustered(700, 8)
    ids = [f"i{n}" for n in range(700)]
    client.upsert(ids, vectors, fingerprint="m")
    seen, pages = [], client._index().shards[0].stub
    from imgsim.v1 import index_pb2
    cursor = ""
    while True:
        page = pages.Scroll(index_pb2.ScrollRequest(limit=64, cursor=cursor))
        seen += [item.id for item in page.items]
        if len(seen) == 320:  # halfway: replace items on both sides of the cursor
            client.upsert(ids[:300], vectors[:300] * 2, fingerprint="m")
        cursor = page.next_cursor
        if not cursor:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    again = [item.id for item in client.scroll(page_size=100)]
    assert again == seen  # the order is the ids' hash order: replacements do not move them


def test_export_drop_import_gives_identical_results_and_bit_identical_vectors(client, tmp_path):
    client.create_collection("pets", "hnsw", {"hnsw_m": 12})
    vectors = clustered(500, 24, seed=5) * np.float32(3.3)
    vectors[7] *= np.float32(1e-9)  # odd lengths survive bit for bit
    ids = [f"p{i}" for i in range(500)]
    client.upsert(ids, vectors, [typed_metadata(i) for i in range(500)], fingerprint="pet-model", collection="pets")
    queries = vectors[:20] + 0.05
    before = client.search_vectors(queries, k=10, fingerprint="pet-model", collection="pets", exact=True)
    out = tmp_path / "pets.parquet"
    assert export_collection(client, "pets", out, progress=False) == 500
    client.drop_collection("pets")
    assert import_collection(client, out, progress=False) == ("pets", 500)
    info = {c.name: c for c in client.list_collections()}["pets"]
    assert (info.index_kind, info.params["hnsw_m"], info.model_fingerprint, info.dimension) == \
        ("hnsw", 12, "pet-model", 24)
    after = client.search_vectors(queries, k=10, fingerprint="pet-model", collection="pets", exact=True)
    assert [[(h.id, h.score, h.metadata) for h in hits] for hits in after] == \
        [[(h.id, h.score, h.metadata) for h in hits] for hits in before]
    stored = client.get(ids, collection="pets")
    for i, item_id in enumerate(ids):
        assert stored[item_id].vector.tobytes() == vectors[i].tobytes()
        assert stored[item_id].metadata == typed_metadata(i)


def test_a_search_sets_its_own_effort_but_never_what_shapes_the_collection(client):
    """SearchRequest.params: search-time parameters for one call, checked like the collection's own."""
    client.create_collection("coarse", "ivfpq", {"ivf_nlist": 16, "ivf_nprobe": 1, "pq_m": 8, "rerank_factor": 1})
    vectors = clustered(10_000, 16, seed=9)  # ivfpq trains once 9,984 vectors are in
    client.upsert([f"v{i}" for i in range(len(vectors))], vectors, fingerprint="m", collection="coarse")
    deadline = time.monotonic() + 120
    while not ((stats := client.stats("coarse")).trained and stats.pending == 0):
        assert time.monotonic() < deadline, "ivfpq never finished training and encoding"
        time.sleep(0.2)
    queries = vectors[:30] + 0.05 * np.random.default_rng(1).standard_normal((30, 16)).astype(np.float32)

    def search(**options):
        return client.search_vectors(queries, k=10, fingerprint="m", collection="coarse", **options)
    exact = search(exact=True)
    # Every list visited, 10,000 candidates re-ranked: all items scored exactly, the exact answer.
    full = search(params={"ivf_nprobe": 16, "rerank_factor": 1000})
    for want, got in zip(exact, full):
        assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
    cheap = search()  # the collection's own: one list, 10 candidates
    assert sum(len({h.id for h in a} & {h.id for h in b}) for a, b in zip(cheap, exact)) < 0.9 * 300
    assert [[h.id for h in hits] for hits in search(params={"hnsw_ef_search": 4000})] == \
        [[h.id for h in hits] for hits in cheap]  # another kind's parameter: ignored
    with pytest.raises(InvalidArgument, match="params.ivf_nlist, params.pq_m cannot be set by a search"):
        search(params={"ivf_nlist": 4, "pq_m": 4})
    with pytest.raises(InvalidArgument, match="params.ivf_nprobe must be from 1 to 65536"):
        search(params={"ivf_nprobe": 0})
    client.create_collection("hashes", "lsh", {"lsh_bits": 2, "lsh_radius": 1})
    client.upsert(["a"], vectors[:1], fingerprint="m", collection="hashes")
    with pytest.raises(InvalidArgument, match=r"lsh_radius \(3\) cannot exceed lsh_bits \(2\)"):
        client.search_vectors(queries[:1], fingerprint="m", collection="hashes", params={"lsh_radius": 3})
