"""Benchmark vectors that are not shaped to flatter any index kind, generated deterministically in blocks
(so 10M x 768 never has to sit in memory, and the exact answers can be recomputed by streaming it again).

How they are made (`ClusteredStream(n, d, seed)`):
  - about n/1000 clusters whose populations follow Zipf's law (sizes proportional to 1/rank): a few clusters
    hold tens of thousands of points, most a handful, so no re-ranking pool or inverted list matches a
    cluster;
  - a cluster is a random unit centre plus variation inside a random 16-dimensional subspace (one of 32
    shared bases, with the cluster's own signs), of norm about 0.5, plus uniform jitter in all dimensions of norm 0.05:
    points of one cluster have cosines around 0.8 to each other, as images of one class do under a
    fine-tuned ViT, and the variation has the low intrinsic dimension of image embeddings;
  - 10 % of the points are uniform on the sphere and belong to no cluster;
  - positions are independent draws, so ids carry no cluster information;
  - queries are fresh draws from the same mixture, not perturbed copies of indexed points.
"""

import numpy as np

INTRINSIC = 16
SPREAD = 0.5
NOISE_NORM = 0.05
NOISE_FRACTION = 0.10
BASES = 32
BLOCK = 16384  # the unit of generation: the data never depends on how a caller groups it


class ClusteredStream:
    def __init__(self, n: int, d: int, seed: int = 0):
        self.n, self.d, self.seed = n, d, seed
        rng = np.random.default_rng(seed)
        self.clusters = max(8, n // 1000)
        weights = 1.0 / np.arange(1, self.clusters + 1)
        self.weights = weights / weights.sum()
        self.centres = rng.standard_normal((self.clusters, d), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        bases = rng.standard_normal((BASES, INTRINSIC, d), dtype=np.float32)
        self.bases = bases / np.linalg.norm(bases, axis=2, keepdims=True) * (SPREAD / np.sqrt(INTRINSIC))
        self.signs = np.where(rng.random((self.clusters, INTRINSIC)) < 0.5, -1.0, 1.0).astype(np.float32)

    def _draw(self, count: int, rng: np.random.Generator) -> np.ndarray:
        # Built grouped (cluster members sorted by basis, then the noise points) so every step is a slice
        # operation, then shuffled once: about 5x cheaper than scattering by fancy indexes, so that generating
        # the data costs the benchmark's shared cores little beside the service it feeds.
        noise_count = int((rng.random(count) < NOISE_FRACTION).sum())
        members = count - noise_count
        clusters = rng.choice(self.clusters, size=members, p=self.weights)
        clusters = clusters[np.argsort(clusters % BASES, kind="stable")]
        # Jitter uniform in a cube of 256 levels a side (random bytes are far cheaper to draw than floats,
        # and as good for breaking the clusters' low rank).
        out = np.frombuffer(rng.bytes(count * self.d), dtype=np.uint8).astype(np.float32).reshape(count, self.d)
        out -= 127.5
        out *= NOISE_NORM * np.sqrt(12.0 / self.d) / 256.0
        out[members:] = rng.standard_normal((noise_count, self.d), dtype=np.float32)  # uniform on the sphere
        body = out[:members]
        body += self.centres[clusters]
        z = rng.standard_normal((members, INTRINSIC), dtype=np.float32) * self.signs[clusters]
        bases, starts = np.unique(clusters % BASES, return_index=True)
        ends = np.append(starts[1:], members)
        for basis, start, end in zip(bases, starts, ends):
            body[start:end] += z[start:end] @ self.bases[basis]
        return out[rng.permutation(count)]

    def block(self, number: int) -> np.ndarray:
        start = number * BLOCK
        return self._draw(min(BLOCK, self.n - start), np.random.default_rng((self.seed, 1, number)))

    def chunks(self, chunk: int = BLOCK):
        """(first position, vectors) of consecutive chunks (a multiple of BLOCK); the same for the same seed."""
        per = max(1, chunk // BLOCK)
        blocks = -(-self.n // BLOCK)
        for first in range(0, blocks, per):
            parts = [self.block(b) for b in range(first, min(first + per, blocks))]
            yield first * BLOCK, np.concatenate(parts)

    def queries(self, count: int) -> np.ndarray:
        return self._draw(count, np.random.default_rng((self.seed, 2)))

    def from_noise(self, vectors: np.ndarray) -> np.ndarray:
        """Which vectors were drawn from the uniform-noise fraction: their cosine to the nearest cluster centre
        is about 0.15 (a member's is about 0.9). A noise query has no cluster, so its ten nearest are scattered
        over every inverted list: it is where an ivf index's misses are."""
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return (unit @ self.centres.T).max(axis=1) < 0.5


def exact_top_k(stream: ClusteredStream, queries: np.ndarray, k: int) -> np.ndarray:
    """The exact cosine top k (positions) of each query over the whole stream, scanning it block by block."""
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for start, chunk in stream.chunks(4 * BLOCK):
        scores = unit_q @ (chunk / np.linalg.norm(chunk, axis=1, keepdims=True)).T
        merged = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + len(chunk)), scores.shape)], axis=1)
        keep = np.argpartition(-merged, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(merged, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)
