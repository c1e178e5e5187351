"""Why ivfpq's defaults are what they are: recall@10 against exact search for a grid of code sizes (pq_m),
lists visited (nprobe) and candidates re-ranked, on bench/data.py's vectors, with the service's own training
and encoding code (index_service.kinds.ivfpq) in this process. No RPC, no service: the figures isolate what
the parameters do; bench/index.py measures the service at its defaults.

    python bench/ivfpq_sweep.py                       # 1M x 768, about 5 minutes on 2 cores
    python bench/ivfpq_sweep.py --size 5000000 --pq-m 384 --nprobe 16,32,64 --candidates 1000   # 16 GB of RAM
    python bench/ivfpq_sweep.py --size 20000 --dim 64 --pq-m 16,32 --nprobe 8 --candidates 100   # a smoke run
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from data import ClusteredStream  # noqa: E402
from index_service.config import KindParams  # noqa: E402
from index_service.kinds.ivfpq import IvfPqStructure, append_encoded, encode, training_size  # noqa: E402

K = 10


def exact_ten(scores: np.ndarray) -> np.ndarray:
    best = np.argpartition(-scores, K)[:K]
    return best[np.argsort(-scores[best])]


def integers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nlist", type=int, default=KindParams().ivf_nlist)
    parser.add_argument("--pq-m", type=integers, default=[128, 256, 384])
    parser.add_argument("--nprobe", type=integers, default=[16, 32, 64, 256])
    parser.add_argument("--candidates", type=integers, default=[200, 1000])
    args = parser.parse_args()

    faiss.omp_set_num_threads(1)  # the service's default (--faiss-threads 1)
    stream = ClusteredStream(args.size, args.dim, seed=args.size)  # the data and queries bench/index.py uses
    data = np.empty((args.size, args.dim), dtype=np.float32)  # filled in place: 5M x 768 is 15 GB once
    for first, vectors in stream.chunks(65536):
        data[first:first + len(vectors)] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = stream.queries(args.queries)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.stack([exact_ten(data @ query) for query in queries])
    noise_query = stream.from_noise(queries)
    print(f"queries from the noise fraction: {int(noise_query.sum())} of {len(queries)}", flush=True)
    rows = np.arange(len(data), dtype=np.int64)
    for pq_m in args.pq_m:
        params = KindParams(ivf_nlist=args.nlist, pq_m=pq_m)
        structure = IvfPqStructure(args.dim, params, None)
        started = time.monotonic()
        # Trained as the service trains: on the first vectors written, once there are enough of them.
        trained = structure.train(data[:training_size(params)])
        trained_s = time.monotonic() - started
        lists = trained.lists
        started = time.monotonic()
        for start in range(0, len(data), 65536):
            part = rows[start:start + 65536]
            append_encoded(lists, encode(lists, trained.tree, data[part], part))
        encoded_s = time.monotonic() - started
        print(f"pq_m {pq_m} code bytes: {lists.code_size}", flush=True)
        print(f"pq_m {pq_m} trained in: {trained_s:.1f} s", flush=True)
        print(f"pq_m {pq_m} encoded: {len(data) / encoded_s:.0f} vectors/s", flush=True)
        for nprobe in args.nprobe:
            for candidates in args.candidates:
                search = faiss.SearchParametersIVF(nprobe=nprobe)
                timings = []
                for _ in range(3):  # single queries, as an application sends them; the median of 3 passes
                    started = time.perf_counter()
                    for query in queries:
                        lists.search(query[None], candidates, params=search)
                    timings.append((time.perf_counter() - started) / len(queries))
                _, found = lists.search(queries, candidates, params=search)
                hits = []
                for query, pool, expected in zip(queries, found, truth):
                    pool = pool[pool >= 0]
                    best = pool[np.argsort(-(data[pool] @ query))[:K]]
                    hits.append(len(set(best.tolist()) & set(expected.tolist())) / K)
                hits = np.array(hits)
                print(f"pq_m {pq_m} nprobe {nprobe} candidates {candidates} recall@10: {hits.mean():.3f} "
                      f"(cluster queries {hits[~noise_query].mean():.3f}, "
                      f"noise queries {hits[noise_query].mean() if noise_query.any() else float('nan'):.3f})",
                      flush=True)
                print(f"pq_m {pq_m} nprobe {nprobe} candidates {candidates} ms per single query (codes only, "
                      f"one thread): {1000 * statistics.median(timings):.2f}", flush=True)


if __name__ == "__main__":
    main()
