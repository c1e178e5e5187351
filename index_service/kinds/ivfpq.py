"""ivfpq: inverted lists of 4-bit product-quantised codes (FAISS IndexIVFPQFastScan) over unit vectors, the
candidates re-ranked with the exact vectors from the vector file.

Until trained it answers exactly from the vector file. Training runs in the background on a sample (no lock
held); the trained lists are installed empty at once, and from then on a search asks the lists for the rows
they hold and scans the others exactly: the tail, rows written (or moved) and not encoded yet. The background
encoder drains the tail a chunk at a time on every core, outside every lock but short appends; large writes
wait while the tail and the writes queued would pass TAIL_LIMIT (see Collection.has_room_for), so a bulk
load goes at the encoder's pace and the writer never encodes (its groups, which a small write may wait for,
stay short); past twice TAIL_LIMIT, which only small writes can reach, a write encodes its own rows. Codes of
ended rows stay in their lists, filtered out by a bitmap, until compaction removes them (their rows are held
until then); an ended row never encoded is free at once.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import faiss
import numpy as np

from index_service.arrays import unique
from index_service.kinds.base import (TAIL_LIMIT, CaptureGivenUp, Reads, Result, Shared, State, Structure, bitmap,
                                      no_lock, selector)
from index_service.exact import empty_result, exact_from_file, merge, search_raw
from index_service.snapshot import Pieces, collected

PQ_BITS = 4
PQ_TRAINING_POINTS = 9984  # 39 points for each of the 256 centroids FAISS's PQ k-means wants at most
MAX_TRAINING_SAMPLE = 100_000
PURGE_DEAD_FRACTION = 0.2
ASSIGN_CHUNK = 4096  # vectors per coarse-assignment product: 16 MB of scores at 1024 lists
KMEANS_ITERATIONS = 12
ROOT_BEAM = 2  # roots whose leaves a vector is compared with (1: 0.01 less recall@10 at 1M, bench/ivfpq_sweep.py)
TREE_CHUNK = 16384  # vectors assigned at once: each root's share is then a product worth a BLAS call (1.3x)
SNAPSHOT_HOLD_BYTES = 16 << 20  # codes copied per hold of the shared lock while a snapshot copies the lists
ENCODER_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
# Codes the background encoder appends per hold of the exclusive lock. Each list touched costs a few FAISS
# calls, each releasing and taking back the GIL; on two busy cores a hold of 4,096 took 60-130 ms (10 ms
# alone), and a write's publish waited for it.
APPEND_HOLD_ROWS = 1024


def code_parts(dimension: int, wanted: int) -> int:
    """PQ splits a vector into equal parts: the largest divisor of the dimension not above `wanted`."""
    return max(m for m in range(1, min(wanted, dimension) + 1) if dimension % m == 0)


def training_size(params) -> int:
    return max(39 * params.ivf_nlist, PQ_TRAINING_POINTS)


def nearest_lists(unit: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The nearest centroid (highest inner product) of each unit vector, by one matrix product per chunk:
    numpy's BLAS is 3-4x faster here than FAISS's flat search."""
    out = np.empty(len(unit), dtype=np.int64)
    for start in range(0, len(unit), ASSIGN_CHUNK):
        out[start:start + ASSIGN_CHUNK] = np.argmax(unit[start:start + ASSIGN_CHUNK] @ centroids.T, axis=1)
    return out


def spherical_kmeans(sample: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS, seed: int = 0) -> np.ndarray:
    """k unit centroids of unit vectors (what FAISS's spherical k-means for inner-product lists computes),
    started from a random sample; a cluster left empty restarts at a random point."""
    rng = np.random.default_rng(seed)
    centroids = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(iterations):
        assigned = nearest_lists(sample, centroids)
        order = np.argsort(assigned, kind="stable")
        counts = np.bincount(assigned, minlength=k)
        filled = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts[filled])[:-1]])
        centroids[filled] = np.add.reduceat(sample[order], starts, axis=0)
        empty = np.flatnonzero(counts == 0)
        centroids[empty] = sample[rng.choice(len(sample), len(empty), replace=False)]
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-30)
    return centroids


