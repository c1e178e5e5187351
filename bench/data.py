"""Benchmark vectors that are not shaped to flatter any index kind, generated deterministically in blocks
(so 10M x 768 never has to sit in memory, and the exact answers can be recomputed by streaming it again).

How they are made (`ClusteredStream(n, d, seed)`):
  - about n/1000 clusters whose populations follow Zipf's law (sizes proportional to 1/rank): a few clusters
    hold tens of thousands of points, most a handful, so no re-ranking pool or inverted list matches a
    cluster;
  - a cluster is a random unit centre plus variation inside a random 16-dimensional subspace (one of 256
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
BASES = 256
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
        # Jitter uniform in a cube (cheaper to draw than Gaussian, as good for breaking the low rank).
        out = rng.random((count, self.d), dtype=np.float32)
        out -= 0.5
        out *= NOISE_NORM * np.sqrt(12.0 / self.d)
        noise = np.flatnonzero(rng.random(count) < NOISE_FRACTION)  # these are uniform on the sphere
        out[noise] = rng.standard_normal((len(noise), self.d), dtype=np.float32)
        members = np.setdiff1d(np.arange(count), noise, assume_unique=True)
        clusters = rng.choice(self.clusters, size=len(members), p=self.weights)
        z = rng.standard_normal((len(members), INTRINSIC), dtype=np.float32) * self.signs[clusters]
        out[members] += self.centres[clusters]
        basis_of = clusters % BASES
        for basis in np.unique(basis_of):
            rows = basis_of == basis
            out[members[rows]] += z[rows] @ self.bases[basis]
        return out

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
