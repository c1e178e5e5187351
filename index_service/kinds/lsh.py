"""lsh: the write-up's random projection and locality-sensitive hashing, done right: `lsh_tables` independent
tables of `lsh_bits` random hyperplanes each. A candidate's code is within `lsh_radius` bits of the query's
in at least one table (multi-probe); the candidates agreeing in most tables are re-ranked with the exact
vectors. Codes are kept by row, so removal and reuse of a row cost O(batch)."""

import numpy as np

from index_service.kinds.base import Result, Structure
from index_service.exact import empty_result
from index_service.kinds.ivfpq import rerank

PLANES_SEED = 20240601


class LshStructure(Structure):
    kind = "lsh"
    approximate = True

    def __init__(self, dimension, params, vectors, planes=None):
        super().__init__(dimension, params, vectors)
        rng = np.random.default_rng(PLANES_SEED)
        self.planes = planes if planes is not None else rng.standard_normal(
            (params.lsh_tables, dimension, params.lsh_bits)).astype(np.float32)
        self.codes = np.zeros((0, params.lsh_tables), dtype=np.uint32)
        self.live = np.zeros(0, dtype=bool)
        self._weights = (np.uint64(1) << np.arange(params.lsh_bits, dtype=np.uint64)).astype(np.uint32)

    def hash(self, unit: np.ndarray) -> np.ndarray:
        bits = np.einsum("nd,tdb->ntb", unit, self.planes) > 0
        return (bits * self._weights).sum(axis=2, dtype=np.uint32)

    def _grow(self, max_row: int) -> None:
        if max_row >= len(self.live):
            size = max(max_row + 1, int(len(self.live) * 1.25) + 1024)
            self.codes = np.concatenate([self.codes, np.zeros((size - len(self.codes), self.params.lsh_tables),
                                                              dtype=np.uint32)])
            self.live = np.concatenate([self.live, np.zeros(size - len(self.live), dtype=bool)])

    def stage(self, rows, unit, exclusive):
        if not len(rows):
            return rows, None
        self._grow(int(rows.max()))  # outside the exclusive lock
        return rows, self.hash(unit)

    def publish(self, staged, ended):
        rows, codes = staged
        self.live[ended[ended < len(self.live)]] = False
        if len(rows):
            self.codes[rows] = codes
            self.live[rows] = True

    def relocate(self, old_rows, new_rows, staged=None):
        self._grow(int(new_rows.max()))
        self.codes[new_rows] = self.codes[old_rows]
        self.live[new_rows] = True
        self.live[old_rows] = False

    def shrink(self, end):
        self.codes = self.codes[:end].copy()
        self.live = self.live[:end].copy()

    def search(self, queries, k, allowed, params=None) -> Result:
        params = params or self.params
        mask = self.live.copy()
        if allowed is not None:
            only = np.zeros_like(mask)
            only[allowed[allowed < len(only)]] = True
            mask &= only
        pool = k * params.rerank_factor
        candidates = np.full((len(queries), pool), -1, dtype=np.int64)
        for i, code in enumerate(self.hash(queries)):
            near = np.bitwise_count(self.codes ^ code) <= params.lsh_radius
            votes = near.sum(axis=1, dtype=np.int32) * mask
            rows = np.flatnonzero(votes)
            if len(rows) > pool:  # keep the candidates close in the most tables
                rows = rows[np.argpartition(-votes[rows], pool - 1)[:pool]]
            candidates[i, :len(rows)] = rows
        if not len(self.live):
            return empty_result(len(queries), k)
        return rerank(self.vectors, queries, candidates, k)

    def memory_bytes(self) -> int:
        return self.planes.nbytes + self.codes.nbytes + self.live.nbytes

    def state(self):
        return {"planes": self.planes.copy(), "codes": self.codes.copy(), "live": self.live.copy()}, {}, {}

    @classmethod
    def restore(cls, dimension, params, vectors, arrays, blobs, info):
        structure = cls(dimension, params, vectors, arrays["planes"].astype(np.float32))
        structure.codes = arrays["codes"].astype(np.uint32)
        structure.live = arrays["live"].astype(bool)
        return structure
