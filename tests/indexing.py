"""Helpers for index tests: vectors, the exact numpy oracle, and raw protobuf calls (the contract itself, as
a client in another language would make them)."""

import grpc
import numpy as np

from imgsim import vectors
from imgsim.v1 import index_pb2, index_pb2_grpc

FP = "f" * 32


def random_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def clustered(n: int, d: int, seed: int = 0, centres: int = 20) -> np.ndarray:
    """Centres plus noise: more like real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, d)).astype(np.float32)
    return middle[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)


def exact_top_k(candidates: np.ndarray, queries: np.ndarray, k: int,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(positions, scores) of the exact cosine top k, in float64."""
    c = candidates.astype(np.float64)
    q = queries.astype(np.float64)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores = q @ c.T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def item(item_id: str, vector, metadata: dict | None = None) -> index_pb2.Item:
    message = index_pb2.Item(id=item_id, vector=vectors.to_proto(np.asarray(vector, dtype=np.float32)))
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            message.metadata[key] = value
        elif isinstance(value, bool):
            message.typed_metadata[key].bool_value = value
        elif isinstance(value, int):
            message.typed_metadata[key].int_value = value
        else:
            message.typed_metadata[key].float_value = value
    return message


class Index:
    """Raw calls to an index service."""

    def __init__(self, port: int, collection: str = ""):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = index_pb2_grpc.IndexStub(self.channel)
        self.collection = collection

    def close(self) -> None:
        self.channel.close()

    def upsert(self, ids, matrix, metadata=None, fingerprint: str = FP, per_message: int = 4096, **call):
        metadata = metadata or [{} for _ in ids]

        def messages():
            for start in range(0, len(ids), per_message):
                yield index_pb2.UpsertRequest(
                    model_fingerprint=fingerprint, collection=self.collection,
                    items=[item(i, v, m) for i, v, m in zip(ids[start:start + per_message],
                                                              matrix[start:start + per_message],
                                                              metadata[start:start + per_message])])
        return self.stub.Upsert(messages(), **call)

    def search(self, queries, k: int, fingerprint: str = FP, where=None, exact: bool = False, **call):
        request = index_pb2.SearchRequest(model_fingerprint=fingerprint, k=k, exact=exact, collection=self.collection,
                                          queries=[vectors.to_proto(q) for q in np.atleast_2d(queries)], where=where)
        return [[(h.id, h.score) for h in r.hits] for r in self.stub.Search(request, **call).results]

    def get(self, ids, omit_vectors: bool = False) -> index_pb2.GetResponse:
        return self.stub.Get(index_pb2.GetRequest(ids=ids, collection=self.collection, omit_vectors=omit_vectors))

    def delete(self, ids) -> index_pb2.DeleteResponse:
        return self.stub.Delete(index_pb2.DeleteRequest(ids=ids, collection=self.collection))

    def stats(self) -> index_pb2.GetStatsResponse:
        return self.stub.GetStats(index_pb2.GetStatsRequest(collection=self.collection))

    def count(self, where=None) -> int:
        return self.stub.Count(index_pb2.CountRequest(collection=self.collection, where=where)).count

    def scroll_all(self, with_vectors: bool = False, limit: int = 97, where=None) -> list[index_pb2.Item]:
        items, cursor = [], ""
        while True:
            page = self.stub.Scroll(index_pb2.ScrollRequest(collection=self.collection, cursor=cursor, limit=limit,
                                                            with_vectors=with_vectors, where=where))
            items += page.items
            cursor = page.next_cursor
            if not cursor:
                return items


def ids_as_numbers(found) -> list[list[int]]:
    return [[int(item_id[1:]) for item_id, _ in hits] for hits in found]


def condition(key: str, **test) -> index_pb2.Filter:
    return index_pb2.Filter(condition=index_pb2.Condition(key=key, **test))