def leaf_shares(members: np.ndarray, total: int) -> np.ndarray:
    """How many of `total` leaves each root gets: in proportion to its sample members, at least one for a
    root that has members, never more than its members (k-means needs a point per centroid)."""
    total = min(total, int(members.sum()))
    shares = np.where(members > 0, np.maximum(1, members * total // max(int(members.sum()), 1)), 0)
    while shares.sum() < total:  # to the root whose leaves would hold the most members each
        room = np.where(shares < members, members / np.maximum(shares, 1), -1.0)
        shares[int(np.argmax(room))] += 1
    while shares.sum() > total:  # from the root whose leaves hold the fewest (fewer leaves than roots: 0)
        room = np.where(shares > (1 if np.any(shares > 1) else 0), members / np.maximum(shares, 1), np.inf)
        shares[int(np.argmin(room))] -= 1
    return shares


class CoarseTree:
    """Two levels of centroids: a few roots, and under each root its leaves, the inverted lists' centroids.
    A vector goes to the best leaf under its ROOT_BEAM best roots: about 3 x sqrt(nlist) products per vector
    instead of nlist (at 1024 lists, the flat assignment was most of the encoding's time and the encoding most
    of an ivfpq write's). Searches still rank every leaf (FAISS's quantizer): a vector whose nearest leaf is
    under a third root is found in its own leaf, a near one."""

    def __init__(self, roots: np.ndarray, leaves: np.ndarray, leaf_root: np.ndarray):
        self.roots = np.ascontiguousarray(roots, dtype=np.float32)
        self.leaves = np.ascontiguousarray(leaves, dtype=np.float32)
        self.leaf_root = np.asarray(leaf_root, dtype=np.int64)
        self.children = [np.flatnonzero(self.leaf_root == r) for r in range(len(self.roots))]
        self.child_centroids = [np.ascontiguousarray(self.leaves[c].T) for c in self.children]

    @classmethod
    def flat(cls, leaves: np.ndarray) -> "CoarseTree":
        """One root over every leaf: the exact nearest leaf (lists trained before the tree existed)."""
        return cls(np.zeros((1, leaves.shape[1]), np.float32), leaves, np.zeros(len(leaves), np.int64))

    @classmethod
    def train(cls, sample: np.ndarray, nlist: int, seed: int = 0) -> "CoarseTree":
        roots = spherical_kmeans(sample, max(1, min(int(round(np.sqrt(nlist))), len(sample))), seed=seed)
        parent = nearest_lists(sample, roots)
        shares = leaf_shares(np.bincount(parent, minlength=len(roots)), nlist)
        kept = np.flatnonzero(shares)
        leaves = [spherical_kmeans(sample[parent == r], int(shares[r]), seed=seed + 1 + int(r)) for r in kept]
        leaf_root = np.repeat(np.arange(len(kept)), shares[kept])
        return cls(roots[kept], np.concatenate(leaves), leaf_root)

    def assign(self, unit: np.ndarray) -> np.ndarray:
        """The leaf (list number) of each unit vector."""
        out = np.empty(len(unit), dtype=np.int64)
        beam = min(ROOT_BEAM, len(self.roots))
        for start in range(0, len(unit), TREE_CHUNK):
            part = unit[start:start + TREE_CHUNK]
            if len(self.roots) == 1:
                out[start:start + len(part)] = np.argmax(part @ self.child_centroids[0], axis=1)
                continue
            root_scores = part @ self.roots.T
            top = np.argpartition(-root_scores, beam - 1, axis=1)[:, :beam] if beam < len(self.roots) else \
                np.broadcast_to(np.arange(beam), (len(part), beam))
            best = np.full(len(part), -np.inf, dtype=np.float32)
            chosen = out[start:start + len(part)]
            for column in range(beam):
                roots = top[:, column]
                order = np.argsort(roots, kind="stable")
                bounds = np.flatnonzero(np.diff(roots[order], prepend=-1, append=len(self.roots)))
                for first, end in zip(bounds[:-1], bounds[1:]):
                    members = order[first:end]
                    root = int(roots[members[0]])
                    scores = part[members] @ self.child_centroids[root]
                    pick = np.argmax(scores, axis=1)
                    score = scores[np.arange(len(members)), pick]
                    better = score > best[members]
                    best[members[better]] = score[better]
                    chosen[members[better]] = self.children[root][pick[better]]
        return out


@dataclass
class Trained:
    lists: faiss.IndexIVFPQFastScan
    tree: CoarseTree


@dataclass
class Encoded:
    """Codes of some rows, ordered by inverted list."""
    list_nos: np.ndarray
    rows: np.ndarray
    codes: np.ndarray  # (n, code_size) uint8, FAISS's flat (unpacked) PQ codes

    def subset(self, keep: np.ndarray) -> "Encoded":
        return Encoded(self.list_nos[keep], self.rows[keep], self.codes[keep])


def encode(lists: faiss.IndexIVFPQFastScan, tree: CoarseTree, unit: np.ndarray, rows: np.ndarray) -> Encoded:
    """Codes for unit vectors: the nearest list, then FAISS's PQ codes of the residuals. Reads the lists only:
    safe beside searches and other encoders."""
    unit = np.ascontiguousarray(unit, dtype=np.float32)
    list_nos = tree.assign(unit)
    codes = np.empty((len(unit), lists.code_size), dtype=np.uint8)
    if len(unit):
        lists.encode_vectors(len(unit), faiss.swig_ptr(unit), faiss.swig_ptr(list_nos), faiss.swig_ptr(codes), False)
    order = np.argsort(list_nos, kind="stable")
    return Encoded(list_nos[order], np.asarray(rows, dtype=np.int64)[order], codes[order])


# FAISS's order of a block's 32 codes within each 16-byte half of a column (pq4_pack_codes, for blocks of 32).
BLOCK_ORDER = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])
BLOCK_CODES = 32


