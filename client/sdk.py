"""SimilarityClient: embeds images with the embedder service and searches them with the index service."""

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import grpc
import numpy as np

from client.channels import ClientTls, open_channel
from client.errors import InvalidArgument, translated_errors
from client.filters import metadata_of, to_filter
from client.images import ImageLike, encoded, is_single
from client.results import (CollectionInfo, Hit, IndexStats, ModelInfo, PartialHits, StoredItem, WriteReport)
from client.shards import ShardedIndex
from imgsim import vectors
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc, index_pb2

log = logging.getLogger(__name__)
IMAGES_PER_MESSAGE = 32
MAX_K = 1000
FINGERPRINT_TTL_S = 10.0


@dataclass(frozen=True)
class Embeddings:
    """Vectors and the fingerprint of the model that made them (None rows are images that failed)."""
    vectors: np.ndarray
    fingerprint: str


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise InvalidArgument(f"k must be an integer from 1 to {MAX_K}, got {k!r}", grpc.StatusCode.INVALID_ARGUMENT)
    return int(k)


def id_list(ids: Sequence[str] | str, what: str = "ids") -> list[str]:
    if isinstance(ids, str):
        raise InvalidArgument(f"{what} must be a list of strings, got the string {ids[:40]!r} (wrap it: [{ids[:20]!r}])",
                              grpc.StatusCode.INVALID_ARGUMENT)
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise InvalidArgument(f"{what} must be strings; got {type(bad[0]).__name__} {bad[0]!r}",
                              grpc.StatusCode.INVALID_ARGUMENT)
    return ids


def hits_of(results) -> list[list[Hit]]:
    return [[Hit(h.id, h.score, metadata_of(h)) for h in hits] for hits in results]


def collection_info(message: index_pb2.CollectionInfo) -> CollectionInfo:
    params = {field.name: value for field, value in message.params.ListFields()}
    return CollectionInfo(message.name, message.index_kind, params, message.model_fingerprint, message.dimension,
                          message.count)


