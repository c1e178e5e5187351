"""Translates between imgsim.v1.Index messages and the collection."""

import threading
import time

from imgsim.streams import with_idle_limit
from imgsim.v1 import common_pb2, index_pb2, index_pb2_grpc
from index_service import validation
from index_service.collection import Collection
from index_service.errors import DeadlineExceeded, NotReady, abort_for


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
            upserted = 0
            for request in with_idle_limit(request_iterator, self.stream_idle_s):
                items = validation.upsert_items(request, first_position=upserted)
                self.collection.upsert(request.model_fingerprint, items)
                upserted += len(items)
            return index_pb2.UpsertResponse(upserted=upserted, count=self.collection.count)
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
