"""ivfpq: inverted lists of 4-bit product-quantised codes (FAISS IndexIVFPQFastScan) over unit vectors, the
candidates re-ranked with the exact vectors from the vector file.

Until trained it answers exactly from the vector file. Training happens in the background on a sample (the
collection runs it: `train` and `encode_all` take no lock), then the trained lists are swapped in. New
vectors are encoded into a private delta index outside the exclusive lock and merged into the lists under
it (O(batch)). Codes of ended rows stay in their lists, filtered out by a bitmap, until compaction removes
them; their rows are held until then.
"""

import faiss
import numpy as np

from index_service.kinds.base import Result, Structure, bitmap
from index_service.exact import empty_result, merge, search_raw

PQ_BITS = 4
PQ_TRAINING_POINTS = 9984  # 39 points for each of the 256 centroids FAISS's PQ k-means wants at most
MAX_TRAINING_SAMPLE = 100_000
PURGE_DEAD_FRACTION = 0.2
EXACT_CHUNK = 65536


def code_parts(dimension: int, wanted: int) -> int:
    """PQ splits a vector into equal parts: the largest divisor of the dimension not above `wanted`."""
    return max(m for m in range(1, min(wanted, dimension) + 1) if dimension % m == 0)


def training_size(params) -> int:
    return max(39 * params.ivf_nlist, PQ_TRAINING_POINTS)


def append_lists(lists: faiss.IndexIVFPQFastScan, delta: faiss.IndexIVFPQFastScan) -> None:
    """Appends every inverted list of `delta` to `lists` (one training), what lists.merge_from(delta, 0) does.

    Not merge_from: FAISS's BlockInvertedLists.add_entries, which it uses, copies a whole list's blocks past
    the end of the destination when that list already holds a multiple of block_size entries (heap corruption:
    it crashed the index at about 1.3M vectors). Those lists are appended entry by entry with the code packer;
    for the others add_entries is right."""
    target = faiss.downcast_InvertedLists(lists.invlists)
    source = faiss.downcast_InvertedLists(delta.invlists)
    packer = target.packer
    code = np.empty(packer.code_size, dtype=np.uint8)
    for list_no in range(source.nlist):
        count = source.list_size(list_no)
        if not count:
            continue
        held = target.list_size(list_no)
        if held == 0 or held % target.block_size:
            target.add_entries(list_no, count, source.get_ids(list_no), source.get_codes(list_no))
            continue
        target.resize(list_no, held + count)
        faiss.rev_swig_ptr(target.get_ids(list_no), held + count)[held:] = \
            faiss.rev_swig_ptr(source.get_ids(list_no), count)
        packed_in, packed_out = source.get_codes(list_no), target.get_codes(list_no)
        for entry in range(count):
            packer.unpack_1_c(packed_in, entry, faiss.swig_ptr(code))
            packer.pack_1_c(faiss.swig_ptr(code), held + entry, packed_out)
    lists.ntotal += delta.ntotal


