"""Benchmarks the index service as a user runs it: a real imgsim-index process at its default settings
(only --index-kind given; the snapshot policy is printed), fed and queried through the Python SDK on the
same machine, on data from bench/data.py (Zipf-sized clusters plus noise; see there).

For each size and kind it prints, then repeats as `name: value` lines at the end:
  - ingest: vectors/s through Upsert, sustained over the whole load, with the default snapshot policy;
  - the longest write stall and search stall seen during ingest: a probe writes one item to the same
    collection and searches it every 0.2 s, and its slowest call is reported; also its slowest write of
    those during which a snapshot was being written (GetStats.snapshotting before or after it);
  - memory: the process's resident set (VmRSS) per vector, catalog and everything included, read once no
    snapshot is being written, and how much of it is file pages mapped into the process (RssFile; the
    vector file is read with pread, not mapped); also the peak (VmHWM), snapshots' copies included;
  - disk: bytes per vector of the vector file, the catalog and the snapshots, and their ratio to 4*d;
  - search: recall@10 against exact search (also split: queries from clusters / from the uniform noise,
    which no inverted list holds together) and single queries/s (medians of repeats), and batches of 64;
    for ivfpq and hnsw also at other nprobe / efSearch values, asked per call on the same index;
  - restart: seconds from start to SERVING after a clean stop (snapshot load).

    python bench/index.py --quick                           # 20k vectors of each kind: a smoke run
    python bench/index.py --sizes 1000000 --kinds flat,hnsw
    python bench/index.py --sizes 10000000 --kinds ivfpq --data-dir /big/disk
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The data generator and the SDK share the machine's cores with the service they measure: one BLAS thread
# keeps their cost small (generating a block of 16,384 vectors of 768 dimensions takes about 0.17 s of one
# core). The service is started with the environment as it was, so its own BLAS threads are untouched.
SERVER_ENV = dict(os.environ)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from client import SimilarityClient  # noqa: E402
from client.local_services import free_port  # noqa: E402
from data import ClusteredStream, exact_top_k  # noqa: E402
from imgsim.healthcheck import is_serving  # noqa: E402

FP = "bench"
K = 10
SUMMARY: list[tuple[str, str]] = []


def say(name: str, value, unit: str = "") -> None:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"  {name}: {text}{(' ' + unit) if unit else ''}", flush=True)
    SUMMARY.append((name, text + ((" " + unit) if unit else "")))


class Server:
    def __init__(self, data_dir: Path, kind: str, extra: list[str], timers: Path | None = None):
        self.data_dir, self.kind, self.extra, self.timers = data_dir, kind, extra, timers
        self.process = None
        self.port = free_port()

    def start(self) -> float:
        started = time.monotonic()
        program = [str(ROOT / "bench" / "server_timers.py")] if self.timers else ["-m", "index_service"]
        env = SERVER_ENV | ({"IMGSIM_TIMERS_FILE": str(self.timers)} if self.timers else {})
        self.process = subprocess.Popen(
            [sys.executable, *program, "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--index-kind", self.kind, "--log-level", "WARNING", *self.extra], cwd=ROOT, env=env)
        while not is_serving(f"127.0.0.1:{self.port}", timeout=1.0):
            if self.process.poll() is not None:
                raise RuntimeError(f"the index exited with {self.process.returncode}")
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(600)

    def memory(self) -> dict[str, int]:
        """VmRSS, RssAnon, RssFile and VmHWM (the peak resident set) of the process, in bytes."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
        return fields

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class Probe(threading.Thread):
    """Writes one item and runs one search every `every_s` (the first at once, so a load shorter than
    `every_s` still has one), keeping the slowest of each."""

    def __init__(self, address: str, dim: int, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.address, self.dim, self.every_s = address, dim, every_s
        self.stop = threading.Event()
        self.write_s, self.search_s, self.writes, self.pending = [], [], 0, [0]
        self.write_during_snapshot_s = []

    def run(self) -> None:
        rng = np.random.default_rng(7)
        with SimilarityClient(index=self.address, timeout=600) as client:
            while True:
                vector = rng.standard_normal(self.dim).astype(np.float32)
                snapshotting = client.stats().snapshotting
                started = time.perf_counter()
                client.upsert([f"probe-{self.writes}"], vector[None], fingerprint=FP)
                self.write_s.append(time.perf_counter() - started)
                if snapshotting or client.stats().snapshotting:
                    self.write_during_snapshot_s.append(self.write_s[-1])
                self.writes += 1
                started = time.perf_counter()
                client.search_vectors(vector, k=K, fingerprint=FP)
                self.search_s.append(time.perf_counter() - started)
                self.pending.append(client.stats().pending)
                if self.stop.wait(self.every_s):
                    return


def ingest(client: SimilarityClient, stream: ClusteredStream, chunk: int) -> float:
    """Upserts the whole stream (generation runs a chunk ahead in a thread); returns vectors/s."""
    import queue
    ready: queue.Queue = queue.Queue(maxsize=2)

    def produce():
        for start, vectors in stream.chunks(chunk):
            ready.put((start, vectors))
        ready.put(None)

    threading.Thread(target=produce, daemon=True).start()
    started = time.perf_counter()
    done = 0
    while (item := ready.get()) is not None:
        start, vectors = item
        client.upsert([str(start + i) for i in range(len(vectors))], vectors, fingerprint=FP)
        done += len(vectors)
        if done % (20 * chunk) < chunk:
            print(f"    {done} vectors, {done / (time.perf_counter() - started):.0f}/s", flush=True)
    return stream.n / (time.perf_counter() - started)


def wait_for_background(client: SimilarityClient, kind: str, timeout_s: float) -> float:
    """Until the structure holds every row (ivfpq trained and every row encoded, hnsw every row inserted):
    none left in the exact tail."""
    started = time.monotonic()
    while kind in ("ivfpq", "hnsw") and (not (stats := client.stats()).trained and kind == "ivfpq" or stats.pending):
        if time.monotonic() - started > timeout_s:
            print(f"    ({kind}: {stats.pending} rows still searched exactly after {timeout_s:.0f} s; the searches "
                  "below include them)")
            break
        time.sleep(1.0)
    return time.monotonic() - started


def wait_for_snapshots(client: SimilarityClient, timeout_s: float = 600.0):
    """The stats once no snapshot is being written (its copy of the lists would count in the RSS)."""
    deadline = time.monotonic() + timeout_s
    while (stats := client.stats()).snapshotting and time.monotonic() < deadline:
        time.sleep(0.5)
    return stats


def single_queries(client: SimilarityClient, queries: np.ndarray, repeats: int,
                   params: dict | None = None) -> tuple[float, list]:
    rates, found = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        found = [client.search_vectors(q, k=K, fingerprint=FP, params=params)[0] for q in queries]
        rates.append(len(queries) / (time.perf_counter() - started))
    print(f"    single queries/s of each pass{f' at {params}' if params else ''}: "
          + " / ".join(f"{rate:.4g}" for rate in rates), flush=True)  # a cold page cache shows in the first
    return statistics.median(rates), found


def sweep_of(kind: str, args) -> list[tuple[str, int]]:
    name, values = {"ivfpq": ("ivf_nprobe", args.sweep_nprobe), "hnsw": ("hnsw_ef_search", args.sweep_ef)}.get(
        kind, (None, ""))
    return [(name, int(value)) for value in values.split(",") if value]


def recall(found, truth: np.ndarray, which: np.ndarray | None = None) -> float:
    """Mean recall@10 over the queries (or over those `which` marks)."""
    per_query = np.array([len({int(h.id) for h in hits if h.id.isdigit()} & set(t.tolist())) / K
                          for hits, t in zip(found, truth)])
    if which is None:
        return float(per_query.mean())
    return float(per_query[which].mean()) if which.any() else float("nan")


def recall_by_query_kind(found, truth: np.ndarray, noise: np.ndarray) -> str:
    return f"{recall(found, truth, ~noise):.3f} / {recall(found, truth, noise):.3f}"


def peers(size: int, kind: str, args, service_recall: float) -> dict[str, float]:
    """bench/baselines.py on the same data, in its own process with the machine's default threads."""
    command = [sys.executable, str(ROOT / "bench" / "baselines.py"), "--size", str(size), "--dim", str(args.dim),
               "--seed", str(size), "--queries", str(args.queries), "--repeats", str(args.repeats),
               "--peers", kind, "--target-recall", f"{min(service_recall, 0.999):.4f}"]
    done = subprocess.run(command, env=SERVER_ENV, capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"bench/baselines.py failed: {done.stderr[-2000:]}")
    return {name: float(value) for name, value in (line.split(": ", 1) for line in done.stdout.splitlines())}


def compare(size: int, kind: str, args, service: dict[str, float]) -> None:
    """The in-process peers beside the service's own figures."""
    found = peers(size, kind, args, service["recall"])
    if kind == "flat":
        for peer in ("numpy", "faiss"):
            say(f"flat {size} {peer} in-process single / batches of 64",
                f"{found[f'{peer} single queries/s']:.4g} / {found[f'{peer} batches of 64 queries/s']:.4g}",
                "queries/s")
            say(f"flat {size} service vs {peer} in-process, single", service["single"] / found[f"{peer} single queries/s"])
            say(f"flat {size} service vs {peer} in-process, batches of 64",
                service["batch"] / found[f"{peer} batches of 64 queries/s"])
        bandwidth, scanned = found["memory bandwidth bytes/s"], 4.0 * size * args.dim
        say(f"flat {size} memory bandwidth (array copy, all cores)", bandwidth / 1e9, "GB/s")
        say(f"flat {size} service scan efficiency, single / batches of 64 (bytes scanned/s / bandwidth)",
            f"{service['single'] * scanned / bandwidth:.3f} / {service['batch'] / 64 * scanned / bandwidth:.3f}")
        say(f"flat {size} numpy scan efficiency, single", found["numpy single queries/s"] * scanned / bandwidth)
        say(f"flat {size} the write-up's search (one query at a time)", found["writeup single queries/s"], "queries/s")
        say(f"flat {size} service vs the write-up's search, single", service["single"] / found["writeup single queries/s"])
        say(f"flat {size} service vs the write-up's search, batches of 64",
            service["batch"] / found["writeup single queries/s"])
    elif kind == "hnsw":
        say(f"hnsw {size} hnswlib build (in-process, all cores)", found["hnswlib build vectors/s"], "vectors/s")
        say(f"hnsw {size} hnswlib ef reaching the service's recall", int(found["hnswlib ef"]))
        say(f"hnsw {size} hnswlib recall@10", found["hnswlib recall@10"])
        say(f"hnsw {size} hnswlib single queries/s (in-process, no RPC)", found["hnswlib single queries/s"])
        say(f"hnsw {size} service vs hnswlib at equal recall, single", service["single"] / found["hnswlib single queries/s"])


def run(size: int, kind: str, args, truth_cache: dict) -> None:
    print(f"\n== {kind}, {size} x {args.dim}", flush=True)
    stream = ClusteredStream(size, args.dim, seed=size)
    queries = stream.queries(args.queries)
    if size not in truth_cache:
        started = time.monotonic()
        truth_cache[size] = exact_top_k(stream, queries, K)
        print(f"    exact answers for {args.queries} queries in {time.monotonic() - started:.0f} s", flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=args.data_dir))
    timers = data_dir.with_name(data_dir.name + "-timers.jsonl") if args.timers else None
    server = Server(data_dir, kind, args.server_flag, timers)
    try:
        server.start()
        print("    snapshot policy: the default (--snapshot-every 100000 or a quarter of the collection)")
        say(f"{kind} {size} server flags besides the defaults", " ".join(args.server_flag) or "none")
        with SimilarityClient(index=server.address, timeout=600) as client:
            probe = Probe(server.address, args.dim)
            probe.start()
            rate = ingest(client, stream, args.chunk)
            probe.stop.set()
            probe.join()
            say(f"{kind} {size} ingest", rate, "vectors/s")
            say(f"{kind} {size} longest write stall during ingest", max(probe.write_s), "s")
            say(f"{kind} {size} longest search stall during ingest", max(probe.search_s), "s")
            during = probe.write_during_snapshot_s
            say(f"{kind} {size} longest write stall during a snapshot ({len(during)} probe writes met one)",
                max(during) if during else "none met one", "s" if during else "")
            if timers:
                from server_timers import report
                for name, value in report(timers):
                    say(f"{kind} {size} {name}", value)
            client.delete([f"probe-{i}" for i in range(probe.writes)])
            waited = wait_for_background(client, kind, args.train_timeout)
            if kind in ("ivfpq", "hnsw"):
                say(f"{kind} {size} largest exact tail during ingest (rows not yet in the structure)",
                    max(probe.pending))
                say(f"{kind} {size} background work finished after ingest", waited, "s")
            stats = wait_for_snapshots(client)
            memory = server.memory()
            say(f"{kind} {size} RSS per vector (whole process, no snapshot being written)",
                memory["VmRSS"] / size, "bytes")
            say(f"{kind} {size} RSS", memory["VmRSS"] / 2**30, "GiB")
            say(f"{kind} {size} RSS of it that is mapped vector-file pages", memory["RssFile"] / 2**30, "GiB")
            say(f"{kind} {size} peak RSS (VmHWM, snapshots' copies included)", memory["VmHWM"] / 2**30, "GiB")
            disk = stats.disk_bytes
            say(f"{kind} {size} disk per vector", disk / size, "bytes")
            say(f"{kind} {size} disk per vector / 4d", disk / size / (4 * args.dim))
            say(f"{kind} {size} disk per vector: vector file / catalog / snapshots",
                " / ".join(f"{part / size:.0f}" for part in (stats.vector_bytes, stats.catalog_bytes,
                                                             stats.snapshot_bytes)), "bytes")
            rate, found = single_queries(client, queries, args.repeats)
            service = {"recall": recall(found, truth_cache[size]), "single": rate}
            say(f"{kind} {size} recall@10", service["recall"])
            noise = stream.from_noise(queries)
            say(f"{kind} {size} recall@10 of cluster queries / of the {int(noise.sum())} noise queries",
                recall_by_query_kind(found, truth_cache[size], noise))
            say(f"{kind} {size} single queries", rate, "queries/s")
            batches, in_batches = [], np.resize(queries, (192, args.dim))  # three batches of 64
            for _ in range(args.repeats):
                started = time.perf_counter()
                for start in range(0, 192, 64):
                    client.search_vectors(in_batches[start:start + 64], k=K, fingerprint=FP)
                batches.append(192 / (time.perf_counter() - started))
            service["batch"] = statistics.median(batches)
            say(f"{kind} {size} batches of 64", service["batch"], "queries/s")
            for name, value in sweep_of(kind, args):  # the same index, each call asking for its own effort
                rate, found = single_queries(client, queries, args.repeats, {name: value})
                say(f"{kind} {size} at {name} {value}, recall@10 / single queries/s",
                    f"{recall(found, truth_cache[size]):.3f} / {rate:.4g}")
                say(f"{kind} {size} at {name} {value}, recall@10 of cluster / noise queries",
                    recall_by_query_kind(found, truth_cache[size], noise))
        if kind in args.peers.split(",") and size <= args.peer_max_size:
            compare(size, kind, args, service)
        server.stop()
        say(f"{kind} {size} restart until SERVING", server.start(), "s")
        with SimilarityClient(index=server.address, timeout=600) as client:
            assert client.stats().count == size, "the restart lost items"
        server.stop()
    finally:
        if server.process and server.process.poll() is None:
            server.process.kill()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
            if timers:
                timers.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=65536, help="vectors per SDK upsert (sent as calls of 2048, 4 in flight)")
    parser.add_argument("--train-timeout", type=float, default=3600)
    parser.add_argument("--data-dir", default=None, help="where the index's data goes (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    parser.add_argument("--sweep-nprobe", default="16,32,128,256",
                        help="ivfpq: also measured at these nprobe (per-call SearchRequest.params), '' for none")
    parser.add_argument("--sweep-ef", default="64,256,512",
                        help="hnsw: also measured at these efSearch (per-call SearchRequest.params), '' for none")
    parser.add_argument("--server-flag", action="append", default=[], help="an extra imgsim-index flag")
    parser.add_argument("--peers", default="flat,hnsw",
                        help="kinds measured beside in-process peers (bench/baselines.py): flat (numpy, FAISS, the "
                             "write-up's search), hnsw (hnswlib at equal recall)")
    parser.add_argument("--peer-max-size", type=int, default=2_000_000,
                        help="no peers above this size (they hold the data in memory, several copies)")
    parser.add_argument("--timers", action="store_true", help="run the index under bench/server_timers.py and print "
                        "where its slowest one-item writes' time went and its longest lock holds")
    parser.add_argument("--quick", action="store_true",
                        help="20k vectors of 128 dimensions, 20 queries, one sweep value: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.dim, args.queries, args.repeats = "20000", 128, 20, 1
        args.sweep_nprobe, args.sweep_ef = "32", "512"
        args.server_flag = args.server_flag + ["--ivf-nlist", "64"]
    print(f"machine: {os.cpu_count()} cores; index and this client share them")
    truth: dict = {}
    for size in (int(s) for s in args.sizes.split(",")):
        for kind in args.kinds.split(","):
            run(size, kind, args, truth)
    print("\nsummary")
    for name, value in SUMMARY:
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
