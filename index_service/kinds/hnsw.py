"""hnsw: a navigable small-world graph over unit vectors (FAISS IndexHNSWFlat), searched through a bitmap of
live nodes. Nodes of ended items stay in the graph as waypoints (their rows stay held, so their vectors stay
in the vector file) until compaction rebuilds the graph from the live ones. Snapshots hold the graph, not
the vectors: those are read back from the vector file."""

import faiss
import numpy as np

from index_service.kinds.base import Result, Structure, bitmap
from index_service.exact import unit_rows

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

    def __init__(self, dimension, params, vectors, graph=None):
        super().__init__(dimension, params, vectors)
        self.graph = graph if graph is not None else new_graph(dimension, params)
        self.node_row = np.zeros(0, dtype=np.int64)  # the row each node was made from, kept after it ends
        self.node_live = np.zeros(0, dtype=bool)
        self.row_node = np.zeros(0, dtype=np.int64)
        self._live_bits = None

    def _grow_rows(self, max_row: int) -> None:
        if max_row >= len(self.row_node):
            grown = np.full(max(max_row + 1, int(len(self.row_node) * 1.25) + 1024), -1, dtype=np.int64)
            grown[:len(self.row_node)] = self.row_node
            self.row_node = grown

    # Writing.

    def stage(self, rows, unit, exclusive):
        first = self.graph.ntotal
        for start in range(0, len(rows), STAGE_CHUNK):
            with exclusive():
                self.graph.add(np.ascontiguousarray(unit[start:start + STAGE_CHUNK]))
        nodes = np.arange(first, self.graph.ntotal, dtype=np.int64)
        if len(rows):
            self._grow_rows(int(rows.max()))
        self.node_row = np.concatenate([self.node_row, rows])
        self.node_live = np.concatenate([self.node_live, np.zeros(len(rows), dtype=bool)])
        return rows, nodes

    def publish(self, staged, ended):
        rows, nodes = staged
        self._end(ended)
        if len(rows):
            self.row_node[rows] = nodes
            self.node_live[nodes] = True
        self._live_bits = None

    def _end(self, rows: np.ndarray) -> None:
        rows = rows[rows < len(self.row_node)]
        nodes = self.row_node[rows]
        nodes = nodes[nodes >= 0]
        self.node_live[nodes] = False
        self.row_node[rows] = -1

    def relocate(self, old_rows, new_rows, staged=None):
        self._grow_rows(int(new_rows.max()))
        nodes = self.row_node[old_rows]
        self.row_node[old_rows] = -1
        self.row_node[new_rows] = nodes
        self.node_row[nodes] = new_rows

    def freed_at_once(self, ended):
        return ended[:0]

    def held_rows(self) -> np.ndarray:
        dead = ~self.node_live
        return np.unique(self.node_row[dead])

    def needs_purge(self, live: int) -> bool:
        dead = len(self.node_live) - live
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

    # Reading.

    def search(self, queries, k, allowed) -> Result:
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
        params = faiss.SearchParametersHNSW(efSearch=max(self.params.hnsw_ef_search, k),
                                            sel=faiss.IDSelectorBitmap(len(self.node_live), faiss.swig_ptr(bits)))
        scores, nodes = self.graph.search(queries, k, params=params)
        rows = np.where(nodes >= 0, self.node_row[np.maximum(nodes, 0)], -1)
        scores[rows < 0] = -np.inf
        return scores, rows

    def unit_vectors(self, rows):
        return storage_matrix(self.graph)[self.row_node[rows]].copy()

    def memory_bytes(self) -> int:
        n = self.graph.ntotal
        return n * (4 * self.dimension + 4 * 2 * self.params.hnsw_m + 17) + self.row_node.nbytes

    # Persistence: the graph's arrays, not its vectors.

    def state(self):
        hnsw = self.graph.hnsw
        arrays = {
            "levels": faiss.vector_to_array(hnsw.levels),
            "offsets": faiss.vector_to_array(hnsw.offsets),
            "neighbors": faiss.vector_to_array(hnsw.neighbors),
            "node_row": self.node_row.copy(),
            "node_live": self.node_live.copy(),
        }
        return arrays, {}, {"entry_point": int(hnsw.entry_point), "max_level": int(hnsw.max_level)}

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
        if len(live_nodes):
            structure._grow_rows(int(node_row[live_nodes].max()))
            structure.row_node[node_row[live_nodes]] = live_nodes
        return structure