class IvfPqStructure(Structure):
    kind = "ivfpq"
    approximate = True

    def __init__(self, dimension, params, vectors, lists=None):
        super().__init__(dimension, params, vectors)
        self.lists = lists  # the trained IndexIVFPQFastScan, or None: exact search from the vector file
        self.template = faiss.clone_index(lists) if lists is not None else None
        if self.template is not None:
            self.template.reset()
        self.live = np.zeros(0, dtype=bool)
        self.coded = np.zeros(0, dtype=bool)  # rows whose code is in the lists (live or not)
        self._live_bits = None

    @property
    def trained(self) -> bool:
        return self.lists is not None

    def _grow(self, max_row: int) -> None:
        if max_row >= len(self.live):
            size = max(max_row + 1, int(len(self.live) * 1.25) + 1024)
            self.live = np.concatenate([self.live, np.zeros(size - len(self.live), dtype=bool)])
            self.coded = np.concatenate([self.coded, np.zeros(size - len(self.coded), dtype=bool)])

    # Writing.

    def stage(self, rows, unit, exclusive):
        if len(rows):
            self._grow(int(rows.max()))  # outside the exclusive lock
        if not self.trained or not len(rows):
            return rows, None
        delta = faiss.clone_index(self.template)
        delta.add_with_ids(np.ascontiguousarray(unit), rows)
        return rows, delta

    def publish(self, staged, ended):
        rows, delta = staged
        ended = ended[ended < len(self.live)]
        self.live[ended] = False
        if len(rows):
            if delta is not None:
                append_lists(self.lists, delta)
                self.coded[rows] = True
            self.live[rows] = True
        self._live_bits = None

    def stage_relocation(self, new_rows, unit):
        return self.stage(new_rows, unit, None)

    def relocate(self, old_rows, new_rows, staged=None):
        self.publish(staged, old_rows)

    def keeps_ended(self) -> bool:
        return self.trained

    def held_rows(self):
        return np.flatnonzero(self.coded & ~self.live)

    def needs_purge(self, live: int) -> bool:
        held = int((self.coded & ~self.live).sum()) if self.trained else 0
        return held > max(1024, PURGE_DEAD_FRACTION * max(live, 1))

    def purge(self, exclusive):
        if not self.trained:
            return np.zeros(0, dtype=np.int64)
        held = self.held_rows()
        with exclusive():
            self.lists.remove_ids(faiss.IDSelectorBatch(held))
            self.coded[held] = False
        return held

    def shrink(self, end):
        self.live = self.live[:end].copy()
        self.coded = self.coded[:end].copy()
        self._live_bits = None

    # Training (the collection runs these outside every lock, then installs the result).

    def train(self, sample: np.ndarray) -> faiss.IndexIVFPQFastScan:
        """Empty lists trained on unit vectors."""
        nlist = min(self.params.ivf_nlist, len(sample))
        quantizer = faiss.IndexFlatIP(self.dimension)
        lists = faiss.IndexIVFPQFastScan(quantizer, self.dimension, nlist, code_parts(self.dimension, self.params.pq_m),
                                         PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        lists.own_fields = True  # the lists delete their quantizer; Python must not as well
        quantizer.this.disown()
        lists.cp.max_points_per_centroid = max(64, MAX_TRAINING_SAMPLE // max(nlist, 1))
        lists.train(np.ascontiguousarray(sample))
        return lists

    def install(self, lists: faiss.IndexIVFPQFastScan, coded_rows: np.ndarray) -> None:
        """Under the exclusive lock: searches go to the trained lists from now on."""
        self.lists = lists
        self.template = faiss.clone_index(lists)
        self.template.reset()
        self._grow(int(coded_rows.max()) if len(coded_rows) else 0)
        self.coded[:] = False
        self.coded[coded_rows] = True
        self._live_bits = None

    # Reading.

    def _live_selector(self, allowed):
        if allowed is None:
            if self._live_bits is None:
                self._live_bits = bitmap(self.live)
            bits = self._live_bits
        else:
            flags = np.zeros(len(self.live), dtype=bool)
            allowed = allowed[allowed < len(self.live)]
            flags[allowed] = self.live[allowed]
            bits = bitmap(flags)
        return bits

    def search(self, queries, k, allowed) -> Result:
        if not self.trained:
            rows = np.flatnonzero(self.live) if allowed is None else allowed[self.live[allowed[allowed < len(self.live)]]]
            return exact_from_file(self.vectors, rows, queries, k)
        bits = self._live_selector(allowed)
        params = faiss.SearchParametersIVF(nprobe=min(self.params.ivf_nprobe, self.lists.nlist),
                                           sel=faiss.IDSelectorBitmap(len(self.live), faiss.swig_ptr(bits)))
        _, candidates = self.lists.search(queries, k * self.params.rerank_factor, params=params)
        return rerank(self.vectors, queries, candidates, k)

    def memory_bytes(self) -> int:
        if not self.trained:
            return self.live.nbytes + self.coded.nbytes
        codes = self.lists.ntotal * (self.lists.code_size + 8)
        return codes + 4 * self.dimension * self.lists.nlist + self.live.nbytes + self.coded.nbytes

    # Persistence.

    def state(self):
        arrays = {"live": self.live.copy(), "coded": self.coded.copy()}
        blobs = {"lists.faiss": faiss.serialize_index(self.lists).tobytes()} if self.trained else {}
        return arrays, blobs, {"trained": self.trained}

    @classmethod
    def restore(cls, dimension, params, vectors, arrays, blobs, info):
        lists = None
        if info.get("trained"):
            lists = faiss.deserialize_index(np.frombuffer(blobs["lists.faiss"], dtype=np.uint8))
        structure = cls(dimension, params, vectors, lists)
        structure.live = arrays["live"].astype(bool)
        structure.coded = arrays["coded"].astype(bool)
        return structure


def exact_from_file(vectors, rows: np.ndarray, queries: np.ndarray, k: int) -> Result:
    """Exact top-k over raw rows of the vector file, read in sequential chunks."""
    best = empty_result(len(queries), k)
    for part, raw in vectors.scan(np.asarray(rows, dtype=np.int64), EXACT_CHUNK):
        best = merge(best, search_raw(queries, raw, part, k), k)
    return best


def rerank(vectors, queries: np.ndarray, candidates: np.ndarray, k: int) -> Result:
    """Each query's candidates ordered by their exact cosine, best k kept."""
    scores_out, rows_out = empty_result(len(queries), k)
    for i, rows in enumerate(candidates):
        rows = np.unique(rows[rows >= 0])
        if len(rows):
            scores, best = search_raw(queries[i:i + 1], vectors.read(rows), rows, k)
            scores_out[i], rows_out[i] = scores[0], best[0]
    return scores_out, rows_out