class SimilarityClient:
    """Chains the two services: images -> embedder -> vectors -> index -> hits.

    Args:
        embedder: address of the embedder ("host:port"), or a list of replica addresses to spread calls
            over (round robin). A DNS name with several records is spread over all of them.
        index: address of the index service, or a list of shard addresses: each id lives on the shard
            a stable hash of it picks, and searches ask every shard and merge their top k.
        collection: the collection calls use unless they name another ("default" unless given).
        timeout: seconds each unary call may take before it fails with DeadlineExceeded.
        tls: TLS settings when the services serve TLS (ClientTls); None for plain connections.
        token: the bearer token, when the services require one.
        stream_retry_s: how long a stream to an unreachable embedder is retried, with backoff, before
            Unavailable is raised (progress resets it).
    """

    def __init__(self, embedder: str | Sequence[str] | None = None, index: str | Sequence[str] | None = None,
                 timeout: float = 60.0, tls: ClientTls | None = None, token: str | None = None,
                 stream_retry_s: float = 30.0, collection: str = "default"):
        self.timeout = timeout
        self.stream_retry_s = stream_retry_s
        self.collection = collection
        self._tls, self._token = tls, token
        self._channels = []
        self._embedder = self._shards = None
        self.embedder_address, self.index_address = embedder, index
        if embedder:
            self._embedder = embedder_pb2_grpc.EmbedderStub(self._open(embedder))
        if index:
            addresses = [index] if isinstance(index, str) else list(index)
            self._shards = ShardedIndex([self._open(a) for a in addresses], addresses, timeout)
        self._model_lock = threading.Lock()
        self._model: tuple[float, ModelInfo] | None = None

    def _open(self, address) -> grpc.Channel:
        channel = open_channel(address, self._tls, self._token)
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "SimilarityClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _embedder_stub(self) -> embedder_pb2_grpc.EmbedderStub:
        if self._embedder is None:
            raise ValueError("this client was made without an embedder address")
        return self._embedder

    def _index(self) -> ShardedIndex:
        if self._shards is None:
            raise ValueError("this client was made without an index address")
        return self._shards

    def _collection(self, collection: str | None) -> str:
        return collection or self.collection

    # The embedder.

    def model_info(self) -> ModelInfo:
        """Describes the model the embedder serves (asked anew at every call)."""
        with translated_errors("embedder"):
            info = self._embedder_stub().GetModelInfo(embedder_pb2.GetModelInfoRequest(), timeout=self.timeout)
        model = ModelInfo(info.model_id, info.revision, info.dimension, (info.image_height, info.image_width),
                          info.device, info.dtype, info.model_fingerprint, info.max_batch_size)
        with self._model_lock:
            self._model = (time.monotonic(), model)
        return model

    @property
    def fingerprint(self) -> str:
        """The embedder's current model fingerprint (asked again when the last answer is over 10 s old)."""
        with self._model_lock:
            cached = self._model
        if cached is None or time.monotonic() - cached[0] > FINGERPRINT_TTL_S:
            return self.model_info().fingerprint
        return cached[1].fingerprint

    def embed(self, images: ImageLike | Sequence[ImageLike], raw: bool = False,
              return_fingerprint: bool = False) -> np.ndarray | Embeddings:
        """Embeds images: bytes, paths, PIL images or uint8 arrays.

        Args:
            images: one image or a sequence of them.
            raw: True for the model's raw embedding; False (default) for L2-normalised vectors.
            return_fingerprint: True to get Embeddings(vectors, fingerprint), the fingerprint of the model that
                made these very vectors.

        Returns:
            A float32 array (n, dimension), or (dimension,) for a single image; or Embeddings.

        Raises:
            InvalidArgument: an image could not be embedded; the message names each one.
        """
        single = is_single(images)
        batch = [images] if single else list(images)
        if not batch:
            raise InvalidArgument("no images to embed", grpc.StatusCode.INVALID_ARGUMENT)
        items = [(str(i), encoded(image)) for i, image in enumerate(batch)]
        good, failed, fingerprints = [], [], set()
        with translated_errors("embedder"):
            for result, fingerprint in self._embed_stream(lambda start: items[start:], IMAGES_PER_MESSAGE, raw):
                fingerprints.add(fingerprint)
                if result.HasField("error"):
                    failed.append(result.error.message)
                else:
                    good.append(vectors.from_proto(result.vector))
        if failed:
            raise InvalidArgument("; ".join(failed), grpc.StatusCode.INVALID_ARGUMENT)
        if len(fingerprints) > 1:
            raise InvalidArgument(f"the embedder changed model while embedding this batch ({sorted(fingerprints)}); "
                                  "embed it again", grpc.StatusCode.ABORTED)
        matrix = np.stack(good)
        result = matrix[0] if single else matrix
        return Embeddings(result, fingerprints.pop()) if return_fingerprint else result

    def _embed_stream(self, items_from: Callable[[int], Iterable[tuple[str, bytes]]], per_message: int,
                      raw: bool = False) -> Iterator[tuple[embedder_pb2.EmbedResult, str]]:
        """Every image's result with the fingerprint of the model that made it, in order. When the embedder
        becomes unreachable mid-stream (a replica killed, restarted), waits with exponential backoff and
        resumes from the first image without a result: embedding is idempotent. Gives up with the last error
        after `stream_retry_s` without progress."""
        done, delay, give_up_at = 0, 0.1, None
        while True:
            try:
                requests = embed_requests(items_from(done), per_message, raw)
                for response in self._embedder_stub().EmbedStream(requests):
                    for result in response.results:
                        done, delay, give_up_at = done + 1, 0.1, None
                        yield result, response.model_fingerprint
                return
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                give_up_at = give_up_at or time.monotonic() + self.stream_retry_s
                if time.monotonic() + delay > give_up_at:
                    raise
                log.warning("embedder unavailable after %d results (%s); retrying in %.1f s", done, err.details(),
                            delay)
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    def embedding_fn(self, image_column: str = "image", output_column: str = "embeddings") -> "EmbeddingFunction":
        """A function for `dataset.map(fn, batched=True)` that adds each row's embedding, as in the write-up.
        It pickles to its settings (addresses, columns, model fingerprint), so datasets can hash it and reuse
        its cache, and send it to worker processes."""
        return EmbeddingFunction(self.embedder_address, self._token, image_column, output_column, self.fingerprint)

    # The index.

    def upsert(self, ids: Sequence[str], vectors_: np.ndarray, metadata: Sequence[dict] | None = None,
               fingerprint: str | None = None, collection: str | None = None) -> WriteReport:
        """Adds or replaces vectors in a collection, in atomic calls of at most 4096 items each.

        Returns:
            A WriteReport: ids inserted, ids whose item was replaced, and the collection's count after.
        """
        ids = id_list(ids)
        matrix = np.atleast_2d(np.asarray(vectors_, dtype=np.float32))
        metadata = list(metadata) if metadata is not None else [{} for _ in ids]
        if not (len(ids) == len(matrix) == len(metadata)):
            raise InvalidArgument(f"{len(ids)} ids, {len(matrix)} vectors and {len(metadata)} metadata do not match",
                                  grpc.StatusCode.INVALID_ARGUMENT)
        if not ids:
            raise InvalidArgument("nothing to upsert", grpc.StatusCode.INVALID_ARGUMENT)
        return self._write(self._collection(collection), fingerprint or self.fingerprint, ids,
                           np.ascontiguousarray(matrix, dtype=vectors.WIRE_DTYPE), metadata)

    def _write(self, collection: str, fingerprint: str, ids: list[str], packed: np.ndarray,
               metadata: list[dict]) -> WriteReport:
        """Items as columns: ids, their vectors as rows of little-endian float32 (`vectors.WIRE_DTYPE`),
        metadata. No bytes object per item: at 3 kB a vector, cutting and re-joining them cost the client
        more than the index spent storing them."""
        totals = self._index().upsert(collection, fingerprint, ids, packed, metadata)
        return WriteReport(totals.inserted, totals.replaced, totals.count)

    def add(self, images: ImageLike | Sequence[ImageLike], ids: str | Sequence[str],
            metadata: dict | Sequence[dict] | None = None, collection: str | None = None) -> WriteReport:
        """Embeds images and adds them to a collection under `ids` (one image and one id, or lists of both),
        each vector under the fingerprint of the model that made it."""
        if is_single(images):
            if not isinstance(ids, str):
                raise InvalidArgument("one image takes one id (a string)", grpc.StatusCode.INVALID_ARGUMENT)
            images, ids = [images], [ids]
            metadata = [metadata] if isinstance(metadata, dict) else metadata
        embedded = self.embed(list(images), return_fingerprint=True)
        return self.upsert(id_list(ids), embedded.vectors, metadata, embedded.fingerprint, collection)

    def delete(self, ids: Sequence[str], collection: str | None = None) -> int:
        """Removes items; returns how many were held."""
        return self._index().delete(self._collection(collection), id_list(ids))[0]

    def get(self, ids: Sequence[str], collection: str | None = None, with_vectors: bool = True
            ) -> dict[str, StoredItem]:
        """The stored vector (exactly as sent) and metadata of each id held; unknown ids are absent.

        Raises:
            DataLoss: some items are held but their stored bytes fail their checksum (named in the message).
        """
        items, damaged = self._index().get(self._collection(collection), id_list(ids), not with_vectors)
        if damaged:
            from client.errors import DataLoss
            raise DataLoss(f"stored data of {len(damaged)} item(s) fails its checksum: {damaged[:10]}; write them "
                           "again", grpc.StatusCode.DATA_LOSS)
        return {item.id: StoredItem(item.id, vectors.from_proto(item.vector) if with_vectors else None,
                                    metadata_of(item)) for item in items}

    def held(self, ids: Sequence[str], collection: str | None = None) -> set[str]:
        """Which of the ids the collection holds (no vectors moved)."""
        ids = id_list(ids)
        found = set()
        for start in range(0, len(ids), 4096):
            items, damaged = self._index().get(self._collection(collection), ids[start:start + 4096], True)
            found |= {item.id for item in items} | set(damaged)
        return found

    def count(self, where: dict | None = None, collection: str | None = None) -> int:
        """Items in a collection, or those a filter (see client.filters) holds for."""
        return self._index().count(self._collection(collection), to_filter(where))

    def scroll(self, collection: str | None = None, where: dict | None = None, with_vectors: bool = False,
               page_size: int = 1024) -> Iterator[StoredItem]:
        """Every item of a collection (optionally filtered), in a stable order, page by page."""
        for item in self._index().scroll(self._collection(collection), to_filter(where), with_vectors, page_size):
            yield StoredItem(item.id, vectors.from_proto(item.vector) if with_vectors else None, metadata_of(item))

    def stats(self, collection: str | None = None) -> IndexStats:
        """What a collection holds; with shards, counts and bytes are their sums."""
        answers = self._index().stats(self._collection(collection))
        first = next((s for s in answers if s.dimension), answers[0])
        return IndexStats(sum(s.count for s in answers), first.dimension, first.index_kind, first.model_fingerprint,
                          first.collection, sum(s.dead for s in answers),
                          sum(s.vector_bytes + s.catalog_bytes + s.snapshot_bytes for s in answers),
                          all(s.trained for s in answers), sum(s.damaged for s in answers),
                          sum(s.vector_bytes for s in answers), sum(s.catalog_bytes for s in answers),
                          sum(s.snapshot_bytes for s in answers), sum(s.pending for s in answers),
                          any(s.snapshotting for s in answers))

    # Collections.

    def create_collection(self, name: str, index_kind: str = "", params: dict[str, int] | None = None,
                          fingerprint: str = "", dimension: int = 0, exist_ok: bool = False) -> CollectionInfo:
        """Creates a collection (on every shard). Its model and dimension are fixed now if given, else by its
        first write."""
        request = index_pb2.CreateCollectionRequest(name=name, index_kind=index_kind,
                                                    params=index_pb2.IndexParams(**(params or {})),
                                                    model_fingerprint=fingerprint, dimension=dimension,
                                                    exist_ok=exist_ok)
        return collection_info(self._index().everywhere("CreateCollection", request)[0].collection)

    def list_collections(self) -> list[CollectionInfo]:
        answers = self._index().everywhere("ListCollections", index_pb2.ListCollectionsRequest())
        totals: dict[str, CollectionInfo] = {}
        for answer in answers:
            for message in answer.collections:
                info = collection_info(message)
                seen = totals.get(info.name)
                totals[info.name] = info if seen is None else CollectionInfo(
                    info.name, info.index_kind, info.params, seen.model_fingerprint or info.model_fingerprint,
                    seen.dimension or info.dimension, seen.count + info.count)
        return sorted(totals.values(), key=lambda c: c.name)

    def drop_collection(self, name: str, missing_ok: bool = False) -> bool:
        """Removes a collection and deletes its data (on every shard)."""
        request = index_pb2.DropCollectionRequest(name=name, missing_ok=missing_ok)
        return any(a.dropped for a in self._index().everywhere("DropCollection", request))

    def compact(self, collection: str | None = None) -> int:
        """Reclaims the space of deleted and replaced items now; returns the rows reclaimed."""
        request = index_pb2.CompactRequest(collection=self._collection(collection))
        return sum(a.reclaimed for a in self._index().everywhere("Compact", request))

    def reshard(self, collections: Sequence[str] | None = None, progress=lambda _: None):
        """Moves every item to the shard this client's shard list gives it (see client/reshard.py for what
        must hold while it runs); every collection unless named. Returns a client.reshard.ReshardReport."""
        from client.reshard import reshard
        names = list(collections) if collections else [c.name for c in self.list_collections()]
        return reshard(self._index(), names, progress)

    # Search.

    def _search_request(self, queries, k, where, fingerprint, exact, collection, params) -> index_pb2.SearchRequest:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        request = index_pb2.SearchRequest(model_fingerprint=fingerprint or self.fingerprint, k=check_k(k),
                                          exact=exact, queries=[vectors.to_proto(q) for q in queries],
                                          where=to_filter(where), collection=self._collection(collection))
        if params:
            request.params.CopyFrom(index_pb2.IndexParams(**params))
        return request

    def search_vectors(self, queries: np.ndarray, k: int = 5, where: dict | None = None,
                       fingerprint: str | None = None, exact: bool = False,
                       collection: str | None = None, params: dict[str, int] | None = None) -> list[list[Hit]]:
        """Top-k candidates for each query vector (rows of `queries`), best first.

        Args:
            where: optional metadata filter (see client.filters), e.g. {"label": ["cat", "dog"], "n": {"gte": 3}}.
            fingerprint: the model of the queries; by default the embedder's current one.
            exact: an exact scan even on an approximate index kind.
            params: search effort for this call instead of the collection's, e.g. {"ivf_nprobe": 128} or
                {"hnsw_ef_search": 256} (also rerank_factor, lsh_radius); one its kind does not use is ignored.

        Raises:
            Unavailable: an index shard did not answer (the message names it). See search_vectors_partial.
        """
        request = self._search_request(queries, k, where, fingerprint, exact, collection, params)
        return hits_of(self._index().search(request, False).results)

    def search_vectors_partial(self, queries: np.ndarray, k: int = 5, where: dict | None = None,
                               fingerprint: str | None = None, exact: bool = False,
                               collection: str | None = None, params: dict[str, int] | None = None) -> PartialHits:
        """As search_vectors, but shards that are down are skipped and named instead of failing the search."""
        fan_out = self._index().search(self._search_request(queries, k, where, fingerprint, exact, collection, params),
                                       True)
        return PartialHits(hits_of(fan_out.results), fan_out.missing_shards)

    def search(self, image_or_images: ImageLike | Sequence[ImageLike], k: int = 5, where: dict | None = None,
               collection: str | None = None, params: dict[str, int] | None = None) -> list[Hit] | list[list[Hit]]:
        """The k candidates most similar to an image (a list of Hit), or to each of several (a list of lists),
        searched with the fingerprint of the model that embedded them."""
        single = is_single(image_or_images)
        check_k(k)
        embedded = self.embed([image_or_images] if single else image_or_images, return_fingerprint=True)
        found = self.search_vectors(embedded.vectors, k, where, embedded.fingerprint, collection=collection,
                                    params=params)
        return found[0] if single else found

    # Ingest.

    def index_dataset(self, dataset, image_column: str = "image", label_column: str | None = "auto",
                      id_column: str | None = None, batch_size: int = 64, progress: bool = True,
                      collection: str | None = None, skip_existing: bool = False):
        """Streams a `datasets.Dataset` (or IterableDataset) through the embedder into a collection; see
        client.ingest.index_dataset for the ids, labels and sources it gives each item."""
        from client.ingest import index_dataset
        return index_dataset(self, dataset, image_column, label_column, id_column, batch_size, progress,
                             self._collection(collection), skip_existing)

    def index_paths(self, paths: Sequence[str], collection: str | None = None, batch_size: int = 64,
                    progress: bool = True, skip_existing: bool = False):
        """Indexes image files, folders (recursively; ImageFolder layouts give labels) and globs; see
        client.ingest.index_paths."""
        from client.ingest import index_paths
        return index_paths(self, paths, self._collection(collection), batch_size, progress, skip_existing)

    def evaluate(self, queries, candidates=None, k: int = 10, kinds: Sequence[str] = ("flat",),
                 collection: str | None = None, image_column: str = "image", label_column: str | None = "auto",
                 worst: int = 8, progress: bool = True):
        """Retrieval quality on labelled images, embedded and searched through the services (client.evaluation).

        Args:
            queries: a datasets.Dataset with an image and a label column, or image folders in an ImageFolder
                layout (a path or a list of paths; the subfolder is the label).
            candidates: the same kinds of input; None: each query against all the others (leave-one-out).
            kinds: index kinds evaluated side by side, each in a scratch collection dropped afterwards.
            collection: instead, search this existing collection (its items and their 'label' metadata).

        Returns:
            An EvalReport (plain dataclasses; .to_dict() is the JSON report of docs/eval.md).

        Raises:
            InvalidArgument: unlabelled images, no images, a bad k or kind.
        """
        from client.evaluation import evaluate, labelled
        from client.ingest import BadInput, dataset_sources, path_sources

        def labelled_set(given, name):
            if hasattr(given, "features"):
                sources, _ = dataset_sources(given, image_column, label_column)
                return labelled(f"{given.info.dataset_name or 'dataset'}/{given.split or name}", list(sources))
            paths = [str(given)] if isinstance(given, (str, os.PathLike)) else [str(p) for p in given]
            sources, _ = path_sources(paths)
            return labelled(" ".join(paths), list(sources))

        try:
            query_set = labelled_set(queries, "queries")
            candidate_set = None if candidates is None else labelled_set(candidates, "candidates")
            return evaluate(self, query_set, candidate_set, k, kinds, worst, progress, collection)
        except BadInput as err:
            raise InvalidArgument(str(err), grpc.StatusCode.INVALID_ARGUMENT) from None


