"""hnsw: a navigable small-world graph over unit vectors (FAISS IndexHNSWFlat), searched through a bitmap of
live nodes. Nodes of ended items stay in the graph as waypoints (their rows stay held, so their vectors stay
in the vector file) until compaction rebuilds the graph from the live ones. Snapshots hold the graph, not
the vectors: those are read back from the vector file.

Graph insertion is slow (about 1.4k vectors/s on two cores at 768-d), so writes do not wait for it: their
rows join the tail, searched exactly from the vector file, and the collection's maintenance inserts them in
the background, STAGE_CHUNK nodes per hold of the exclusive lock. Past TAIL_LIMIT large writes wait for it
(past twice that, a write that still arrives inserts its own rows). Rows of the batch being inserted stay held if they
end meanwhile (they become dead waypoints), so no row is reused under the inserter."""

import threading

import faiss
import numpy as np

from index_service.arrays import unique
from index_service.kinds.base import TAIL_LIMIT, Result, Structure, bitmap, no_lock, selector
from index_service.exact import exact_from_file, merge, unit_rows

# Nodes inserted per hold of the exclusive lock: FAISS's graph may not be searched while it grows.
STAGE_CHUNK = 256
REBUILD_DEAD_FRACTION = 0.1


def storage_matrix(index: faiss.IndexHNSWFlat) -> np.ndarray:
    """A numpy view of the graph's vectors (valid until the next insertion)."""
    storage = faiss.downcast_index(index.storage)
    return faiss.rev_swig_ptr(storage.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def new_graph(dimension: int, params) -> faiss.IndexHNSWFlat:
    graph = faiss.IndexHNSWFlat(dimension, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = params.hnsw_ef_construction
    return graph


class HnswStructure(Structure):
    kind = "hnsw"
    approximate = True
    tail_chunk = 2048  # about 1.5 s of insertion at 768-d: stopping the maintenance never waits long
    waits_for_tail = True

    def __init__(self, dimension, params, vectors, graph=None):
        super().__init__(dimension, params, vectors)
        self.graph = graph if graph is not None else new_graph(dimension, params)
        self.node_row = np.zeros(0, dtype=np.int64)  # the row each node was made from, kept after it ends
        self.node_live = np.zeros(0, dtype=bool)
        self.row_node = np.zeros(0, dtype=np.int64)
        self.pending_rows = np.zeros(0, dtype=bool)  # live rows not in the graph yet: the tail
        self._live_bits = None
        self._tail = np.zeros(0, dtype=np.int64)  # see _changed
        self._inserting = np.zeros(0, dtype=np.int64)  # the background batch's rows, while one runs
        self._inserter = threading.Lock()

    def _grow_rows(self, max_row: int) -> None:
        if max_row >= len(self.row_node):
            size = max(max_row + 1, int(len(self.row_node) * 1.25) + 1024)
            grown = np.full(size, -1, dtype=np.int64)
            grown[:len(self.row_node)] = self.row_node
            self.row_node = grown
            self.pending_rows = np.concatenate([self.pending_rows, np.zeros(size - len(self.pending_rows), bool)])

    # Writing.

    def stage(self, rows, unit, exclusive):
        if len(rows) and int(rows.max()) >= len(self.row_node):  # only the writer grows them
            with exclusive():  # the background inserter changes these arrays too
                self._grow_rows(int(rows.max()))
        if len(self.tail_rows()) + len(rows) <= 2 * TAIL_LIMIT:
            return rows, None
        return self._insert(rows, unit, exclusive)

    def rebuild(self, rows, unit):
        """Loading (nothing searches yet): straight into the graph, as the snapshot it replaces held them."""
        self._grow_rows(int(rows.max()))
        self.publish(self._insert(rows, unit, no_lock), np.zeros(0, dtype=np.int64))

    def _insert(self, rows, unit, exclusive):
        """Adds nodes for rows, STAGE_CHUNK per hold of `exclusive`; they stay unsearchable (not live) until
        the caller marks them. One inserter at a time (the writer past TAIL_LIMIT, or the background one)."""
        with self._inserter:
            first = self.graph.ntotal
            for start in range(0, len(rows), STAGE_CHUNK):
                with exclusive():
                    self.graph.add(np.ascontiguousarray(unit[start:start + STAGE_CHUNK]))
            with exclusive():
                self.node_row = np.concatenate([self.node_row, rows])
                self.node_live = np.concatenate([self.node_live, np.zeros(len(rows), dtype=bool)])
            return rows, np.arange(first, first + len(rows), dtype=np.int64)

    def publish(self, staged, ended):
        rows, nodes = staged
        self._end(ended)
        if len(rows):
            if nodes is None:
                self.pending_rows[rows] = True
            else:
                self.row_node[rows] = nodes
                self.node_live[nodes] = True
        self._changed()

    def _changed(self) -> None:
        """Under the exclusive lock (or while nothing else runs), after any change of `pending_rows`; the tail
        is computed here, never lazily, for the readers without a lock (see ivfpq's _changed)."""
        self._live_bits = None
        self._tail = np.flatnonzero(self.pending_rows)

    def _end(self, rows: np.ndarray) -> None:
        rows = rows[rows < len(self.row_node)]
        nodes = self.row_node[rows]
        nodes = nodes[nodes >= 0]
        self.node_live[nodes] = False
        self.row_node[rows] = -1
        self.pending_rows[rows] = False

    def relocate(self, old_rows, new_rows, staged=None):
        self._grow_rows(int(new_rows.max()))
        nodes = self.row_node[old_rows]
        self.row_node[old_rows] = -1
        self.row_node[new_rows] = nodes
        self.node_row[nodes[nodes >= 0]] = new_rows[nodes >= 0]
        self.pending_rows[new_rows] = self.pending_rows[old_rows]
        self.pending_rows[old_rows] = False
        self._changed()

    def freed_at_once(self, ended):
        """Rows not in the graph, unless the background batch is inserting them: those become waypoints."""
        ended = ended[ended < len(self.pending_rows)]
        return ended[self.pending_rows[ended] & ~np.isin(ended, self._inserting)]

    def held_rows(self) -> np.ndarray:
        dead = ~self.node_live
        return unique(self.node_row[dead])

    def needs_purge(self, live: int) -> bool:
        dead = len(self.node_live) - int(np.count_nonzero(self.node_live))  # `live` counts the tail too
        return dead > max(1024, REBUILD_DEAD_FRACTION * len(self.node_live))

    def purge(self, exclusive) -> np.ndarray:
        """Builds a new graph of the live nodes (searches go on meanwhile on the old one), then swaps."""
        held = self.held_rows()
        live_nodes = np.flatnonzero(self.node_live)
        vectors = storage_matrix(self.graph)[live_nodes].copy()
        rows = self.node_row[live_nodes]
        graph = new_graph(self.dimension, self.params)
        for start in range(0, len(vectors), 65536):
            graph.add(vectors[start:start + 65536])
        with exclusive():
            self.graph = graph
            self.node_row = rows.copy()
            self.node_live = np.ones(len(rows), dtype=bool)
            self.row_node[:] = -1
            self.row_node[rows] = np.arange(len(rows))
            self._live_bits = None
        return held

    def shrink(self, end):
        self.row_node = self.row_node[:end].copy()
        self.pending_rows = self.pending_rows[:end].copy()
        self._changed()

    # The tail.

    def tail_rows(self) -> np.ndarray:
        """Live rows not in the graph yet, searched exactly; never changed in place."""
        return self._tail

    def pending(self) -> int:
        return len(self.tail_rows())

    def drains_tail(self) -> bool:
        return True

    def begin_tail(self, limit: int) -> np.ndarray:
        """From here on, a row of this batch that ends stays held (it becomes a dead waypoint), so that no row
        is reused while its old vector is being inserted."""
        self._inserting = self.tail_rows()[:limit].copy()
        return self._inserting

    def prepare_tail(self, rows, unit):
        return rows, unit

    def absorb_tail(self, prepared, exclusive) -> int:
        rows, unit = prepared
        _, nodes = self._insert(rows, unit, exclusive)
        with exclusive():
            still = self.pending_rows[rows]  # the others ended meanwhile: their nodes stay dead
            self.row_node[rows[still]] = nodes[still]
            self.node_live[nodes[still]] = True
            self.pending_rows[rows] = False
            self._changed()
        return len(rows)

    def end_tail(self) -> None:
        self._inserting = np.zeros(0, dtype=np.int64)

    # Reading.

    def search(self, queries, k, allowed, params=None) -> Result:
        tail = self.tail_rows()
        if allowed is not None:
            allowed = allowed[allowed < len(self.row_node)]
            tail = allowed[self.pending_rows[allowed]]
        found = self._search_graph(queries, k, allowed, (params or self.params).hnsw_ef_search)
        return merge(found, exact_from_file(self.vectors, tail, queries, k), k) if len(tail) else found

    def _search_graph(self, queries, k, allowed, ef_search: int) -> Result:
        if allowed is None:
            if self._live_bits is None:
                self._live_bits = bitmap(self.node_live)
            bits = self._live_bits
        else:
            allowed = allowed[allowed < len(self.row_node)]
            nodes = self.row_node[allowed]
            flags = np.zeros(len(self.node_live), dtype=bool)
            flags[nodes[nodes >= 0]] = True
            bits = bitmap(flags & self.node_live)
        if self.graph.ntotal == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search, k), sel=selector(bits))
        scores, nodes = self.graph.search(queries, k, params=params)
        # Only live nodes the arrays already name become rows: FAISS once returned a node of a first insertion
        # still in progress (the graph holds nodes before node_row names them) despite the selector.
        rows = np.full(nodes.shape, -1, dtype=np.int64)
        known = (nodes >= 0) & (nodes < len(self.node_row))
        known[known] = self.node_live[nodes[known]]
        rows[known] = self.node_row[nodes[known]]
        scores[rows < 0] = -np.inf
        return scores, rows

    def memory_bytes(self) -> int:
        n = self.graph.ntotal
        return n * (4 * self.dimension + 4 * 2 * self.params.hnsw_m + 17) + self.row_node.nbytes

    # Persistence: the graph's arrays, not its vectors.

    def state(self):
        """The graph of the nodes the structure knows. The background inserter may be between two pieces of
        a batch (it holds no write mutex): its extra nodes are left out, links to them cut (-1 is FAISS's
        empty slot), and the entry point moved to a known node of the highest level if it was one of them."""
        hnsw = self.graph.hnsw
        known = len(self.node_row)
        levels = faiss.vector_to_array(hnsw.levels)[:known].copy()
        offsets = faiss.vector_to_array(hnsw.offsets)[:known + 1].copy()
        neighbors = faiss.vector_to_array(hnsw.neighbors)[:int(offsets[-1]) if known else 0].copy()
        neighbors[neighbors >= known] = -1
        entry_point, max_level = int(hnsw.entry_point), int(hnsw.max_level)
        if entry_point >= known:
            entry_point = int(np.argmax(levels)) if known else -1
            max_level = int(levels[entry_point]) - 1 if known else -1
        arrays = {"levels": levels, "offsets": offsets, "neighbors": neighbors, "node_row": self.node_row.copy(),
                  "node_live": self.node_live.copy(), "pending_rows": self.tail_rows().copy()}
        return arrays, {}, {"entry_point": entry_point, "max_level": max_level}

    @classmethod
    def restore(cls, dimension, params, vectors, arrays, blobs, info):
        graph = new_graph(dimension, params)
        node_row = arrays["node_row"].astype(np.int64)
        structure = cls(dimension, params, vectors, graph)
        storage = faiss.downcast_index(graph.storage)
        for start in range(0, len(node_row), 65536):
            storage.add(unit_rows(vectors.read(node_row[start:start + 65536])))
        graph.ntotal = len(node_row)
        hnsw = graph.hnsw
        faiss.copy_array_to_vector(arrays["levels"].astype(np.int32), hnsw.levels)
        faiss.copy_array_to_vector(arrays["offsets"].astype(np.uint64), hnsw.offsets)
        faiss.copy_array_to_vector(arrays["neighbors"].astype(np.int32), hnsw.neighbors)
        hnsw.entry_point = int(info["entry_point"])
        hnsw.max_level = int(info["max_level"])
        structure.node_row = node_row
        structure.node_live = arrays["node_live"].astype(bool)
        live_nodes = np.flatnonzero(structure.node_live)
        pending = arrays["pending_rows"].astype(np.int64) if "pending_rows" in arrays else np.zeros(0, np.int64)
        if len(live_nodes) or len(pending):
            structure._grow_rows(int(max(node_row[live_nodes].max(initial=-1), pending.max(initial=-1))))
            structure.row_node[node_row[live_nodes]] = live_nodes
            structure.pending_rows[pending] = True
        structure._changed()
        return structure