def pack_blocks(codes: np.ndarray) -> np.ndarray:
    """Flat 4-bit PQ codes (n x code_size bytes, n a multiple of 32) in FAISS's fast-scan block layout, one
    row of bytes per block: for each byte column of the codes, 32 bytes holding its low nibbles of the 32 codes,
    then its high nibbles, two codes per byte in BLOCK_ORDER. What CodePacker.pack_all writes (a test checks
    it), for all blocks in a few array operations instead of a FAISS call per block."""
    blocks = codes.reshape(-1, BLOCK_CODES, codes.shape[1])
    low, high = blocks & 15, blocks >> 4
    halves = np.concatenate([low[:, BLOCK_ORDER] | (low[:, BLOCK_ORDER + 16] << 4),
                             high[:, BLOCK_ORDER] | (high[:, BLOCK_ORDER + 16] << 4)], axis=1)
    return np.ascontiguousarray(halves.transpose(0, 2, 1)).reshape(len(blocks), -1)


def unpack_blocks(blocks: np.ndarray, code_size: int) -> np.ndarray:
    """The inverse of pack_blocks: (n_blocks x block bytes) to (32 n_blocks x code_size) flat codes."""
    halves = blocks.reshape(len(blocks), code_size, BLOCK_CODES).transpose(0, 2, 1)
    low = np.empty((len(blocks), BLOCK_CODES, code_size), dtype=np.uint8)
    high = np.empty_like(low)
    for nibbles, half in ((low, halves[:, :16]), (high, halves[:, 16:])):
        nibbles[:, BLOCK_ORDER] = half & 15
        nibbles[:, BLOCK_ORDER + 16] = half >> 4
    return (low | (high << 4)).reshape(-1, code_size)


