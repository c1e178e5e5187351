"""Cost follows live items, not total writes: for each index kind, one real imgsim-index process holds a
fresh collection of N vectors, another the same N ids replaced R times (the last time with the fresh one's
vectors, so both end with identical content). After the churned one's background compaction settles, both
are measured the same way, side by side:

  - memory: VmRSS of each process (and RssAnon, the part that is not mapped file pages);
  - disk: bytes of the vector file, the catalog with its log, and the snapshots;
  - search: single queries/s of the kind's own search (exact=False), the two processes measured in
    alternation, medians of repeats;

and prints churned / fresh for each. Data: bench/data.py (Zipf-sized clusters plus noise); each round adds
small Gaussian noise to every vector, so every round really replaces every item. ivfpq runs with
--ivf-nlist 64 so that it trains at this size (with the default 1024 lists it stays exact below 39,936
vectors, which would measure the flat path twice).

    python bench/compaction.py                      # 10k x 768, 20 rounds, every kind
    python bench/compaction.py --quick              # 2k x 64, 3 rounds: a smoke run
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from index import FP, SUMMARY, Server, say  # noqa: E402  (bench/index.py: the process wrapper, the summary)

import numpy as np  # noqa: E402  (after bench/index.py has set the client's BLAS threads)
from client import SimilarityClient  # noqa: E402
from data import ClusteredStream  # noqa: E402

KIND_FLAGS = {"ivfpq": ["--ivf-nlist", "64"]}


def settle(client: SimilarityClient, timeout_s: float = 600.0):
    """Waits until background compaction has nothing left to reclaim and the disk bytes stop changing."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        stats = client.stats()
        if stats.dead == 0 and previous is not None and stats.disk_bytes == previous.disk_bytes:
            return stats
        if time.monotonic() > deadline:
            raise RuntimeError(f"compaction did not settle in {timeout_s:.0f} s: {stats}")
        previous = stats
        time.sleep(1.0)


def single_query_rate(client: SimilarityClient, queries: np.ndarray) -> float:
    started = time.perf_counter()
    for query in queries:
        client.search_vectors(query, k=10, fingerprint=FP)
    return len(queries) / (time.perf_counter() - started)


def run(kind: str, args) -> None:
    print(f"\n== {kind}: {args.items} x {args.dim}, replaced {args.rounds} times", flush=True)
    stream = ClusteredStream(args.items, args.dim, seed=11)
    data = next(stream.chunks(args.items + 16384))[1][:args.items]
    ids = [f"v{i}" for i in range(args.items)]
    queries = stream.queries(args.queries)
    folders = [Path(tempfile.mkdtemp(prefix=f"bench-compaction-{name}-")) for name in ("fresh", "churned")]
    servers = [Server(folder, kind, KIND_FLAGS.get(kind, [])) for folder in folders]
    try:
        for server in servers:
            server.start()
        with SimilarityClient(index=servers[0].address, timeout=600) as fresh, \
                SimilarityClient(index=servers[1].address, timeout=600) as churned:
            fresh.upsert(ids, data, fingerprint=FP)
            rng = np.random.default_rng(1)
            started = time.perf_counter()
            for _ in range(args.rounds - 1):
                churned.upsert(ids, data + 0.01 * rng.standard_normal(data.shape, dtype=np.float32), fingerprint=FP)
            churned.upsert(ids, data, fingerprint=FP)
            print(f"    {args.rounds} rounds of {args.items} replacements in {time.perf_counter() - started:.1f} s")
            fresh.compact()  # snapshotted and checkpointed, as compaction leaves the churned one
            after, baseline = settle(churned), settle(fresh)
            assert after.count == baseline.count == args.items
            rates = {"fresh": [], "churned": []}
            for _ in range(args.repeats):
                rates["fresh"].append(single_query_rate(fresh, queries))
                rates["churned"].append(single_query_rate(churned, queries))
        memory = [server.memory() for server in servers]
        say(f"{kind} RSS churned / fresh", memory[1]["VmRSS"] / memory[0]["VmRSS"])
        say(f"{kind} RSS fresh, churned", f"{memory[0]['VmRSS'] / 2**20:.0f}, {memory[1]['VmRSS'] / 2**20:.0f}", "MiB")
        say(f"{kind} RssAnon churned / fresh", memory[1]["RssAnon"] / memory[0]["RssAnon"])
        say(f"{kind} disk churned / fresh", after.disk_bytes / baseline.disk_bytes)
        say(f"{kind} disk fresh, churned", f"{baseline.disk_bytes / 2**20:.1f}, {after.disk_bytes / 2**20:.1f}", "MiB")
        say(f"{kind} vector file churned / fresh", after.vector_bytes / baseline.vector_bytes)
        fresh_rate, churned_rate = statistics.median(rates["fresh"]), statistics.median(rates["churned"])
        say(f"{kind} search time churned / fresh", fresh_rate / churned_rate)
        say(f"{kind} single queries/s fresh, churned", f"{fresh_rate:.0f}, {churned_rate:.0f}")
        for server in servers:
            server.stop()
    finally:
        for server in servers:
            if server.process and server.process.poll() is None:
                server.process.kill()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq,lsh")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2k x 64, 3 rounds: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.items, args.dim, args.rounds, args.queries, args.repeats = 2000, 64, 3, 20, 1
    print(f"machine: {os.cpu_count()} cores; both index processes and this client share them")
    for kind in args.kinds.split(","):
        run(kind, args)
    print("\nsummary")
    for name, value in SUMMARY:
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
