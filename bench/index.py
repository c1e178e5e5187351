"""Benchmarks the index: in-process FAISS vs the service, the write-up's method, every index kind, restarts.

For d=768 clustered vectors (centres plus noise) at each size it prints, medians of repeats:
  - in-process FAISS flat queries/s vs the service's, single queries and batches of 64;
  - the write-up's method (cosine similarity -> dict -> sorted -> first k) vs the service;
  - recall@10 against exact search, queries/s and RAM bytes per vector for each index kind;
  - time to ingest through Upsert, and to restart (snapshot load) until the service reports SERVING.
It ends with a summary, one `name: value` line per figure and ratio.

    python bench/index.py --quick                 # 10k and 100k
    python bench/index.py                         # 10k, 100k and 1M (about 20 GB of RAM, long)
    python bench/index.py --sizes 100000 --kinds flat,hnsw
"""

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import SimilarityClient  # noqa: E402
from client.local_services import free_port  # noqa: E402
from imgsim.healthcheck import is_serving  # noqa: E402
from index_service.collection import Collection, NewItem  # noqa: E402
from index_service.index import KindParams  # noqa: E402

try:  # the write-up's baseline uses torch; the index itself never does
    import torch
except ImportError:
    torch = None

FP = "bench"
K = 10
UPSERT_CHUNK = 65536