def append_encoded(lists: faiss.IndexIVFPQFastScan, encoded: Encoded) -> None:
    """Appends codes to their inverted lists, packing FAISS's blocks of 32 codes here (under the exclusive
    lock: O(batch)). A list's last, partly filled block is unpacked and packed again with the new codes, all
    lists' blocks together. Not FAISS's merge_from or add_entries: when a list already holds a multiple of
    block_size entries they copy a whole list's blocks past the end of the destination (heap corruption: it
    crashed the index at about 1.3M vectors)."""
    if not len(encoded.rows):
        return
    target = faiss.downcast_InvertedLists(lists.invlists)
    block_bytes, code_size = target.block_size, target.packer.code_size
    if target.packer.nvec != BLOCK_CODES:
        raise RuntimeError(f"fast-scan blocks of {target.packer.nvec} codes; this packing knows {BLOCK_CODES}")
    starts = np.flatnonzero(np.diff(encoded.list_nos, prepend=-1))
    counts = np.diff(np.append(starts, len(encoded.rows)))
    list_nos = encoded.list_nos[starts]
    held = np.array([target.list_size(int(list_no)) for list_no in list_nos], dtype=np.int64)
    first_block, partial = np.divmod(held, BLOCK_CODES)
    blocks = -(-(partial + counts) // BLOCK_CODES)  # blocks written per list, its partial one first
    block_at = np.cumsum(blocks) - blocks
    merged = np.zeros((int(blocks.sum()) * BLOCK_CODES, code_size), dtype=np.uint8)
    filled = np.flatnonzero(partial)
    if len(filled):
        last = np.stack([faiss.rev_swig_ptr(target.get_codes(int(list_nos[i])), (int(first_block[i]) + 1) * block_bytes)
                         [int(first_block[i]) * block_bytes:] for i in filled])
        existing = unpack_blocks(last, code_size).reshape(len(filled), BLOCK_CODES, code_size)
        owner = np.repeat(np.arange(len(filled)), partial[filled])
        slot = np.arange(len(owner)) - np.repeat(np.cumsum(partial[filled]) - partial[filled], partial[filled])
        merged[block_at[filled][owner] * BLOCK_CODES + slot] = existing[owner, slot]
    segment = np.repeat(np.arange(len(starts)), counts)
    slot = np.arange(len(segment)) - starts[segment] + partial[segment]
    merged[block_at[segment] * BLOCK_CODES + slot] = encoded.codes
    packed = pack_blocks(merged)
    for i, list_no in enumerate(list_nos.tolist()):
        size, end = int(held[i] + counts[i]), int(first_block[i] + blocks[i])
        target.resize(list_no, size)
        faiss.rev_swig_ptr(target.get_ids(list_no), size)[held[i]:] = encoded.rows[starts[i]:starts[i] + counts[i]]
        faiss.rev_swig_ptr(target.get_codes(list_no), end * block_bytes)[first_block[i] * block_bytes:] = \
            packed[block_at[i]:block_at[i] + blocks[i]].ravel()
    lists.ntotal += len(encoded.rows)


class IvfPqStructure(Structure):
    kind = "ivfpq"
    approximate = True
    waits_for_tail = True

    def __init__(self, dimension, params, vectors, lists=None, tree=None):
        super().__init__(dimension, params, vectors)
        self.lists = None  # the trained IndexIVFPQFastScan, or None: exact search from the vector file
        self.tree = None  # the lists' centroids, in two levels (see CoarseTree)
        self.live = np.zeros(0, dtype=bool)
        self.coded = np.zeros(0, dtype=bool)  # rows whose code is in the lists (live or not)
        self._live_bits = None
        self._tail = np.zeros(0, dtype=np.int64)  # live rows not coded (see _changed)
        self._ended_while_encoding: list[np.ndarray] | None = None
        self.purges = 0  # bumped when codes leave the lists: list prefixes are append-only in between
        self._empty_lists = b""  # the trained lists with no entries, serialized (what a snapshot stores of them)
        if lists is not None:
            self._use(lists, tree)

    @property
    def trained(self) -> bool:
        return self.lists is not None

    def _use(self, lists: faiss.IndexIVFPQFastScan, tree: CoarseTree | None = None, empty_lists: bytes = b"") -> None:
        """`empty_lists`: the lists serialized without entries, given where `lists` holds some."""
        self.lists = lists
        self.tree = tree or CoarseTree.flat(lists.quantizer.reconstruct_n(0, lists.nlist))
        self._empty_lists = empty_lists or faiss.serialize_index(lists).tobytes()

    def _grow(self, max_row: int) -> None:
        if max_row >= len(self.live):
            size = max(max_row + 1, int(len(self.live) * 1.25) + 1024)
            self.live = np.concatenate([self.live, np.zeros(size - len(self.live), dtype=bool)])
            self.coded = np.concatenate([self.coded, np.zeros(size - len(self.coded), dtype=bool)])

    def _changed(self) -> None:
        """Under the exclusive lock (or while nothing else runs), after any change of `live` or `coded`. The
        tail is computed here, never lazily: the writer, has_room_for and the maintenance read it without a
        lock, and a cache they filled could be computed from arrays half-way through a change and outlive
        it (searches would then miss new rows or see ended ones)."""
        self._live_bits = None
        self._tail = np.flatnonzero(self.live & ~self.coded)

    # Writing.

    def stage(self, rows, unit, exclusive):
        if len(rows) and int(rows.max()) >= len(self.live):  # only the writer grows them
            with exclusive():  # the background encoder changes these arrays too
                self._grow(int(rows.max()))
        if not self.trained or not len(rows) or len(self.tail_rows()) + len(rows) <= 2 * TAIL_LIMIT:
            return rows, None
        return rows, encode(self.lists, self.tree, unit, rows)

    def publish(self, staged, ended):
        rows, encoded = staged
        ended = ended[ended < len(self.live)]
        self.live[ended] = False
        if self._ended_while_encoding is not None and len(ended):
            self._ended_while_encoding.append(ended.copy())
        if len(rows):
            if encoded is not None:
                append_encoded(self.lists, encoded)
                self.coded[rows] = True
            self.live[rows] = True
        self._changed()

    def stage_relocation(self, new_rows, unit):
        return self.stage(new_rows, unit, no_lock)  # the caller holds the write mutex

    def relocate(self, old_rows, new_rows, staged=None):
        self.publish(staged, old_rows)

    def freed_at_once(self, ended):
        ended = ended[ended < len(self.coded)]
        return ended[~self.coded[ended]]

    def held_rows(self):
        return np.flatnonzero(self.coded & ~self.live)

    def needs_purge(self, live: int) -> bool:
        held = int(np.count_nonzero(self.coded & ~self.live)) if self.trained else 0
        return held > max(1024, PURGE_DEAD_FRACTION * max(live, 1))

    def purge(self, exclusive):
        if not self.trained:
            return np.zeros(0, dtype=np.int64)
        held = self.held_rows()
        with exclusive():
            self.lists.remove_ids(faiss.IDSelectorBatch(held))  # moves codes within lists
            self.purges += 1
            self.coded[held] = False
            self._changed()
        return held

    def shrink(self, end):
        self.live = self.live[:end].copy()
        self.coded = self.coded[:end].copy()
        self._changed()

    # Training and encoding (the collection's maintenance runs these, outside every lock unless noted).

    def train(self, sample: np.ndarray) -> Trained:
        """Empty lists and their coarse tree, trained on unit vectors."""
        nlist = min(self.params.ivf_nlist, len(sample))
        quantizer = faiss.IndexFlatIP(self.dimension)
        lists = faiss.IndexIVFPQFastScan(quantizer, self.dimension, nlist, code_parts(self.dimension, self.params.pq_m),
                                         PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        lists.own_fields = True  # the lists delete their quantizer; Python must not as well
        quantizer.this.disown()
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        tree = CoarseTree.train(sample, nlist)
        quantizer.add(tree.leaves)  # FAISS then trains only the PQ, on the residuals
        lists.train(sample)
        return Trained(lists, tree)

    def install(self, trained: Trained) -> None:
        """Under the exclusive lock: searches use the (empty) trained lists from now on, every live row in the
        tail until encoded."""
        self._use(trained.lists, trained.tree)
        self.coded[:] = False
        self._changed()

    def tail_rows(self) -> np.ndarray:
        """Live rows whose code is not in the lists (all of them until trained), searched exactly. Never
        changed in place: a reader without a lock keeps a consistent array."""
        return self._tail

    def drains_tail(self) -> bool:
        return self.trained

    def begin_tail(self, limit: int) -> np.ndarray:
        """From here on, rows that end are noted, so that codes of rows reused meanwhile are never added."""
        self._ended_while_encoding = []
        return self.tail_rows()[:limit].copy()

    def prepare_tail(self, rows: np.ndarray, unit: np.ndarray) -> Encoded:
        """Encoded on every core: large writes wait for this encoder alone (FAISS and the products release
        the GIL)."""
        parts = np.array_split(np.arange(len(rows)), min(ENCODER_THREADS, max(1, len(rows) // 1024)))
        if len(parts) == 1:
            return encode(self.lists, self.tree, unit, rows)
        with ThreadPoolExecutor(len(parts), thread_name_prefix="ivfpq-encode", initializer=faiss.omp_set_num_threads,
                                initargs=(1,)) as pool:  # the threads are the parallelism
            encoded = list(pool.map(lambda part: encode(self.lists, self.tree, unit[part[0]:part[-1] + 1], rows[part]),
                                    parts))
        list_nos = np.concatenate([each.list_nos for each in encoded])
        order = np.argsort(list_nos, kind="stable")
        return Encoded(list_nos[order], np.concatenate([each.rows for each in encoded])[order],
                       np.concatenate([each.codes for each in encoded])[order])

    def absorb_tail(self, encoded: Encoded, exclusive) -> int:
        """Codes of rows still live and uncoded join the lists, APPEND_HOLD_ROWS per hold of the exclusive
        lock; a row ended meanwhile (and perhaps reused by a newer vector) never gets the old code."""
        added = 0
        for start in range(0, len(encoded.rows), APPEND_HOLD_ROWS):
            piece = encoded.subset(slice(start, start + APPEND_HOLD_ROWS))  # still sorted by list
            with exclusive():
                ended = np.concatenate(self._ended_while_encoding) if self._ended_while_encoding else \
                    np.zeros(0, np.int64)
                rows = piece.rows
                piece = piece.subset(self.live[rows] & ~self.coded[rows] & ~np.isin(rows, ended))
                append_encoded(self.lists, piece)
                self.coded[piece.rows] = True
                self._left_tail(piece.rows)
            added += len(piece.rows)
        return added

    def _left_tail(self, rows: np.ndarray) -> None:
        """Under the exclusive lock, once `rows` (live rows of the tail) are coded: the tail without them, in
        O(tail) where _changed is O(all rows): 0.2 ms against 4.9 ms at 10M rows with a 64k tail, in every hold
        of the encoder's. `live` did not change, so neither did its bitmap."""
        if not len(rows):
            return
        tail = self._tail
        at = np.searchsorted(tail, rows)
        if at.max() >= len(tail) or not np.array_equal(tail[at], rows):
            self._changed()  # not all in the tail (never expected): computed whole
            return
        keep = np.ones(len(tail), dtype=bool)
        keep[at] = False
        self._tail = tail[keep]  # a new array: a reader without a lock keeps the old one whole

    def end_tail(self) -> None:
        self._ended_while_encoding = None

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

    def search(self, queries, k, allowed, params=None) -> Reads:
        """The lists are searched here, under the shared lock; the returned function then scans the tail and
        re-ranks the candidates from the vector file, outside it (the rows are kept: Collection.search)."""
        params = params or self.params
        tail = self.tail_rows()  # replaced, never changed in place: safe to read after the lock is let go
        if allowed is not None:
            allowed = allowed[allowed < len(self.live)]
            tail = allowed[self.live[allowed] & ~self.coded[allowed]]
        candidates = None
        if self.trained and self.lists.ntotal:
            bits = self._live_selector(allowed)
            probe = faiss.SearchParametersIVF(nprobe=min(params.ivf_nprobe, self.lists.nlist),
                                              sel=selector(bits))
            _, candidates = self.lists.search(queries, k * params.rerank_factor, params=probe)
        vectors = self.vectors

        def read() -> Result:
            best = exact_from_file(vectors, tail, queries, k)
            if candidates is not None:
                best = merge(best, rerank(vectors, queries, candidates, k), k)
            return best
        return read

    def pending(self) -> int:
        return len(self.tail_rows())

    def memory_bytes(self) -> int:
        if not self.trained:
            return self.live.nbytes + self.coded.nbytes
        codes = self.lists.ntotal * (self.lists.code_size + 8)
        return codes + 4 * self.dimension * self.lists.nlist + self.live.nbytes + self.coded.nbytes

    # Persistence.

    def state(self):
        arrays, blobs, info = self.capture()(no_lock)
        return collected(arrays), blobs, info

    def capture(self):
        """The flags, the tree and each list's size now; the lists' ids and codes are copied later, a few
        lists per hold of the shared lock (the codes as the snapshot writes them). Appends in between only add
        entries past the sizes taken here (and may fill the rest of a list's last block: those slots are
        cleared in the copy); a purge moves entries, and the capture is then given up."""
        arrays = {"live": self.live.copy(), "coded": self.coded.copy()}
        if not self.trained:
            return lambda shared: (arrays, {}, {"trained": False})
        arrays |= {"tree_roots": self.tree.roots, "tree_leaf_root": self.tree.leaf_root}  # never changed
        lists, purges = self.lists, self.purges
        target = faiss.downcast_InvertedLists(lists.invlists)
        sizes = np.array([target.list_size(list_no) for list_no in range(lists.nlist)], dtype=np.int64)

        def finish(shared: Shared) -> State:
            def unchanged():
                if self.purges != purges:
                    raise CaptureGivenUp("a purge moved codes within the lists")
            copy = ListCopy(target, sizes, unchanged, shared)
            return (arrays | {"lists_sizes": sizes, "lists_ids": copy.ids(),
                              "lists_codes": Pieces(np.uint8, (copy.code_bytes,), copy.codes())},
                    {"lists.faiss": self._empty_lists}, {"trained": True})
        return finish

    @classmethod
    def restore(cls, dimension, params, vectors, arrays, blobs, info):
        structure = cls(dimension, params, vectors)
        if info.get("trained"):
            lists = faiss.deserialize_index(np.frombuffer(blobs["lists.faiss"], dtype=np.uint8))
            empty_lists = blobs["lists.faiss"]
            if "lists_sizes" in arrays:
                fill_lists(lists, arrays["lists_sizes"], arrays["lists_ids"], arrays["lists_codes"])
            else:  # snapshots before the lists were copied in pieces: serialized whole, entries included
                empty = faiss.deserialize_index(np.frombuffer(blobs["lists.faiss"], dtype=np.uint8))
                empty.reset()
                empty_lists = faiss.serialize_index(empty).tobytes()
            tree = None
            if "tree_roots" in arrays:  # snapshots of lists trained before the tree have none: flat assignment
                tree = CoarseTree(arrays["tree_roots"], lists.quantizer.reconstruct_n(0, lists.nlist),
                                  arrays["tree_leaf_root"])
            structure._use(lists, tree, empty_lists)
        structure.live = arrays["live"].astype(bool)
        structure.coded = arrays["coded"].astype(bool)
        structure._changed()
        return structure


class ListCopy:
    """The first sizes[l] ids and codes of each list l (codes in whole blocks, the slots past the size
    cleared), copied a few lists per hold of `shared()`, ids whole, codes as pieces in list order;
    `unchanged()` is asked at every hold and raises once the lists were rewritten."""

    def __init__(self, target, sizes: np.ndarray, unchanged: Callable[[], None], shared: Shared):
        self.target, self.sizes, self.unchanged, self.shared = target, sizes, unchanged, shared
        self.block_bytes = target.block_size
        self.blocks, self.id_at, _ = list_layout(sizes, self.block_bytes)
        self.code_bytes = int(self.blocks.sum()) * self.block_bytes
        self.filled = np.flatnonzero(sizes).tolist()

    def _holds(self, bytes_per_list: np.ndarray):
        """Lists grouped by hold: each group's lists, copied under one hold of the shared lock."""
        at = 0
        while at < len(self.filled):
            group, held = [], 0
            while at < len(self.filled) and (not group or held < SNAPSHOT_HOLD_BYTES):
                group.append(self.filled[at])
                held += int(bytes_per_list[self.filled[at]])
                at += 1
            yield group

    def ids(self) -> np.ndarray:
        ids = np.empty(int(self.sizes.sum()), dtype=np.int64)
        for group in self._holds(self.sizes * 8):
            with self.shared():
                self.unchanged()
                for list_no in group:
                    size, at = int(self.sizes[list_no]), int(self.id_at[list_no])
                    ids[at:at + size] = faiss.rev_swig_ptr(self.target.get_ids(list_no), size)
        return ids

    def codes(self):
        """Each hold's codes as one piece."""
        for group in self._holds(self.blocks * self.block_bytes):
            nbytes = self.blocks[group] * self.block_bytes
            piece = np.empty(int(nbytes.sum()), dtype=np.uint8)
            starts = np.cumsum(nbytes) - nbytes
            with self.shared():
                self.unchanged()
                for list_no, start, size in zip(group, starts.tolist(), nbytes.tolist()):
                    piece[start:start + size] = faiss.rev_swig_ptr(self.target.get_codes(list_no), size)
            self._clear_past_sizes(piece, np.asarray(group), starts)
            yield piece

    def _clear_past_sizes(self, piece: np.ndarray, lists: np.ndarray, starts: np.ndarray) -> None:
        """Zeroes the slots of each list's last block past its size: appends may have filled them since."""
        partial = np.flatnonzero(self.sizes[lists] % BLOCK_CODES)
        if not len(partial):
            return
        block_bytes = self.block_bytes
        last = (starts[partial] + (self.blocks[lists[partial]] - 1) * block_bytes)[:, None] + np.arange(block_bytes)
        flat = unpack_blocks(piece[last], self.target.packer.code_size).reshape(len(partial), BLOCK_CODES, -1)
        flat[np.arange(BLOCK_CODES)[None, :] >= (self.sizes[lists[partial]] % BLOCK_CODES)[:, None]] = 0
        piece[last] = pack_blocks(flat.reshape(-1, flat.shape[2]))


def fill_lists(lists: faiss.IndexIVFPQFastScan, sizes: np.ndarray, ids: np.ndarray, codes: np.ndarray) -> None:
    """Loads what ListCopy copied into empty lists."""
    target = faiss.downcast_InvertedLists(lists.invlists)
    block_bytes = target.block_size
    blocks, id_at, code_at = list_layout(sizes, block_bytes)
    if len(sizes) != lists.nlist or int(sizes.sum()) != len(ids) or int(blocks.sum()) * block_bytes != len(codes):
        raise ValueError("the snapshot's list sizes do not match its ids and codes")
    for list_no in np.flatnonzero(sizes).tolist():
        size, nbytes = int(sizes[list_no]), int(blocks[list_no]) * block_bytes
        target.resize(list_no, size)
        faiss.rev_swig_ptr(target.get_ids(list_no), size)[:] = ids[id_at[list_no]:id_at[list_no] + size]
        faiss.rev_swig_ptr(target.get_codes(list_no), nbytes)[:] = codes[code_at[list_no]:code_at[list_no] + nbytes]
    lists.ntotal = len(ids)


def list_layout(sizes: np.ndarray, block_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For lists of these sizes laid end to end (ids, and codes in whole blocks): each list's blocks, and
    where its ids and its codes start."""
    blocks = -(-sizes // BLOCK_CODES)
    return blocks, np.cumsum(sizes) - sizes, (np.cumsum(blocks) - blocks) * block_bytes


def rerank(vectors, queries: np.ndarray, candidates: np.ndarray, k: int) -> Result:
    """Each query's candidates ordered by their exact cosine, best k kept."""
    scores_out, rows_out = empty_result(len(queries), k)
    for i, rows in enumerate(candidates):
        rows = unique(rows[rows >= 0])
        if len(rows):
            raw = vectors.read(rows)
            # Norms in float32 (3x cheaper than the float64 ones exact search uses, a sixth of a re-rank's
            # time): these only order an approximate kind's candidates, all of them vectors whose norm passed
            # the [MIN_NORM, MAX_NORM] check, where float32 squares neither overflow nor vanish.
            row_norms = np.sqrt(np.einsum("ij,ij->i", raw, raw))
            scores, best = search_raw(queries[i:i + 1], raw, rows, k, row_norms)
            scores_out[i], rows_out[i] = scores[0], best[0]
    return scores_out, rows_out