class EmbeddingFunction:
    """SimilarityClient.embedding_fn(): picklable and deterministic for datasets' fingerprinting."""

    def __init__(self, embedder, token, image_column: str, output_column: str, model_fingerprint: str):
        self.embedder, self.token = embedder, token
        self.image_column, self.output_column = image_column, output_column
        self.model_fingerprint = model_fingerprint
        self._client = None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_client"}

    def __setstate__(self, state):
        self.__dict__.update(state, _client=None)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[np.ndarray]]:
        if self._client is None:
            self._client = SimilarityClient(embedder=self.embedder, token=self.token)
        embedded = self._client.embed(list(batch[self.image_column]), return_fingerprint=True)
        if embedded.fingerprint != self.model_fingerprint:
            raise InvalidArgument(f"the embedder now serves model {embedded.fingerprint}, not {self.model_fingerprint} "
                                  "this function was made for; make a new one", grpc.StatusCode.FAILED_PRECONDITION)
        return {self.output_column: list(embedded.vectors)}


def embed_requests(id_and_bytes: Iterable[tuple[str, bytes]], per_message: int,
                   raw: bool = False) -> Iterator[embedder_pb2.EmbedStreamRequest]:
    """Groups (id, bytes) pairs into EmbedStream messages of `per_message` images."""
    chunk = []
    for item_id, data in id_and_bytes:
        chunk.append(embedder_pb2.Image(id=item_id, data=data))
        if len(chunk) == per_message:
            yield embedder_pb2.EmbedStreamRequest(images=chunk, raw=raw)
            chunk = []
    if chunk:
        yield embedder_pb2.EmbedStreamRequest(images=chunk, raw=raw)
