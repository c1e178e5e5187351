"""What the Python SDK's upsert costs the client: CPU seconds per vector in the calling process, beside the
rate the index accepted them at.

A real index process (flat, a temporary data directory) on this machine; the client upserts `--vectors`
random 768-d vectors in calls of 65,536 (as bench/index.py feeds it), `--repeats` times under fresh ids.
Client CPU is the process's CPU time (time.process_time: every thread, gRPC's included) over the upserts,
not counting making the vectors. The index shares the machine's cores, so the rate is the pair's; the CPU
per vector is the client's alone, and it is what a bulk load takes from the cores an index on the same
machine could use.

    python bench/client_upsert.py [--vectors 131072] [--repeats 5]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from client import SimilarityClient  # noqa: E402
from client.local_services import free_port  # noqa: E402
from imgsim.healthcheck import is_serving  # noqa: E402

CALL_VECTORS = 65536


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=131072)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    matrix = np.random.default_rng(0).standard_normal((args.vectors, args.dim), dtype=np.float32)
    port = free_port()
    cpu_us, rates = [], []
    with tempfile.TemporaryDirectory(prefix="bench-client-") as data:
        index = subprocess.Popen([sys.executable, "-m", "index_service", "--port", str(port), "--data-dir", data,
                                  "--log-level", "WARNING"], cwd=ROOT)
        try:
            while not is_serving(f"127.0.0.1:{port}", timeout=0.5):
                if index.poll() is not None:
                    sys.exit("the index exited")
                time.sleep(0.1)
            with SimilarityClient(index=f"127.0.0.1:{port}", timeout=600) as client:
                client.upsert(["warm"], matrix[:1], fingerprint="bench")
                for repeat in range(args.repeats):
                    ids = [f"r{repeat}-{i}" for i in range(args.vectors)]
                    cpu, wall = time.process_time(), time.perf_counter()
                    for start in range(0, args.vectors, CALL_VECTORS):
                        client.upsert(ids[start:start + CALL_VECTORS], matrix[start:start + CALL_VECTORS],
                                      fingerprint="bench")
                    cpu_us.append(1e6 * (time.process_time() - cpu) / args.vectors)
                    rates.append(args.vectors / (time.perf_counter() - wall))
                    print(f"  repeat {repeat}: {cpu_us[-1]:.2f} us of client CPU per vector, {rates[-1]:.0f} vectors/s",
                          flush=True)
        finally:
            index.terminate()
            index.wait()
    print("\nsummary")
    print(f"client_cpu_us_per_vector: {statistics.median(cpu_us):.4g}")
    print(f"upsert_vectors_per_s: {statistics.median(rates):.4g}")


if __name__ == "__main__":
    main()
