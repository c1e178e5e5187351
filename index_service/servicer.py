"""Translates between imgsim.v1.Index messages and the collection."""

import threading
import time

from imgsim.streams import with_idle_limit
from imgsim.v1 import common_pb2, index_pb2, index_pb2_grpc
from index_service import validation
from index_service.collection import Collection
from index_service.errors import DeadlineExceeded, NotReady, abort_for


# Group commit: consecutive messages of one stream are written in one transaction (one fsync) up to this
# many items, about 48 MiB of 768-d vectors. Nothing is acknowledged before the stream's reply anyway.
GROUP_COMMIT_ITEMS = 16384


class UpsertBatch:
    """Validated items of one Upsert stream waiting to be written together."""

    def __init__(self, collection: Collection):
        self.collection = collection
        self.items: list = []
        self.fingerprint = ""
        self.written = 0

    def add(self, fingerprint: str, items: list) -> None:
        if self.items and fingerprint != self.fingerprint:
            self.write()  # one transaction speaks for one model
        self.fingerprint = fingerprint
        self.items += items
        if len(self.items) >= GROUP_COMMIT_ITEMS:
            self.write()

    def write(self) -> None:
        if self.items:
            items, self.items = self.items, []
            self.collection.upsert(self.fingerprint, items)
            self.written += len(items)


class IndexServicer(index_pb2_grpc.IndexServicer):
    def __init__(self, collection: Collection, search_seconds=None, stream_idle_s: float = 60.0):
        self.collection = collection
        self.stream_idle_s = stream_idle_s
        self.search_seconds = search_seconds  # a histogram labelled by kind and exactness, or None
        self.ready = threading.Event()

    def _check_ready(self) -> None:
        if not self.ready.is_set():
            raise NotReady("the index is not ready: it is loading or the server is stopping")

    def Upsert(self, request_iterator, context):
        try:
            self._check_ready()
            batch = UpsertBatch(self.collection)
            try:
                for request in with_idle_limit(request_iterator, self.stream_idle_s):
                    batch.add(request.model_fingerprint,
                              validation.upsert_items(request, first_position=batch.written + len(batch.items)))
            finally:
                # Whatever was validated before an error is written: the messages before a bad one stay.
                batch.write()
            return index_pb2.UpsertResponse(upserted=batch.written, count=self.collection.count)
        except Exception as err:
            abort_for(context, err)

    def Delete(self, request, context):
        try:
            self._check_ready()
            ids = validation.request_ids(request, "delete", validation.MAX_DELETE_IDS)
            deleted = self.collection.delete(ids)
            return index_pb2.DeleteResponse(deleted=deleted, not_found=len(set(ids)) - deleted,
                                            count=self.collection.count)
        except Exception as err:
            abort_for(context, err)

    def Search(self, request, context):
        try:
            self._check_ready()
            queries, conditions = validation.search_queries(request)
            if context.time_remaining() is not None and context.time_remaining() <= 0:
                raise DeadlineExceeded("the deadline passed before the search started; nothing was computed")
            started = time.perf_counter()
            found = self.collection.search(request.model_fingerprint, queries, request.k, conditions, request.exact)
            if self.search_seconds is not None:
                self.search_seconds.labels(self.collection.index_kind, str(request.exact).lower()).observe(
                    time.perf_counter() - started)
            return index_pb2.SearchResponse(results=[
                index_pb2.QueryResult(hits=[index_pb2.Hit(id=h.id, score=h.score, metadata=h.metadata) for h in hits])
                for hits in found
            ])
        except Exception as err:
            abort_for(context, err)

    def Get(self, request, context):
        try:
            self._check_ready()
            stored = self.collection.get(validation.request_ids(request, "get", validation.MAX_GET_IDS))
            return index_pb2.GetResponse(items=[
                index_pb2.Item(id=item.id, vector=common_pb2.Vector(float32_le=item.vector), metadata=item.metadata)
                for item in stored])
        except Exception as err:
            abort_for(context, err)

    def GetStats(self, request, context):
        return index_pb2.GetStatsResponse(count=self.collection.count, dimension=self.collection.dimension,
                                          index_kind=self.collection.index_kind,
                                          model_fingerprint=self.collection.fingerprint)
