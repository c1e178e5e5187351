"""The search structures, one per index kind; each answers cosine top-k over unit vectors known by row number.

Every search returns (scores, rows) arrays of shape (queries, k): true cosines, best first, rows -1 where
fewer than k candidates qualify. Approximate kinds re-rank their candidates with the exact vectors.
"""

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index_service.vector_file import VectorFile

# faiss-cpu uses BLAS for a batch only from this many queries on (its default is 128000: never). Measured
# at 100k x 768 with one thread: a batch of 64 ran 7x faster through BLAS, a single query 2.5x slower.
BLAS_FROM_QUERIES = 20
NO_BLAS = 2**31 - 1  # an int in C
EXACT_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class KindParams:
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 1024
    ivf_nprobe: int = 32
    pq_m: int = 64
    rerank_factor: int = 100  # measured at 100k clustered: 10 gave recall@10 0.44, 30 gave 0.76, 100 gave 1.0
    lsh_tables: int = 8
    lsh_bits: int = 16
    lsh_radius: int = 1


def empty_result(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)


def top_k_by_exact_score(vectors: VectorFile, rows: np.ndarray, queries: np.ndarray, k: int):
    """Exact top-k among `rows`, scanning their vectors in bounded chunks."""
    best_scores, best_rows = empty_result(len(queries), k)
    for start in range(0, len(rows), EXACT_CHUNK_ROWS):
        chunk = rows[start:start + EXACT_CHUNK_ROWS]
        scores = queries @ vectors.read(chunk).T
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, np.broadcast_to(chunk, scores.shape)], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_rows = np.take_along_axis(merged_rows, keep, axis=1)
    best_rows[~np.isfinite(best_scores)] = -1
    return best_scores, best_rows


def selector(allowed: np.ndarray | None, removed: np.ndarray | None):
    """A FAISS ID selector: only `allowed` rows (None: all) that are not `removed`."""
    if allowed is not None:
        if removed is not None and len(removed):
            allowed = np.setdiff1d(allowed, removed, assume_unique=True)
        return faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    if removed is not None and len(removed):
        return faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(removed, dtype=np.int64)))
    return None


def rerank(vectors: VectorFile, queries: np.ndarray, candidate_rows: np.ndarray, k: int):
    """Orders each query's candidates by their exact cosine and keeps the best k."""
    scores_out, rows_out = empty_result(len(queries), k)
    for i, (query, rows) in enumerate(zip(queries, candidate_rows)):
        rows = rows[rows >= 0]
        if len(rows) == 0:
            continue
        scores = vectors.read(rows) @ query
        keep = np.argsort(-scores, kind="stable")[:k]
        scores_out[i, :len(keep)], rows_out[i, :len(keep)] = scores[keep], rows[keep]
    return scores_out, rows_out


class FlatIndex:
    """Exact inner product over every vector (FAISS IndexFlatIP)."""
    kind = "flat"
    approximate = False

    def __init__(self, dimension: int, params: KindParams, vectors: VectorFile | None, index=None):
        self.index = index or faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))

    def add(self, rows: np.ndarray, unit_vectors: np.ndarray) -> None:
        self.index.add_with_ids(unit_vectors, rows)

    def remove(self, rows: np.ndarray) -> None:
        self.index.remove_ids(faiss.IDSelectorBatch(rows))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        # A global, read when a search starts: two racing calls can at worst take each other's speed, never
        # each other's answer.
        faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES if len(queries) >= BLAS_FROM_QUERIES else NO_BLAS
        sel = selector(allowed, None)
        return self.index.search(queries, k, params=faiss.SearchParameters(sel=sel) if sel else None)

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / "flat.faiss"))

    @classmethod
    def load(cls, folder: Path, dimension: int, params: KindParams, vectors: VectorFile | None):
        return cls(dimension, params, vectors, faiss.read_index(str(folder / "flat.faiss")))


class HnswIndex:
    """A navigable small-world graph (FAISS IndexHNSWFlat). It holds the full vectors, so the scores of what
    it returns are exact cosines; removed rows stay in the graph for navigation and are filtered out."""
    kind = "hnsw"
    approximate = True

    def __init__(self, dimension: int, params: KindParams, vectors: VectorFile | None, index=None,
                 removed: np.ndarray | None = None):
        self.params = params
        if index is None:
            graph = faiss.IndexHNSWFlat(dimension, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = params.hnsw_ef_construction
            index = faiss.IndexIDMap(graph)
        self.index = index
        self.removed = removed if removed is not None else np.zeros(0, dtype=np.int64)

    def add(self, rows: np.ndarray, unit_vectors: np.ndarray) -> None:
        self.index.add_with_ids(unit_vectors, rows)

    def remove(self, rows: np.ndarray) -> None:
        self.removed = np.union1d(self.removed, rows)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        params = faiss.SearchParametersHNSW(efSearch=max(self.params.hnsw_ef_search, k))
        sel = selector(allowed, self.removed)
        if sel is not None:
            params.sel = sel
        return self.index.search(queries, k, params=params)

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / "hnsw.faiss"))
        np.save(folder / "removed.npy", self.removed)

    @classmethod
    def load(cls, folder: Path, dimension: int, params: KindParams, vectors: VectorFile | None):
        return cls(dimension, params, vectors, faiss.read_index(str(folder / "hnsw.faiss")),
                   np.load(folder / "removed.npy"))


def code_bytes(dimension: int, wanted: int) -> int:
    """PQ splits a vector into equal parts: the largest divisor of the dimension not above `wanted`."""
    return max(m for m in range(1, min(wanted, dimension) + 1) if dimension % m == 0)


