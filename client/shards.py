"""Index shards: writes routed by a stable hash of the id, searches fanned out to all and merged."""

import hashlib
from dataclasses import dataclass
from typing import Sequence

import grpc

from client.errors import Unavailable, translated_errors
from imgsim.v1 import index_pb2, index_pb2_grpc


def shard_of(item_id: str, shards: int) -> int:
    """Stable across processes, machines and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big") % shards


@dataclass(frozen=True)
class Shard:
    number: int
    address: str
    stub: index_pb2_grpc.IndexStub

    @property
    def name(self) -> str:
        return f"index shard {self.number} ({self.address})"


@dataclass(frozen=True)
class FanOut:
    """Each query's merged hits, and the shards that did not answer (only when partial answers were allowed)."""
    results: list[list[index_pb2.Hit]]
    missing_shards: list[str]


class ShardedIndex:
    """One or more index services used as one. With one address it is simply that index."""

    def __init__(self, channels: Sequence[grpc.Channel], addresses: Sequence[str], timeout: float):
        self.shards = [Shard(i, a, index_pb2_grpc.IndexStub(c)) for i, (a, c) in enumerate(zip(addresses, channels))]
        self.timeout = timeout

    def _by_shard(self, ids: Sequence[str]) -> dict[int, list[int]]:
        if len(self.shards) == 1:  # no hashing needed: it all goes to the one index
            return {0: list(range(len(ids)))}
        positions: dict[int, list[int]] = {}
        for position, item_id in enumerate(ids):
            positions.setdefault(shard_of(item_id, len(self.shards)), []).append(position)
        return positions

    def upsert(self, fingerprint: str, rows: Sequence[tuple[str, bytes, dict[str, str]]], per_message: int) -> int:
        """Writes each (id, packed vector, metadata) row to its shard, all shards in parallel; returns how many
        the shards hold in all. Messages are built as gRPC sends them, so building overlaps the index's work."""
        def messages(positions: list[int]):
            for start in range(0, len(positions), per_message):
                message = index_pb2.UpsertRequest(model_fingerprint=fingerprint)
                for position in positions[start:start + per_message]:
                    item_id, vector, metadata = rows[position]
                    item = message.items.add(id=item_id, metadata=metadata)
                    item.vector.float32_le = vector
                yield message

        calls = [(self.shards[n], self.shards[n].stub.Upsert.future(messages(positions), timeout=self.timeout))
                 for n, positions in self._by_shard([row[0] for row in rows]).items()]
        counts = {}
        for shard, call in calls:
            with translated_errors(shard.name):
                counts[shard.number] = call.result().count
        # Every shard answered with its count: no need to ask again.
        return sum(counts.values()) if len(counts) == len(self.shards) else self.count()

    def delete(self, ids: Sequence[str]) -> int:
        calls = [(self.shards[n], self.shards[n].stub.Delete.future(
            index_pb2.DeleteRequest(ids=[ids[p] for p in positions]), timeout=self.timeout))
            for n, positions in self._by_shard(ids).items()]
        deleted = 0
        for shard, call in calls:
            with translated_errors(shard.name):
                deleted += call.result().deleted
        return deleted

    def get(self, ids: Sequence[str]) -> list[index_pb2.Item]:
        calls = [(self.shards[n], self.shards[n].stub.Get.future(
            index_pb2.GetRequest(ids=[ids[p] for p in positions]), timeout=self.timeout))
            for n, positions in self._by_shard(ids).items()]
        found = []
        for shard, call in calls:
            with translated_errors(shard.name):
                found += call.result().items
        return found

    def search(self, request: index_pb2.SearchRequest, allow_partial: bool) -> FanOut:
        """Asks every shard in parallel and merges the top k. A shard that fails fails the search, naming it,
        unless `allow_partial`: then its name is listed in missing_shards and the others' hits are merged."""
        calls = [(shard, shard.stub.Search.future(request, timeout=self.timeout)) for shard in self.shards]
        answers, missing = [], []
        for shard, call in calls:
            try:
                with translated_errors(shard.name):
                    answers.append(call.result())
            except Unavailable:
                if not allow_partial:
                    raise
                missing.append(shard.name)
        if not answers:
            raise Unavailable(f"no index shard answered: {', '.join(missing)}", grpc.StatusCode.UNAVAILABLE)
        merged = []
        for per_shard in zip(*(answer.results for answer in answers)):
            hits = [hit for result in per_shard for hit in result.hits]
            merged.append(sorted(hits, key=lambda hit: -hit.score)[:request.k])
        return FanOut(merged, missing)

    def stats(self) -> list[index_pb2.GetStatsResponse]:
        calls = [(shard, shard.stub.GetStats.future(index_pb2.GetStatsRequest(), timeout=self.timeout))
                 for shard in self.shards]
        answers = []
        for shard, call in calls:
            with translated_errors(shard.name):
                answers.append(call.result())
        return answers

    def count(self) -> int:
        return sum(s.count for s in self.stats())
