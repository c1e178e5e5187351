"""The index's refusals of malformed collections, metadata, filters and pages, each against a real server:
the status code, a message naming what was wrong, and nothing of a refused write kept (docs/errors.md)."""

import grpc
import numpy as np
import pytest

from imgsim import vectors
from imgsim.v1 import index_pb2
from indexing import FP, Index, condition, item

V = np.ones(4, dtype=np.float32)


def nested(depth: int) -> index_pb2.Filter:
    where = condition("label", equals=index_pb2.Value(string_value="a"))
    for _ in range(depth):
        where = index_pb2.Filter(**{"not": where})
    return where


def many_conditions(n: int) -> index_pb2.Filter:
    parts = [condition("label", equals=index_pb2.Value(string_value=str(i))) for i in range(n)]
    return index_pb2.Filter(any=index_pb2.FilterList(filters=parts))


def searching(where: index_pb2.Filter):
    return lambda stub: stub.Search(index_pb2.SearchRequest(model_fingerprint=FP, k=1, where=where,
                                                            queries=[vectors.to_proto(V)]))


def upserting(metadata_item: index_pb2.Item):
    return lambda stub: stub.Upsert(iter([index_pb2.UpsertRequest(model_fingerprint=FP, items=[metadata_item])]))


def with_typed(key: str, value: index_pb2.Value) -> index_pb2.Item:
    message = item("new", V)
    message.typed_metadata[key].CopyFrom(value)
    return message


INVALID = grpc.StatusCode.INVALID_ARGUMENT
REFUSALS = {
    "filter nested too deep": (searching(nested(17)), INVALID, "nested deeper than 16 levels"),
    "filter with too many conditions": (searching(many_conditions(257)), INVALID, "more than 256 conditions"),
    "filter any_of with no values": (
        searching(condition("label", any_of=index_pb2.ValueList())), INVALID, "any_of lists no values"),
    "filter all with no filters": (
        searching(index_pb2.Filter(all=index_pb2.FilterList())), INVALID, "lists no filters"),
    "filter condition with no test": (searching(condition("label")), INVALID, "condition has no test"),
    "filter condition with no key": (
        searching(condition("", equals=index_pb2.Value(int_value=1))), INVALID, "condition has no key"),
    "range with no bound": (searching(condition("size", range=index_pb2.Range())), INVALID, "range has no bound"),
    "range with an infinite bound": (
        searching(condition("size", range=index_pb2.Range(gt=float("inf")))), INVALID, "bounds must be finite"),
    "filter on a key no item holds": (
        searching(condition("lable", equals=index_pb2.Value(string_value="a"))), INVALID,
        "filter key 'lable' is held by no item of collection 'default' (keys held: label, size)"),
    "metadata value of no kind": (upserting(with_typed("x", index_pb2.Value())), INVALID, "the value is empty"),
    "metadata float NaN": (
        upserting(with_typed("x", index_pb2.Value(float_value=float("nan")))), INVALID, "must be finite"),
    "metadata key reserved": (
        upserting(with_typed("_x", index_pb2.Value(int_value=1))), INVALID, "starts with '_', which is reserved"),
    "metadata key in both maps": (
        upserting(index_pb2.Item(id="new", vector=vectors.to_proto(V), metadata={"k": "a"},
                                 typed_metadata={"k": index_pb2.Value(int_value=1)})),
        INVALID, "key 'k' is in both metadata and typed_metadata"),
    "metadata string over 1024 bytes": (
        upserting(with_typed("x", index_pb2.Value(string_value="é" * 600))), INVALID, "over the limit of"),
    "scroll page over the limit": (
        lambda stub: stub.Scroll(index_pb2.ScrollRequest(limit=5000)), INVALID, "limit 5000 is over the limit of 4096"),
    "scroll cursor not ours": (
        lambda stub: stub.Scroll(index_pb2.ScrollRequest(cursor="made-up")), INVALID,
        "cursor 'made-up' is not one this service returned"),
    "collection name not allowed": (
        lambda stub: stub.CreateCollection(index_pb2.CreateCollectionRequest(name="Bad Name!")), INVALID,
        "collection name 'Bad Name!' is not allowed"),
    "collection of an unknown kind": (
        lambda stub: stub.CreateCollection(index_pb2.CreateCollectionRequest(name="c", index_kind="annoy")),
        INVALID, "index_kind must be flat, hnsw, ivfpq or lsh, got 'annoy'"),
    "collection with a fingerprint but no dimension": (
        lambda stub: stub.CreateCollection(index_pb2.CreateCollectionRequest(name="c", model_fingerprint="m")),
        INVALID, "give both or neither"),
    "collection parameter out of range": (
        lambda stub: stub.CreateCollection(index_pb2.CreateCollectionRequest(
            name="c", index_kind="hnsw", params=index_pb2.IndexParams(hnsw_m=1))), INVALID, "params.hnsw_m must be"),
    "collection that exists": (
        lambda stub: stub.CreateCollection(index_pb2.CreateCollectionRequest(name="default")),
        grpc.StatusCode.ALREADY_EXISTS, "collection 'default' exists already"),
    "dropping the default collection": (
        lambda stub: stub.DropCollection(index_pb2.DropCollectionRequest(name="default")), INVALID,
        "the default collection cannot be dropped"),
    "conditional delete with too few versions": (
        lambda stub: stub.Delete(index_pb2.DeleteRequest(ids=["a", "b"], if_versions=[1])), INVALID,
        "if_versions has 1 values for 2 ids; give one per id, or none"),
    "conditional delete naming an id twice": (
        lambda stub: stub.Delete(index_pb2.DeleteRequest(ids=["a", "a"], if_versions=[1, 1])), INVALID,
        "with if_versions, the ids must be distinct"),
    "a collection that does not exist": (
        lambda stub: stub.Count(index_pb2.CountRequest(collection="nope")), grpc.StatusCode.NOT_FOUND,
        "no collection 'nope'"),
}


@pytest.fixture
def held(index):
    raw = Index(index.port)
    raw.upsert(["a", "b"], np.stack([V, -V]), [{"label": "a", "size": 3}, {"label": "b", "size": 5}])
    yield raw
    raw.close()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_malformed_request_is_refused_with_its_code_and_reason_and_leaves_no_trace(held, case):
    call, code, message = REFUSALS[case]
    before = [(i.id, dict(i.metadata), dict(i.typed_metadata)) for i in held.scroll_all(with_vectors=True)]
    with pytest.raises(grpc.RpcError) as caught:
        call(held.stub)
    assert caught.value.code() == code, caught.value.details()
    assert message in caught.value.details()
    after = [(i.id, dict(i.metadata), dict(i.typed_metadata)) for i in held.scroll_all(with_vectors=True)]
    assert after == before
    assert [c.name for c in held.stub.ListCollections(index_pb2.ListCollectionsRequest()).collections] == ["default"]
