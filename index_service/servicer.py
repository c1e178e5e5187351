"""Translates between imgsim.v1.Index messages and the collections. Blocking work (validation, search,
SQLite, files) runs in a bounded thread pool; the event loop only moves messages, so silent or slow
streams cost a coroutine each and never starve other calls or health checks. The one exception is a search
that reads about a millisecond of memory and finds the collection free of writers: it runs on the loop,
where the hand-off to the pool would cost a sizeable share of it."""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from imgsim import vectors
from imgsim.streams import idle_limited
from imgsim.v1 import index_pb2, index_pb2_grpc
from index_service import metadata as meta
from index_service import validation
from index_service.collection import Collection
from index_service.config import DEFAULT_COLLECTION, KINDS, MAX_DIMENSION
from index_service.errors import Cancelled, DeadlineExceeded, InvalidArgument, NotReady, status_for
from index_service.id_table import hash_cursor, parse_cursor
from index_service.locks import Busy
from index_service.writes import WriteOp


def deadline_of(context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e6 else time.monotonic() + remaining


# A call whose deadline is this close when its last message arrives cannot be committed and answered in
# time (and a client whose deadline passed may already be gone while the server still counts a few ms).
COMMIT_MARGIN_S = 0.05
ROOM_POLL_S = 0.05
# An Upsert call of at most this many items is checked and queued on the event loop (about 0.1 ms an item):
# in the checking pool it waited behind a bulk load's 4,096-item messages, three times (each message, the
# assembly, the hand-over to the writer).
QUICK_WRITE_ITEMS = 64


async def still_open(context, cut: bool) -> None:
    """grpc.aio ends a client stream the same way whether the client closed it or the call was cancelled,
    ran out of time or was cut by the server's shutdown; a cancellation reaches the handler a few loop turns
    later. A write must not commit for a call that is gone: let a cancellation arrive, and refuse a call
    whose deadline has passed or that the shutdown is cutting."""
    for _ in range(8):
        await asyncio.sleep(0)
    if cut:
        raise Cancelled("the server is stopping and cut the call before it committed; nothing was kept")
    remaining = context.time_remaining()
    if remaining is not None and remaining < COMMIT_MARGIN_S:
        raise DeadlineExceeded("the deadline passed (or was too close to commit in time) when the call's last "
                               "message arrived; nothing was kept")
    if context.cancelled():
        raise Cancelled("the call was cancelled before it committed; nothing was kept")


def item_message(item, with_vector: bool) -> index_pb2.Item:
    message = index_pb2.Item(id=item.id, version=item.version)
    if with_vector and item.vector is not None:
        message.vector.CopyFrom(vectors.to_proto(item.vector))
    meta.fill_proto(item.metadata, message.metadata, message.typed_metadata)
    return message


def collection_info(c: Collection) -> index_pb2.CollectionInfo:
    return index_pb2.CollectionInfo(name=c.name, index_kind=c.kind, params=index_pb2.IndexParams(**c.params.as_dict()),
                                    model_fingerprint=c.fingerprint, dimension=c.dimension, count=c.count)


def stats_message(c: Collection) -> index_pb2.GetStatsResponse:
    s = c.stats()
    return index_pb2.GetStatsResponse(
        count=s.count, dimension=s.dimension, index_kind=s.kind, model_fingerprint=s.fingerprint, collection=s.name,
        dead=s.dead, vector_bytes=s.vector_bytes, catalog_bytes=s.catalog_bytes, snapshot_bytes=s.snapshot_bytes,
        last_seq=s.last_seq, snapshot_seq=s.snapshot_seq, trained=s.trained, damaged=s.damaged,
        pending=s.pending, snapshotting=s.snapshotting)


class IndexServicer(index_pb2_grpc.IndexServicer):
    def __init__(self, work: ThreadPoolExecutor, stream_idle_s: float = 60.0, search_seconds=None,
                 checking: ThreadPoolExecutor | None = None):
        self.work = work
        # Checking a write's messages (up to 16,384 items a call) runs in a pool of its own, so that searches
        # never queue behind a bulk load's validation; the OS shares the cores between the two.
        self.checking = checking or work
        self.stream_idle_s = stream_idle_s
        self.search_seconds = search_seconds  # a histogram labelled by kind and exactness, or None
        self.registry = None  # set once the data directory is loaded
        self.cut = False  # set when shutdown is about to cut the calls still open

    async def _run(self, context, function, *args, pool: ThreadPoolExecutor | None = None, inline: bool = False):
        """Runs blocking work in a pool (reads' by default), or here if `inline` (short work only); any error
        ends the call with its mapped status."""
        try:
            if self.registry is None:
                raise NotReady("the index is not ready: it is loading its data")
            if inline:
                return function(*args)
            return await asyncio.get_running_loop().run_in_executor(pool or self.work, function, *args)
        except Exception as err:
            code, message = status_for(err)
            await context.abort(code, message)

    @staticmethod
    def _write_op(context, **fields) -> WriteOp:
        """A write that is dropped before its commit if its call ends first (cancelled, past its deadline, cut
        by shutdown): the client then hears an error, and nothing of the write is kept."""
        op = WriteOp(deadline=deadline_of(context), **fields)
        # The callback holds the event only: grpc keeps a finished call's callbacks, and through `op` they
        # kept every call's vectors alive (2 x 48 MiB per 16,384-item message, about 2.4 GiB at 1M).
        abandoned = op.abandoned
        context.add_done_callback(lambda _: abandoned.set())
        if context.cancelled():
            op.abandoned.set()
        return op

    def _collection(self, name: str) -> Collection:
        return self.registry.get(name)

    async def Upsert(self, request_iterator, context):
        call = validation.UpsertCall()
        try:
            async for request in idle_limited(request_iterator, self.stream_idle_s):
                small = len(call.ids) + len(request.items) + len(request.batch.ids) <= QUICK_WRITE_ITEMS
                await self._run(context, call.add, request, pool=self.checking, inline=small)
            await still_open(context, self.cut)
        except Exception as err:
            if isinstance(err, grpc.aio.AbortError):
                raise
            code, message = status_for(err)
            await context.abort(code, message)
        op = self._write_op(context, fingerprint=call.fingerprint, only_absent=call.only_absent)

        def prepare():
            op.items = call.items()
            op.hashes()  # taken here, so that queueing it is quick enough for the event loop
            return self._collection(call.collection)

        small = len(call.ids) <= QUICK_WRITE_ITEMS
        collection = await self._run(context, prepare, pool=self.checking, inline=small)
        future = await self._run(context, collection.submit, op, True, inline=True)
        while future is None:  # a bulk load goes at the pace of the background tail work
            await asyncio.sleep(ROOM_POLL_S)
            future = await self._run(context, collection.submit, op, not op.expired(), inline=True)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            op.abandoned.set()  # the caller is gone: if not committed yet, it never will be
            raise
        except Exception as err:
            code, message = status_for(err)
            await context.abort(code, message)
        return index_pb2.UpsertResponse(upserted=result.inserted + result.replaced, count=result.count,
                                        inserted=result.inserted, replaced=result.replaced,
                                        skipped_ids=result.skipped_ids, version=result.version)

    async def Delete(self, request, context):
        op = self._write_op(context)

        def prepare():
            op.delete_ids = validation.request_ids(request.ids, "delete", validation.MAX_DELETE_IDS)
            op.versions = validation.delete_versions(request, op.delete_ids)
            return self._collection(request.collection).submit(op)

        future = await self._run(context, prepare)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            op.abandoned.set()
            raise
        except Exception as err:
            code, message = status_for(err)
            await context.abort(code, message)
        return index_pb2.DeleteResponse(deleted=result.deleted, not_found=result.not_found, count=result.count,
                                        deleted_ids=result.deleted_ids, changed_ids=result.changed_ids)

    async def Search(self, request, context):
        def search(wait: bool = True):
            queries = validation.search_queries(request)
            params = validation.search_params(request)
            where = validation.where_of(request.filter, request.where if request.HasField("where") else None)
            collection = self._collection(request.collection)
            started = time.perf_counter()
            found = collection.search(request.model_fingerprint, queries, request.k, where, request.exact, params,
                                      wait)
            if self.search_seconds is not None:
                self.search_seconds.labels(collection.kind, str(request.exact).lower()).observe(
                    time.perf_counter() - started)
            response = index_pb2.SearchResponse()
            for hits in found:
                result = response.results.add()
                for hit in hits:
                    message = result.hits.add(id=hit.id, score=hit.score)
                    meta.fill_proto(hit.metadata, message.metadata, message.typed_metadata)
            return response

        if self._is_quick(request):
            try:
                return search(wait=False)
            except Busy:
                pass  # a writer holds the collection: wait for it in the pool, not here
            except Exception as err:
                code, message = status_for(err)
                await context.abort(code, message)
        return await self._run(context, search)

    def _is_quick(self, request: index_pb2.SearchRequest) -> bool:
        """A small search of memory runs on the event loop: measured at 10k x 768 flat, the hand-off to a
        worker thread and back was 0.15-0.3 ms of a 2.5 ms call, and the search itself about 1 ms; longer
        searches, filters, exact scans and anything that reads files go to the pool."""
        if self.registry is None or request.exact or request.filter or request.HasField("where"):
            return False
        collection = self.registry.collections.get(request.collection or DEFAULT_COLLECTION)
        if collection is None or not request.queries:
            return False
        try:
            params = validation.search_params(request)
        except InvalidArgument:
            return False
        return collection.quick_search(len(request.queries), params)

    async def Get(self, request, context):
        def get():
            ids = validation.request_ids(request.ids, "get", validation.MAX_GET_IDS)
            found, damaged = self._collection(request.collection).get(ids, request.omit_vectors)
            return index_pb2.GetResponse(items=[item_message(item, not request.omit_vectors) for item in found],
                                         damaged_ids=damaged)
        return await self._run(context, get)

    async def Scroll(self, request, context):
        def scroll():
            limit = validation.scroll_limit(request.limit)
            try:
                cursor = parse_cursor(request.cursor) if request.cursor else None
            except ValueError:
                raise InvalidArgument(f"cursor {request.cursor[:40]!r} is not one this service returned") from None
            where = validation.where_of([], request.where if request.HasField("where") else None)
            items, last = self._collection(request.collection).scroll(cursor, limit, where, request.with_vectors)
            return index_pb2.ScrollResponse(items=[item_message(i, request.with_vectors) for i in items],
                                            next_cursor=hash_cursor(*last) if last else "")
        return await self._run(context, scroll)

    async def Count(self, request, context):
        def count():
            where = validation.where_of([], request.where if request.HasField("where") else None)
            return index_pb2.CountResponse(count=self._collection(request.collection).count_where(where))
        return await self._run(context, count)

    async def GetStats(self, request, context):
        return await self._run(context, lambda: stats_message(self._collection(request.collection)))

    async def CreateCollection(self, request, context):
        def create():
            dimension = request.dimension
            if bool(request.model_fingerprint) != bool(dimension):
                raise InvalidArgument("model_fingerprint and dimension are fixed together: give both or neither")
            if dimension > MAX_DIMENSION:
                raise InvalidArgument(f"dimension {dimension} is over the limit of {MAX_DIMENSION}")
            kind = request.index_kind
            if kind and kind not in KINDS:
                raise InvalidArgument(f"index_kind must be flat, hnsw, ivfpq or lsh, got {kind!r}")
            collection, created = self.registry.create(request.name, kind, validation.index_params(request.params),
                                                       request.model_fingerprint, dimension, request.exist_ok)
            return index_pb2.CreateCollectionResponse(collection=collection_info(collection), created=created)
        return await self._run(context, create)

    async def ListCollections(self, request, context):
        def listing():
            return index_pb2.ListCollectionsResponse(
                collections=[collection_info(c) for _, c in sorted(self.registry.collections.items())])
        return await self._run(context, listing)

    async def DescribeCollection(self, request, context):
        def describe():
            collection = self._collection(request.name)
            return index_pb2.DescribeCollectionResponse(collection=collection_info(collection),
                                                        stats=stats_message(collection))
        return await self._run(context, describe)

    async def DropCollection(self, request, context):
        return await self._run(context, lambda: index_pb2.DropCollectionResponse(
            dropped=self.registry.drop(request.name, request.missing_ok)))

    async def Compact(self, request, context):
        def compact():
            collection = self._collection(request.collection)
            return index_pb2.CompactResponse(reclaimed=self.registry.maintenance[collection.name].compact())
        return await self._run(context, compact)

