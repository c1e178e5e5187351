"""Per-call overhead of a single-query Search, and where it goes.

Side by side in one run, medians of repeats, ms per call from one synchronous client (as an application
calls):

- in-process FAISS (IndexFlatIP over unit vectors): the floor;
- the index service's Search of one query through the SDK and through a raw stub;
- the index service's GetStats (no search: the service's own per-call cost);
- a bare grpc.aio server answering grpc.health.v1 Check in another process, with no interceptor, executor
  or application code: what gRPC Python itself costs per loopback call on this machine.

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

from client import SimilarityClient  # noqa: E402
from client.local_services import free_port  # noqa: E402
from imgsim import vectors  # noqa: E402
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


def per_call_ms(action, calls: int, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for n in range(calls):
            action(n)
        timings.append(1000 * (time.perf_counter() - started) / calls)
    return statistics.median(timings)


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
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
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
                figures["bare_grpc_aio_health_ms"] = per_call_ms(
                    lambda n: health.Check(health_pb2.HealthCheckRequest()), args.calls, args.repeats)
                for size in (int(s) for s in args.sizes.split(",")):
                    name = f"flat{size}"
                    candidates = rng.standard_normal((size, args.dim)).astype(np.float32)
                    client.create_collection(name, "flat")
                    for start in range(0, size, 10000):
                        client.upsert([f"v{i}" for i in range(start, min(size, start + 10000))],
                                      candidates[start:start + 10000], fingerprint="bench", collection=name)
                    queries = rng.standard_normal((args.calls, args.dim)).astype(np.float32)
                    flat = faiss.IndexFlatIP(args.dim)
                    flat.add(candidates / np.linalg.norm(candidates, axis=1, keepdims=True))
                    requests = [index_pb2.SearchRequest(model_fingerprint="bench", k=10, collection=name,
                                                        queries=[vectors.to_proto(q)]) for q in queries]

                    def in_process(n):
                        flat.search((queries[n] / np.linalg.norm(queries[n]))[None], 10)
                    figures[f"{name}_inprocess_faiss_ms"] = per_call_ms(in_process, args.calls, args.repeats)
                    figures[f"{name}_service_raw_stub_ms"] = per_call_ms(lambda n: stub.Search(requests[n]),
                                                                         args.calls, args.repeats)
                    figures[f"{name}_service_sdk_ms"] = per_call_ms(
                        lambda n: client.search_vectors(queries[n], k=10, fingerprint="bench", collection=name),
                        args.calls, args.repeats)
                    figures[f"{name}_service_getstats_ms"] = per_call_ms(
                        lambda n: stub.GetStats(index_pb2.GetStatsRequest(collection=name)), args.calls, args.repeats)
                    figures[f"{name}_ratio_service_vs_inprocess"] = (figures[f"{name}_inprocess_faiss_ms"]
                                                                     / figures[f"{name}_service_raw_stub_ms"])
                    figures[f"{name}_added_ms"] = (figures[f"{name}_service_raw_stub_ms"]
                                                   - figures[f"{name}_inprocess_faiss_ms"])
                    print(f"{name}: in-process {figures[f'{name}_inprocess_faiss_ms']:.3f} ms, service "
                          f"{figures[f'{name}_service_raw_stub_ms']:.3f} ms", flush=True)
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
