"""SimilarityClient: embeds images with the embedder service and searches them with the index service."""

import logging
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import grpc
import numpy as np

from client.channels import ClientTls, open_channel
from client.errors import InvalidArgument, translated_errors
from client.images import ImageLike, encoded, is_single
from client.results import Hit, IndexReport, IndexStats, ModelInfo, PartialHits, StoredItem
from client.shards import ShardedIndex
from imgsim import vectors
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc, index_pb2

log = logging.getLogger(__name__)
IMAGES_PER_MESSAGE = 32
# Each Upsert message is one durable transaction (an fsync) on the index: fewer, larger messages ingest
# faster. 8 MiB of vectors per message stays well under the 64 MiB message limit; 4096 is the index's cap.
UPSERT_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_ITEMS_PER_UPSERT = 4096


def items_per_upsert(dimension: int) -> int:
    return max(1, min(MAX_ITEMS_PER_UPSERT, UPSERT_MESSAGE_BYTES // (4 * max(dimension, 1))))


def unpack_results(results) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """Vectors of the results that succeeded (None if none) and (id, message) of those that failed."""
    good, failed = [], []
    for result in results:
        if result.HasField("error"):
            failed.append((result.id, result.error.message))
        else:
            good.append(vectors.from_proto(result.vector))
    return (np.stack(good) if good else None), failed


class SimilarityClient:
    """Chains the two services: images -> embedder -> vectors -> index -> hits.

    Args:
        embedder: address of the embedder ("host:port"), or a list of replica addresses to spread calls
            over (round robin). A DNS name with several records is spread over all of them.
        index: address of the index service, or a list of shard addresses: each id lives on the shard
            a stable hash of it picks, and searches ask every shard and merge their top k.
        timeout: seconds each unary call may take before it fails with DeadlineExceeded.
        tls: TLS settings when the services serve TLS (ClientTls); None for plain connections.
        token: the bearer token, when the services require one.
        stream_retry_s: how long a stream to an unreachable embedder is retried, with backoff, before
            Unavailable is raised (progress resets it).
    """

    def __init__(self, embedder: str | Sequence[str] | None = None, index: str | Sequence[str] | None = None,
                 timeout: float = 60.0, tls: ClientTls | None = None, token: str | None = None,
                 stream_retry_s: float = 30.0):
        self.timeout = timeout
        self.stream_retry_s = stream_retry_s
        self._tls, self._token = tls, token
        self._channels = []
        self._embedder = self._shards = None
        if embedder:
            self._embedder = embedder_pb2_grpc.EmbedderStub(self._open(embedder))
        if index:
            addresses = [index] if isinstance(index, str) else list(index)
            self._shards = ShardedIndex([self._open(a) for a in addresses], addresses, timeout)
        self._fingerprint: str | None = None

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

    # The embedder.

    def model_info(self) -> ModelInfo:
        """Describes the model the embedder serves."""
        with translated_errors("embedder"):
            info = self._embedder_stub().GetModelInfo(embedder_pb2.GetModelInfoRequest(), timeout=self.timeout)
        self._fingerprint = info.model_fingerprint
        return ModelInfo(info.model_id, info.revision, info.dimension, (info.image_height, info.image_width),
                         info.device, info.dtype, info.model_fingerprint, info.max_batch_size)

    @property
    def fingerprint(self) -> str:
        """The embedder's model fingerprint (asked once, then remembered)."""
        if self._fingerprint is None:
            self.model_info()
        return self._fingerprint

    def embed(self, images: ImageLike | Sequence[ImageLike], raw: bool = False) -> np.ndarray:
        """Embeds images: bytes, paths, PIL images or uint8 arrays.

        Args:
            images: one image or a sequence of them.
            raw: True for the model's raw CLS token; False (default) for L2-normalised vectors.

        Returns:
            A float32 array (n, dimension), or (dimension,) for a single image.

        Raises:
            InvalidArgument: an image could not be embedded; the message names each one.
        """
        single = is_single(images)
        batch = [images] if single else list(images)
        if not batch:
            return np.zeros((0, 0), dtype=np.float32)
        vectors_, failed = self._embed_encoded(((str(i), encoded(image)) for i, image in enumerate(batch)), raw)
        if failed:
            raise InvalidArgument("; ".join(message for _, message in failed), grpc.StatusCode.INVALID_ARGUMENT)
        return vectors_[0] if single else vectors_

    def _embed_encoded(self, id_and_bytes: Iterable[tuple[str, bytes]], raw: bool):
        """Streams (id, bytes) through EmbedStream; returns the vectors of the good ones and the failures."""
        items = list(id_and_bytes)
        with translated_errors("embedder"):
            results = list(self._embed_stream(lambda start: items[start:], IMAGES_PER_MESSAGE, raw))
        return unpack_results(results)

    def _embed_stream(self, items_from: Callable[[int], Iterable[tuple[str, bytes]]], per_message: int,
                      raw: bool = False) -> Iterator[embedder_pb2.EmbedResult]:
        """Every image's result, in order. When the embedder becomes unreachable mid-stream (a replica killed,
        restarted), waits with exponential backoff and resumes from the first image without a result:
        embedding is idempotent. Gives up with the last error after `stream_retry_s` without progress."""
        done, delay, give_up_at = 0, 0.1, None
        while True:
            try:
                requests = embed_requests(items_from(done), per_message, raw)
                for response in self._embedder_stub().EmbedStream(requests):
                    self._fingerprint = response.model_fingerprint
                    for result in response.results:
                        done, delay, give_up_at = done + 1, 0.1, None
                        yield result
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

    def embedding_fn(self, image_column: str = "image", output_column: str = "embeddings") -> Callable:
        """A function for `dataset.map(fn, batched=True)` that adds each row's embedding, as in the write-up."""
        def extract_embeddings(batch: dict[str, list[Any]]) -> dict[str, list[np.ndarray]]:
            return {output_column: list(self.embed(list(batch[image_column])))}
        return extract_embeddings

    # The index.

    def upsert(self, ids: Sequence[str], vectors_: np.ndarray, metadata: Sequence[dict[str, str]] | None = None,
               fingerprint: str | None = None) -> int:
        """Adds or replaces vectors in the index; returns how many the index holds afterwards."""
        fingerprint = fingerprint or self.fingerprint
        metadata = metadata or [{} for _ in ids]
        if not (len(ids) == len(vectors_) == len(metadata)):
            raise ValueError(f"{len(ids)} ids, {len(vectors_)} vectors and {len(metadata)} metadata do not match")
        packed = np.ascontiguousarray(vectors_, dtype=vectors.WIRE_DTYPE)
        rows = [(item_id, row.tobytes(), meta) for item_id, row, meta in zip(ids, packed, metadata)]
        return self._index().upsert(fingerprint, rows, items_per_upsert(np.shape(vectors_)[-1]))

    def add(self, images: Sequence[ImageLike], ids: Sequence[str],
            metadata: Sequence[dict[str, str]] | None = None) -> int:
        """Embeds images and adds them to the index under `ids`; returns how many the index holds."""
        return self.upsert(list(ids), self.embed(list(images)), metadata)

    def delete(self, ids: Sequence[str]) -> int:
        """Removes candidates; returns how many were held."""
        return self._index().delete(list(ids))

    def get(self, ids: Sequence[str]) -> dict[str, StoredItem]:
        """The stored vector (exactly as sent) and metadata of each id held; unknown ids are absent."""
        return {item.id: StoredItem(item.id, vectors.from_proto(item.vector), dict(item.metadata))
                for item in self._index().get(list(ids))}

    def stats(self) -> IndexStats:
        """What the index holds; with shards, the count is their sum."""
        answers = self._index().stats()
        first = next((s for s in answers if s.dimension), answers[0])
        return IndexStats(sum(s.count for s in answers), first.dimension, first.index_kind, first.model_fingerprint)

    def _search_request(self, queries, k, where, fingerprint, exact) -> index_pb2.SearchRequest:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        return index_pb2.SearchRequest(
            model_fingerprint=fingerprint or self.fingerprint, k=k, exact=exact,
            queries=[vectors.to_proto(q) for q in queries],
            filter=[index_pb2.MetadataCondition(key=key, any_of=list(values)) for key, values in (where or {}).items()])

    def search_vectors(self, queries: np.ndarray, k: int = 5, where: dict[str, Sequence[str]] | None = None,
                       fingerprint: str | None = None, exact: bool = False) -> list[list[Hit]]:
        """Top-k candidates for each query vector (rows of `queries`), best first.

        Args:
            where: optional metadata filter, e.g. {"label": ["0", "1"]}: every key must match one of its values.
            fingerprint: the model of the queries; by default the embedder's.
            exact: an exact scan even on an approximate index kind.

        Raises:
            Unavailable: an index shard did not answer (the message names it). See search_vectors_partial.
        """
        fan_out = self._index().search(self._search_request(queries, k, where, fingerprint, exact), False)
        return [[Hit(h.id, h.score, dict(h.metadata)) for h in hits] for hits in fan_out.results]

    def search_vectors_partial(self, queries: np.ndarray, k: int = 5, where: dict[str, Sequence[str]] | None = None,
                               fingerprint: str | None = None, exact: bool = False) -> PartialHits:
        """As search_vectors, but shards that are down are skipped and named instead of failing the search."""
        fan_out = self._index().search(self._search_request(queries, k, where, fingerprint, exact), True)
        return PartialHits([[Hit(h.id, h.score, dict(h.metadata)) for h in hits] for hits in fan_out.results],
                           fan_out.missing_shards)

    def search(self, image_or_images: ImageLike | Sequence[ImageLike], k: int = 5,
               where: dict[str, Sequence[str]] | None = None) -> list[Hit] | list[list[Hit]]:
        """The k candidates most similar to an image (a list of Hit), or to each of several (a list of lists)."""
        single = is_single(image_or_images)
        found = self.search_vectors(self.embed([image_or_images] if single else image_or_images), k, where)
        return found[0] if single else found

    def index_dataset(self, dataset, image_column: str = "image", label_column: str | None = "labels",
                      id_column: str | None = None, batch_size: int = 64, progress: bool = True) -> IndexReport:
        """Streams a `datasets.Dataset` through the embedder into the index.

        The images go as their stored bytes (no decode and re-encode). Each candidate's metadata holds its
        label (as a string) under "label" and where it came from under "source".

        Args:
            dataset: a datasets.Dataset with an Image column.
            image_column: the column holding the images.
            label_column: the column stored as metadata "label"; None for none.
            id_column: the column holding ids; None to use the row number.
            batch_size: images per message to the embedder, and items per upsert message.
            progress: show a progress bar.

        Returns:
            An IndexReport: rows indexed, and each row that failed with the embedder's reason.
        """
        from datasets import Image as ImageFeature
        from tqdm.auto import tqdm

        raw_images = dataset.cast_column(image_column, ImageFeature(decode=False))
        name = f"{dataset.info.dataset_name or 'dataset'}/{dataset.split or 'split'}"
        metadata_of: dict[str, dict[str, str]] = {}
        report = IndexReport()
        bar = tqdm(total=len(dataset), desc="indexing", unit="img", disable=not progress)

        def rows(first: int) -> Iterator[tuple[str, bytes]]:
            for start in range(first, len(raw_images), batch_size):
                chunk = raw_images[start:start + batch_size]
                for offset, image in enumerate(chunk[image_column]):
                    row = start + offset
                    item_id = str(chunk[id_column][offset]) if id_column else str(row)
                    metadata = {"source": image.get("path") or f"{name}/{row}"}
                    if label_column:
                        metadata["label"] = str(chunk[label_column][offset])
                    metadata_of[item_id] = metadata
                    yield item_id, encoded(image)

        try:
            pending: list[tuple[str, bytes, dict[str, str]]] = []
            with translated_errors("embedder"):
                for result in self._embed_stream(rows, batch_size):
                    metadata = metadata_of.pop(result.id)
                    if result.HasField("error"):
                        report.failed.append((result.id, result.error.message))
                    else:
                        pending.append((result.id, result.vector.float32_le, metadata))
                    bar.update(1)
                    if len(pending) >= batch_size:
                        report.indexed += self._write(pending)
                        pending = []
            if pending:
                report.indexed += self._write(pending)
        finally:
            bar.close()
        return report

    def _write(self, items: list[tuple[str, bytes, dict[str, str]]]) -> int:
        self._index().upsert(self._fingerprint, items, items_per_upsert(len(items[0][1]) // 4))
        return len(items)


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
