"""Per-call overhead of a single-query Search, and where it goes.

Side by side in one run, ms per call from one synchronous client (as an application calls). The
measurements are interleaved: each round times every contender once, `--calls` calls each (after a pause and
a few calls not timed), and a figure is the median over `--repeats` rounds (a ratio: the median of the
rounds' ratios), so that the drift of a noisy machine falls on all of them alike.

- in-process FAISS (IndexFlatIP over unit vectors): the peer the issue names, at its default OpenMP threads
  (every core) and at one thread, which is faster for one query on a few cores (measured here: 0.79 vs 1.18 ms
  at 10k x 768 on two cores); the service's ratio is given against both;
- in-process, the service's own exact scan (index_service.exact.search_matrix over the same unit vectors,
  which the flat kind runs): what the service would cost without the call around it;
- the index service's Search of one query through the SDK and through a raw stub;
- the index service's GetStats (no search: the service's own per-call cost);
- a bare grpc.aio server answering grpc.health.v1 Check in another process, with no interceptor, executor
  or application code: what gRPC Python itself costs per loopback call on this machine.

`added_ms` is the service's Search minus its own scan in-process: the per-call overhead (RPC, validation,
the catalog lookup of the hits, the reply).

    python bench/overhead.py [--sizes 10000,100000] [--repeats 5] [--calls 200]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import faiss
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from alternate import alternate, median_ratio  # noqa: E402
from client import SimilarityClient  # noqa: E402
from client.local_services import free_port  # noqa: E402
from imgsim import vectors  # noqa: E402
from index_service.exact import search_matrix, unit_rows  # noqa: E402
from imgsim.healthcheck import is_serving  # noqa: E402
from imgsim.v1 import index_pb2, index_pb2_grpc  # noqa: E402

BARE_SERVER = textwrap.dedent("""
    import asyncio, sys
    import grpc
    from grpc_health.v1 import health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    async def main():
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        server.add_insecure_port("127.0.0.1:" + sys.argv[1])
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())
""")


# Before each contender's timed calls: a pause, then a few calls not timed. Without them, the service timed
# right after an in-process scan was 0.3-0.9 ms slower per call than the same service timed later in the
# round (the scan's BLAS threads still spinning on the two cores, caches holding the other copy).
SETTLE_S = 0.5
WARM_CALLS = 10


def interleaved_ms(actions: dict, calls: int, repeats: int) -> dict[str, list[float]]:
    """ms per call of each action (given the call's number), one list entry per round."""
    def warm(name: str) -> None:
        time.sleep(SETTLE_S)
        for n in range(min(WARM_CALLS, calls)):
            actions[name](n)

    def calls_of(action):
        def timed():
            for n in range(calls):
                action(n)
        return timed

    seconds = alternate({name: calls_of(action) for name, action in actions.items()}, repeats, before=warm)
    return {name: [1000 * s / calls for s in values] for name, values in seconds.items()}


def serving(process: subprocess.Popen, address: str) -> None:
    while not is_serving(address, timeout=0.5):
        if process.poll() is not None:
            sys.exit(f"{address} exited")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=9, help="rounds (each times every contender)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    default_threads = faiss.omp_get_max_threads()
    figures: dict[str, float] = {}
    bare_port, index_port = free_port(), free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(bare_port)])
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as data:
        index = subprocess.Popen([sys.executable, "-m", "index_service", "--port", str(index_port), "--data-dir",
                                  data, "--log-level", "WARNING"], cwd=ROOT)
        try:
            serving(index, f"127.0.0.1:{index_port}")
            while True:
                try:
                    with grpc.insecure_channel(f"127.0.0.1:{bare_port}") as probe:
                        health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
            with grpc.insecure_channel(f"127.0.0.1:{bare_port}") as bare_channel, \
                    grpc.insecure_channel(f"127.0.0.1:{index_port}") as channel, \
                    SimilarityClient(index=f"127.0.0.1:{index_port}") as client:
                health = health_pb2_grpc.HealthStub(bare_channel)
                stub = index_pb2_grpc.IndexStub(channel)
                for size in (int(s) for s in args.sizes.split(",")):
                    name = f"flat{size}"
                    candidates = rng.standard_normal((size, args.dim)).astype(np.float32)
                    client.create_collection(name, "flat")
                    for start in range(0, size, 10000):
                        client.upsert([f"v{i}" for i in range(start, min(size, start + 10000))],
                                      candidates[start:start + 10000], fingerprint="bench", collection=name)
                    queries = rng.standard_normal((args.calls, args.dim)).astype(np.float32)
                    unit = unit_rows(candidates)
                    flat = faiss.IndexFlatIP(args.dim)
                    flat.add(unit)
                    row_ids = np.arange(size)
                    requests = [index_pb2.SearchRequest(model_fingerprint="bench", k=10, collection=name,
                                                        queries=[vectors.to_proto(q)]) for q in queries]
                    stats_request = index_pb2.GetStatsRequest(collection=name)
                    def faiss_search(n: int, threads: int):
                        faiss.omp_set_num_threads(threads)
                        return flat.search(unit_rows(queries[n][None]), 10)

                    timings = interleaved_ms({
                        "inprocess_faiss": lambda n: faiss_search(n, default_threads),
                        "inprocess_faiss_1thread": lambda n: faiss_search(n, 1),
                        "inprocess_own_scan": lambda n: search_matrix(unit_rows(queries[n][None]), unit, row_ids, 10),
                        "service_raw_stub": lambda n: stub.Search(requests[n]),
                        "service_sdk": lambda n: client.search_vectors(queries[n], k=10, fingerprint="bench",
                                                                       collection=name),
                        "service_getstats": lambda n: stub.GetStats(stats_request),
                        "bare_grpc_aio_health": lambda n: health.Check(health_pb2.HealthCheckRequest()),
                    }, args.calls, args.repeats)
                    for what, values in timings.items():
                        figures[f"{name}_{what}_ms"] = statistics.median(values)
                    figures[f"{name}_ratio_service_vs_inprocess_faiss"] = median_ratio(
                        timings["inprocess_faiss"], timings["service_raw_stub"])
                    figures[f"{name}_ratio_service_vs_inprocess_faiss_1thread"] = median_ratio(
                        timings["inprocess_faiss_1thread"], timings["service_raw_stub"])
                    figures[f"{name}_ratio_service_vs_own_scan"] = median_ratio(
                        timings["inprocess_own_scan"], timings["service_raw_stub"])
                    figures[f"{name}_added_ms"] = statistics.median(
                        a - b for a, b in zip(timings["service_raw_stub"], timings["inprocess_own_scan"]))
                    print(f"{name}: in-process FAISS {figures[f'{name}_inprocess_faiss_ms']:.3f} ms "
                          f"({figures[f'{name}_inprocess_faiss_1thread_ms']:.3f} ms on one thread), own scan "
                          f"{figures[f'{name}_inprocess_own_scan_ms']:.3f} ms, service "
                          f"{figures[f'{name}_service_raw_stub_ms']:.3f} ms, bare gRPC "
                          f"{figures[f'{name}_bare_grpc_aio_health_ms']:.3f} ms", flush=True)
        finally:
            index.terminate()
            bare.terminate()
            index.wait()
            bare.wait()
    print("\nsummary")
    for name, value in figures.items():
        print(f"{name}: {value:.4g}")


if __name__ == "__main__":
    main()