class IvfPqIndex:
    """Inverted lists of product-quantised codes (FAISS IndexIVFPQ), trained once enough vectors are in;
    exact (flat) until then. Candidates are re-ranked with the exact vectors from the vector file."""
    kind = "ivfpq"
    approximate = True

    def __init__(self, dimension: int, params: KindParams, vectors: VectorFile, index=None):
        self.dimension = dimension
        self.params = params
        self.vectors = vectors
        self.index = index or FlatIndex(dimension, params, None).index

    @property
    def trained(self) -> bool:
        return isinstance(self.index, faiss.IndexIVFPQ)

    def training_size(self) -> int:
        return 39 * self.params.ivf_nlist  # FAISS wants about 39 points per centroid

    def add(self, rows: np.ndarray, unit_vectors: np.ndarray) -> None:
        self.index.add_with_ids(unit_vectors, rows)
        if not self.trained and self.index.ntotal >= self.training_size():
            self._train()

    def _train(self) -> None:
        rows = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        sample = self.vectors.read(np.sort(np.random.default_rng(0).choice(
            rows, min(len(rows), 64 * self.params.ivf_nlist), replace=False)))
        quantizer = faiss.IndexFlatIP(self.dimension)
        ivf = faiss.IndexIVFPQ(quantizer, self.dimension, self.params.ivf_nlist, code_bytes(self.dimension,
                               self.params.pq_m), 8, faiss.METRIC_INNER_PRODUCT)
        ivf.train(sample)
        for start in range(0, len(rows), EXACT_CHUNK_ROWS):
            chunk = rows[start:start + EXACT_CHUNK_ROWS]
            ivf.add_with_ids(self.vectors.read(chunk), chunk)
        self._quantizer = quantizer  # the IVF index borrows it; keep it alive beside it
        self.index = ivf

    def remove(self, rows: np.ndarray) -> None:
        self.index.remove_ids(faiss.IDSelectorBatch(rows))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        sel = selector(allowed, None)
        if not self.trained:
            return self.index.search(queries, k, params=faiss.SearchParameters(sel=sel) if sel else None)
        params = faiss.SearchParametersIVF(nprobe=self.params.ivf_nprobe)
        if sel is not None:
            params.sel = sel
        _, candidates = self.index.search(queries, k * self.params.rerank_factor, params=params)
        return rerank(self.vectors, queries, candidates, k)

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / "ivfpq.faiss"))

    @classmethod
    def load(cls, folder: Path, dimension: int, params: KindParams, vectors: VectorFile):
        return cls(dimension, params, vectors, faiss.read_index(str(folder / "ivfpq.faiss")))


class LshIndex:
    """The write-up's random projection + locality-sensitive hashing, done right: `lsh_tables` independent
    tables, each with its own random hyperplanes of `lsh_bits` bits. A candidate is any vector whose code is
    within `lsh_radius` bits of the query's in at least one table (multi-probe); candidates are re-ranked
    with the exact vectors."""
    kind = "lsh"
    approximate = True

    def __init__(self, dimension: int, params: KindParams, vectors: VectorFile, planes=None, codes=None, live=None):
        self.params = params
        self.vectors = vectors
        rng = np.random.default_rng(20240601)
        self.planes = planes if planes is not None else rng.standard_normal(
            (params.lsh_tables, dimension, params.lsh_bits)).astype(np.float32)
        self.codes = codes if codes is not None else np.zeros((0, params.lsh_tables), dtype=np.uint32)
        self.live = live if live is not None else np.zeros(0, dtype=bool)
        self._weights = (1 << np.arange(params.lsh_bits, dtype=np.uint64)).astype(np.uint32)

    def _hash(self, unit_vectors: np.ndarray) -> np.ndarray:
        bits = np.einsum("nd,tdb->ntb", unit_vectors, self.planes) > 0
        return (bits * self._weights).sum(axis=2, dtype=np.uint32)

    def add(self, rows: np.ndarray, unit_vectors: np.ndarray) -> None:
        needed = int(rows.max()) + 1
        if needed > len(self.live):
            capacity = max(needed, 2 * len(self.live), 1024)
            self.codes = np.concatenate([self.codes, np.zeros((capacity - len(self.codes), self.params.lsh_tables),
                                                              dtype=np.uint32)])
            self.live = np.concatenate([self.live, np.zeros(capacity - len(self.live), dtype=bool)])
        self.codes[rows] = self._hash(unit_vectors)
        self.live[rows] = True

    def remove(self, rows: np.ndarray) -> None:
        self.live[rows[rows < len(self.live)]] = False

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None):
        mask = self.live.copy()
        if allowed is not None:
            only = np.zeros_like(mask)
            only[allowed[allowed < len(only)]] = True
            mask &= only
        query_codes = self._hash(queries)
        candidates = []
        for code in query_codes:
            near = np.bitwise_count(self.codes ^ code) <= self.params.lsh_radius
            candidates.append(np.flatnonzero(mask & near.any(axis=1)))
        width = max((len(c) for c in candidates), default=0)
        padded = np.full((len(queries), max(width, 1)), -1, dtype=np.int64)
        for i, rows in enumerate(candidates):
            padded[i, :len(rows)] = rows
        return rerank(self.vectors, queries, padded, k)

    def save(self, folder: Path) -> None:
        np.save(folder / "lsh_planes.npy", self.planes)
        np.save(folder / "lsh_codes.npy", self.codes)
        np.save(folder / "lsh_live.npy", self.live)

    @classmethod
    def load(cls, folder: Path, dimension: int, params: KindParams, vectors: VectorFile):
        return cls(dimension, params, vectors, np.load(folder / "lsh_planes.npy"), np.load(folder / "lsh_codes.npy"),
                   np.load(folder / "lsh_live.npy"))


KINDS = {cls.kind: cls for cls in (FlatIndex, HnswIndex, IvfPqIndex, LshIndex)}
