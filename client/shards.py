"""Index shards: writes routed by a stable hash of the id, searches fanned out to all and merged.

Routing is jump consistent hashing (Lamping and Veach, 2014) of a 64-bit hash of the id: going from N to N+1
shards moves only the 1/(N+1) of the ids that the new shard takes, and `imgsim reshard` (client/reshard.py)
moves exactly those. Until it has, an id may sit on a shard that is not its home, so deletes and gets ask
every shard, and searches merge an id found twice into one hit.

Upserts go as atomic calls of at most UPSERT_CALL_ITEMS items, up to CALLS_IN_FLIGHT per shard so that
building and sending the next call overlaps the index committing the last one. The index takes up to 16,384
items a call, but commits groups of 2,048 (index_service.writes): a larger call holds its writer, and every
other client's writes, for the whole of its commit.
"""

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import grpc
import numpy as np

from client.errors import ImgsimError, Unavailable, translated_errors
from client.filters import fill_metadata
from imgsim.v1 import index_pb2, index_pb2_grpc

UPSERT_CALL_ITEMS = 2048  # one group commit of the index (see above)
UPSERT_CALL_BYTES = 48 * 1024 * 1024  # of vectors, under the index's 64 MiB per call
UPSERT_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_ITEMS_PER_MESSAGE = 4096
CALLS_IN_FLIGHT = 4


def jump_hash(key: int, buckets: int) -> int:
    """Jump consistent hash of a 64-bit key into [0, buckets)."""
    bucket, jump = -1, 0
    while jump < buckets:
        bucket = jump
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        jump = int((bucket + 1) * ((1 << 31) / ((key >> 33) + 1)))
    return bucket


