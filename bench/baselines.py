"""In-process peers of the index service, on the same data and queries as bench/index.py (bench/data.py,
same size and seed), in a process of their own with the machine's default threads (bench/index.py keeps
its own client to one BLAS thread). Prints `name: value` lines that bench/index.py reads:

  --peers flat: exact search three ways, single queries and batches of 64 (medians of repeats):
      numpy       a competent baseline: unit vectors in one matrix, matmul, argpartition;
      faiss       IndexFlatIP over the same unit vectors;
      writeup     the write-up's fetch_similar: torch cosine_similarity against every candidate, a dict of
                  id -> score, sorted (one query at a time, as the write-up does; timed on a few queries).
  --peers hnsw: hnswlib (M and ef_construction as the service's defaults), its build time, and single
      queries/s at the smallest ef whose recall@10 reaches --target-recall (the service's).

    python bench/baselines.py --size 100000 --dim 768 --seed 100000 --peers flat,hnsw --target-recall 0.95
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import ClusteredStream  # noqa: E402

K = 10


def rate(search, queries: np.ndarray, repeats: int, batch: int = 1) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(queries), batch):
            search(queries[start:start + batch])
        rates.append(len(queries) / (time.perf_counter() - started))
    return statistics.median(rates)


def numpy_search(unit: np.ndarray, queries: np.ndarray) -> np.ndarray:
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def writeup_search(candidates, candidate_ids: list[str], query: np.ndarray) -> list[str]:
    """The write-up's compute_scores + fetch_similar, as written there."""
    import torch
    scores = torch.nn.functional.cosine_similarity(candidates, torch.from_numpy(query)[None]).numpy().tolist()
    similarity_mapping = dict(zip(candidate_ids, scores))
    ranked = dict(sorted(similarity_mapping.items(), key=lambda x: x[1], reverse=True))
    return list(ranked.keys())[:K]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


def say(name: str, value: float) -> None:
    print(f"{name}: {value:.4g}", flush=True)


def memory_bandwidth(gib: float = 1.0) -> float:
    """Bytes/s a copy of a large array moves (read + write), split over every core: the ceiling of a scan."""
    from concurrent.futures import ThreadPoolExecutor
    source = np.ones(int(gib * 2**30) // 8)
    target = np.empty_like(source)
    parts = np.array_split(np.arange(len(source)), os.cpu_count())
    bounds = [(part[0], part[-1] + 1) for part in parts if len(part)]

    def copy():
        with ThreadPoolExecutor(len(bounds)) as pool:
            list(pool.map(lambda b: np.copyto(target[b[0]:b[1]], source[b[0]:b[1]]), bounds))
    copy()
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        copy()
        seconds.append(time.perf_counter() - started)
    return 2 * source.nbytes / statistics.median(seconds)


def flat_peers(raw: np.ndarray, unit: np.ndarray, queries: np.ndarray, args) -> None:
    import faiss
    say("numpy single queries/s", rate(lambda q: numpy_search(unit, q), queries, args.repeats))
    say("numpy batches of 64 queries/s", rate(lambda q: numpy_search(unit, q), queries, args.repeats, 64))
    flat = faiss.IndexFlatIP(unit.shape[1])
    flat.add(unit)
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    say("faiss single queries/s", rate(lambda q: flat.search(q, K), unit_q, args.repeats))
    say("faiss batches of 64 queries/s", rate(lambda q: flat.search(q, K), unit_q, args.repeats, 64))
    flat.reset()  # frees its copy of the vectors before the write-up's search makes its own
    import torch
    candidates = torch.from_numpy(raw)
    ids = [str(i) for i in range(len(raw))]
    few = queries[:args.writeup_queries]
    say("writeup single queries/s", rate(lambda q: writeup_search(candidates, ids, q[0]), few, 1))


def hnsw_peer(unit: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> None:
    import hnswlib
    graph = hnswlib.Index(space="ip", dim=unit.shape[1])
    graph.init_index(max_elements=len(unit), M=args.hnsw_m, ef_construction=args.hnsw_ef_construction)
    started = time.perf_counter()
    graph.add_items(unit, np.arange(len(unit)))
    say("hnswlib build vectors/s", len(unit) / (time.perf_counter() - started))
    graph.set_num_threads(1)  # one query per call, as the service's single queries
    unit_q = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        graph.set_ef(max(ef, K))
        found = np.vstack([graph.knn_query(q, k=K)[0] for q in unit_q])
        reached = recall(found, truth)
        if reached >= args.target_recall or ef == 1024:
            say("hnswlib ef", ef)
            say("hnswlib recall@10", reached)
            say("hnswlib single queries/s", rate(lambda q: graph.knn_query(q, k=K), unit_q, args.repeats))
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--writeup-queries", type=int, default=5)
    parser.add_argument("--peers", default="flat")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=80)
    args = parser.parse_args()
    stream = ClusteredStream(args.size, args.dim, seed=args.seed)
    raw = np.concatenate([chunk for _, chunk in stream.chunks(4 * 16384)])
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    queries = stream.queries(args.queries)
    peers = args.peers.split(",")
    if "flat" in peers:
        say("memory bandwidth bytes/s", memory_bandwidth())
        flat_peers(raw, unit, queries, args)
    del raw
    if "hnsw" in peers:
        hnsw_peer(unit, queries, numpy_search(unit, queries), args)


if __name__ == "__main__":
    main()