def clustered(n: int, d: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start:start + m] = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.standard_normal((m, d), dtype=np.float32)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rate(action, calls: int, repeats: int) -> float:
    """Calls per second: the median over repeats of `calls` calls."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(calls):
            action(i)
        timings.append(time.perf_counter() - started)
    return calls / statistics.median(timings)


def side_by_side(first, second, calls: int, repeats: int) -> tuple[float, float]:
    """Calls per second of two actions measured in alternation, so drift on a noisy machine hits both alike."""
    first_times, second_times = [], []
    for _ in range(repeats):
        for action, times in ((first, first_times), (second, second_times)):
            faiss.cvar.distance_compute_blas_threshold = 2**31 - 1  # single queries: FAISS's own loop
            started = time.perf_counter()
            for i in range(calls):
                action(i)
            times.append(time.perf_counter() - started)
    return calls / statistics.median(first_times), calls / statistics.median(second_times)


def write_up_top_k(candidates, ids: list[str], query, k: int) -> list[str]:
    """The write-up's own search, as its notebook does it: torch cosine_similarity of the query against every
    candidate, a dict id -> score, sorted into a dict again, the first k keys. Without torch, numpy."""
    if torch is not None:
        scores = torch.nn.functional.cosine_similarity(candidates, query[None]).numpy().tolist()
    else:
        scores = ((candidates @ query) / (np.linalg.norm(candidates, axis=1) * np.linalg.norm(query))).tolist()
    mapping = dict(zip(ids, scores))
    mapping_sorted = dict(sorted(mapping.items(), key=lambda pair: pair[1], reverse=True))
    return list(mapping_sorted.keys())[:k]


def start_service(data_dir: Path, kind: str = "flat") -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "index_service", "--port", str(port), "--data-dir", str(data_dir),
                                "--index-kind", kind, "--log-level", "WARNING", "--snapshot-every", "100000000"],
                               cwd=ROOT)
    address = f"127.0.0.1:{port}"
    while not is_serving(address, timeout=1.0):
        if process.poll() is not None:
            sys.exit("the index service did not start")
        time.sleep(0.05)
    return process, address, time.perf_counter() - started


def stop_service(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # drains and writes its closing snapshot
    process.wait()


def recall_at_k(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def bytes_per_vector(collection: Collection, n: int) -> float:
    structure = collection._structure
    if hasattr(structure, "codes"):  # lsh: its codes and live flags are all it keeps in RAM
        return (structure.codes.nbytes + structure.live.nbytes) / n
    return faiss.serialize_index(structure.index).nbytes / n


def bench_size(n: int, args, figures: dict) -> None:
    rng = np.random.default_rng(n)
    centres = rng.standard_normal((max(10, n // 1000), args.dim)).astype(np.float32)
    candidates = clustered(n, args.dim, centres, rng)
    queries = clustered(args.queries, args.dim, centres, rng)
    ids = [f"v{i}" for i in range(n)]
    tag = f"n{n // 1000}k" if n < 1_000_000 else f"n{n // 1_000_000}m"
    print(f"\n== {n} vectors of {args.dim} dimensions ==", flush=True)

    faiss.omp_set_num_threads(1)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(unit(candidates))
    q = unit(queries)
    exact_rows = flat.search(q, K)[1]
    exact_ids = [[ids[r] for r in row] for row in exact_rows]
    faiss.cvar.distance_compute_blas_threshold = 20
    batches = [q[(i * 64) % len(q):][:64] for i in range(4)]
    figures[f"{tag}_inprocess_faiss_batch64_qps"] = 64 * rate(lambda i: flat.search(batches[i % 4], K), 4,
                                                              args.repeats)
    writeup_calls = max(2, min(20, 2_000_000 // n))
    as_tensor = torch.from_numpy if torch is not None else np.asarray
    candidate_tensor, query_tensors = as_tensor(candidates), as_tensor(queries)
    figures[f"{tag}_writeup_method_qps"] = rate(lambda i: write_up_top_k(candidate_tensor, ids, query_tensors[i], K),
                                                writeup_calls, 1)

    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        process, address, _ = start_service(Path(tmp) / "flat")
        with SimilarityClient(index=address, timeout=600) as client:
            started = time.perf_counter()
            for s in range(0, n, UPSERT_CHUNK):
                client.upsert(ids[s:s + UPSERT_CHUNK], candidates[s:s + UPSERT_CHUNK], fingerprint=FP)
            figures[f"{tag}_service_ingest_vectors_per_s"] = n / (time.perf_counter() - started)
            served = client.search_vectors(queries, k=K, fingerprint=FP)
            figures[f"{tag}_service_flat_recall_at_10"] = recall_at_k([[h.id for h in hits] for hits in served],
                                                                      exact_ids)
            inprocess, served = side_by_side(
                lambda i: flat.search(q[i % len(q)][None], K),
                lambda i: client.search_vectors(queries[i % len(queries)], k=K, fingerprint=FP), args.calls,
                args.repeats)
            figures[f"{tag}_inprocess_faiss_single_qps"], figures[f"{tag}_service_single_qps"] = inprocess, served
            figures[f"{tag}_service_batch64_qps"] = 64 * rate(
                lambda i: client.search_vectors(batches[i % 4], k=K, fingerprint=FP), 4, args.repeats)
        stop_service(process)
        flat.reset()  # frees its vectors before the other kinds are built
        process, address, figures[f"{tag}_service_restart_s"] = start_service(Path(tmp) / "flat")
        stop_service(process)

        for kind in args.kinds:
            if kind == "flat":
                continue
            collection = Collection(Path(tmp) / kind, kind, KindParams(), snapshot_every=10**9)
            started = time.perf_counter()
            for s in range(0, n, 4096):
                collection.upsert(FP, [NewItem(ids[i], candidates[i], {}) for i in range(s, min(s + 4096, n))])
            figures[f"{tag}_{kind}_build_s"] = time.perf_counter() - started
            found = collection.search(FP, queries, K, [])
            figures[f"{tag}_{kind}_recall_at_10"] = recall_at_k([[h.id for h in hits] for hits in found], exact_ids)
            figures[f"{tag}_{kind}_single_qps"] = rate(
                lambda i, searched=collection: searched.search(FP, queries[i % len(queries)][None], K, []),
                args.calls, args.repeats)
            figures[f"{tag}_{kind}_ram_bytes_per_vector"] = bytes_per_vector(collection, n)
            collection.store.close()
            collection = None  # frees this kind's structures before the next is built

    figures[f"{tag}_service_vs_inprocess_single"] = (figures[f"{tag}_service_single_qps"]
                                                     / figures[f"{tag}_inprocess_faiss_single_qps"])
    figures[f"{tag}_service_single_vs_writeup"] = (figures[f"{tag}_service_single_qps"]
                                                   / figures[f"{tag}_writeup_method_qps"])
    figures[f"{tag}_service_batch64_vs_writeup"] = (figures[f"{tag}_service_batch64_qps"]
                                                    / figures[f"{tag}_writeup_method_qps"])
    flat_bytes = 4 * args.dim + 8
    figures[f"{tag}_flat_ram_bytes_per_vector"] = flat_bytes
    if f"{tag}_hnsw_single_qps" in figures:
        figures[f"{tag}_hnsw_vs_flat_qps"] = figures[f"{tag}_hnsw_single_qps"] / figures[f"{tag}_service_single_qps"]
    if f"{tag}_ivfpq_ram_bytes_per_vector" in figures:
        figures[f"{tag}_flat_vs_ivfpq_bytes"] = flat_bytes / figures[f"{tag}_ivfpq_ram_bytes_per_vector"]
    for name, value in figures.items():
        if name.startswith(tag):
            print(f"  {name}: {value:.4g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only 10k and 100k")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated candidate counts")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq,lsh", help="comma-separated index kinds")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200, help="distinct queries for recall")
    parser.add_argument("--calls", type=int, default=50, help="single-query calls per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [10_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    args.kinds = args.kinds.split(",")
    figures: dict[str, float] = {}
    for n in sizes:
        bench_size(n, args, figures)
    print("\nsummary")
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")


if __name__ == "__main__":
    main()