def shard_of(item_id: str, shards: int) -> int:
    """The id's home shard. Stable across processes, machines and Python versions (unlike hash())."""
    if shards == 1:
        return 0
    return jump_hash(int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big"), shards)


@dataclass(frozen=True)
class Shard:
    number: int
    address: str
    stub: index_pb2_grpc.IndexStub
    alone: bool  # the only shard: its number would only confuse

    @property
    def name(self) -> str:
        return f"index at {self.address}" if self.alone else f"index shard {self.number} ({self.address})"


@dataclass(frozen=True)
class FanOut:
    """Each query's merged hits, and the shards that did not answer (only when partial answers were allowed)."""
    results: list[list[index_pb2.Hit]]
    missing_shards: list[str]


@dataclass
class UpsertTotals:
    inserted: int = 0
    replaced: int = 0
    count: int = 0


def upsert_calls(positions: list[int], row_bytes: int) -> Iterator[list[int]]:
    """Positions grouped into calls the index accepts whole."""
    per_call = max(1, min(UPSERT_CALL_ITEMS, UPSERT_CALL_BYTES // max(row_bytes, 1)))
    for start in range(0, len(positions), per_call):
        yield positions[start:start + per_call]


def rows_bytes(packed: np.ndarray, positions: list[int]) -> bytes:
    """The rows at `positions`, as one string of bytes: a slice when they are consecutive (one index, the
    common case), gathered otherwise."""
    if positions and positions[-1] - positions[0] + 1 == len(positions):
        return packed[positions[0]:positions[-1] + 1].tobytes()
    return packed[positions].tobytes()


class ShardedIndex:
    """One or more index services used as one. With one address it is simply that index."""

    def __init__(self, channels: Sequence[grpc.Channel], addresses: Sequence[str], timeout: float):
        self.shards = [Shard(i, a, index_pb2_grpc.IndexStub(c), len(addresses) == 1) for i, (a, c) in enumerate(zip(addresses, channels))]
        self.timeout = timeout

    def _by_shard(self, ids: Sequence[str]) -> dict[int, list[int]]:
        if len(self.shards) == 1:  # no hashing needed: it all goes to the one index
            return {0: list(range(len(ids)))}
        positions: dict[int, list[int]] = {}
        for position, item_id in enumerate(ids):
            positions.setdefault(shard_of(item_id, len(self.shards)), []).append(position)
        return positions

    def _calls(self, method: str, requests: dict[int, object]) -> list[tuple[Shard, Callable[[], object]]]:
        """(shard, its answer when asked) per request: futures, so that several shards work in parallel; for one
        shard a plain blocking call, made when asked (a future costs a thread hop, about 1 ms a call)."""
        if len(requests) == 1:
            [(n, request)] = requests.items()
            shard = self.shards[n]
            return [(shard, lambda: getattr(shard.stub, method)(request, timeout=self.timeout))]
        calls = [(self.shards[n], getattr(self.shards[n].stub, method).future(request, timeout=self.timeout))
                 for n, request in requests.items()]
        return [(shard, call.result) for shard, call in calls]

    def _fan(self, method: str, requests: dict[int, object]) -> list[tuple[Shard, object]]:
        answers = []
        for shard, answer in self._calls(method, requests):
            with translated_errors(shard.name):
                answers.append((shard, answer()))
        return answers

    def upsert(self, collection: str, fingerprint: str, ids: Sequence[str], packed: np.ndarray,
               metadata: Sequence[dict]) -> UpsertTotals:
        """Writes items (ids, their vectors as rows of little-endian float32, metadata) each to its shard, in
        atomic calls, shards in parallel."""
        row_bytes = packed.shape[1] * packed.itemsize
        per_message = max(1, min(MAX_ITEMS_PER_MESSAGE, UPSERT_MESSAGE_BYTES // max(row_bytes, 1)))

        def messages(positions: list[int]):
            """Columns (ItemBatch): no message per item to build here or to parse in the index."""
            for start in range(0, len(positions), per_message):
                part = positions[start:start + per_message]
                batch = index_pb2.ItemBatch(ids=[ids[p] for p in part], vectors=rows_bytes(packed, part))
                if any(metadata[p] for p in part):
                    for p in part:
                        fill_metadata(batch.metadata.add(), metadata[p])
                yield index_pb2.UpsertRequest(model_fingerprint=fingerprint, collection=collection, batch=batch)

        totals = UpsertTotals()
        pending: dict[int, list] = {n: list(upsert_calls(positions, row_bytes))
                                    for n, positions in self._by_shard(ids).items()}
        in_flight: list[tuple[Shard, int, object]] = []
        counts = {}
        written = 0
        try:
            while pending or in_flight:
                for n in list(pending):
                    while pending[n] and sum(1 for s, _, _ in in_flight if s.number == n) < CALLS_IN_FLIGHT:
                        positions = pending[n].pop(0)
                        call = self.shards[n].stub.Upsert.future(messages(positions), timeout=self.timeout)
                        in_flight.append((self.shards[n], len(positions), call))
                    if not pending[n]:
                        del pending[n]
                shard, size, call = in_flight.pop(0)
                with translated_errors(shard.name):
                    reply = call.result()
                totals.inserted += reply.inserted
                totals.replaced += reply.replaced
                counts[shard.number] = reply.count
                written += size
        except ImgsimError as err:
            for _, _, call in in_flight:
                call.cancel()
            err.args = (f"{err.args[0]} ({written} of {len(ids)} items were stored before; each call of at most "
                        f"{UPSERT_CALL_ITEMS} items is stored whole or not at all, so resending is safe)",)
            raise
        totals.count = sum(counts.values()) if len(counts) == len(self.shards) else \
            sum(s.count for s in self.stats(collection))
        return totals

    def delete(self, collection: str, ids: Sequence[str]) -> tuple[int, int]:
        """Asks every shard: an id not yet moved to its home by a reshard must go too. (While a reshard runs,
        an id held on two shards counts twice.)"""
        request = index_pb2.DeleteRequest(ids=list(ids), collection=collection)
        answers = self._fan("Delete", {s.number: request for s in self.shards})
        return sum(a.deleted for _, a in answers), sum(a.count for _, a in answers)

    def get(self, collection: str, ids: Sequence[str], omit_vectors: bool = False) -> tuple[list, list[str]]:
        """Asks every shard (an id may not have moved home yet); an id held twice is its home shard's copy,
        where every write of it goes."""
        request = index_pb2.GetRequest(ids=list(ids), collection=collection, omit_vectors=omit_vectors)
        found: dict[str, tuple[bool, index_pb2.Item]] = {}
        damaged = []
        for shard, answer in self._fan("Get", {s.number: request for s in self.shards}):
            for item in answer.items:
                at_home = len(self.shards) == 1 or shard_of(item.id, len(self.shards)) == shard.number
                if item.id not in found or at_home:
                    found[item.id] = (at_home, item)
            damaged += answer.damaged_ids
        return [item for _, item in found.values()], damaged

    def search(self, request: index_pb2.SearchRequest, allow_partial: bool) -> FanOut:
        """Asks every shard in parallel and merges the top k. A shard that fails fails the search, naming it,
        unless `allow_partial`: then its name is listed in missing_shards and the others' hits are merged."""
        answers, missing = [], []
        for shard, answer in self._calls("Search", {s.number: request for s in self.shards}):
            try:
                with translated_errors(shard.name):
                    answers.append(answer())
            except Unavailable:
                if not allow_partial:
                    raise
                missing.append(shard.name)
        if not answers:
            raise Unavailable(f"no index shard answered: {', '.join(missing)}", grpc.StatusCode.UNAVAILABLE)
        if len(answers) == 1:
            return FanOut([list(result.hits) for result in answers[0].results], missing)
        merged = []
        for per_shard in zip(*(answer.results for answer in answers)):
            hits, seen = [], set()
            # An id found on two shards (written under another shard count) is one candidate: its best hit.
            for hit in sorted((hit for result in per_shard for hit in result.hits), key=lambda hit: -hit.score):
                if hit.id not in seen:
                    seen.add(hit.id)
                    hits.append(hit)
            merged.append(hits[:request.k])
        return FanOut(merged, missing)

    def count(self, collection: str, where: index_pb2.Filter | None = None) -> int:
        request = index_pb2.CountRequest(collection=collection, where=where)
        return sum(a.count for _, a in self._fan("Count", {s.number: request for s in self.shards}))

    def stats(self, collection: str = "") -> list[index_pb2.GetStatsResponse]:
        request = index_pb2.GetStatsRequest(collection=collection)
        return [a for _, a in self._fan("GetStats", {s.number: request for s in self.shards})]

    def scroll(self, collection: str, where, with_vectors: bool, page: int) -> Iterator[index_pb2.Item]:
        """Every item, shard after shard, each in its stable order."""
        for shard in self.shards:
            cursor = ""
            while True:
                with translated_errors(shard.name):
                    answer = shard.stub.Scroll(index_pb2.ScrollRequest(
                        collection=collection, limit=page, cursor=cursor, where=where, with_vectors=with_vectors),
                        timeout=self.timeout)
                yield from answer.items
                cursor = answer.next_cursor
                if not cursor:
                    break

    def everywhere(self, method: str, request) -> list:
        """The same call on every shard (collection management)."""
        return [a for _, a in self._fan(method, {s.number: request for s in self.shards})]
