"""How long a snapshot holds writes. One ivfpq collection of N vectors (bench/data.py's data) is opened in
this process (the index service's own Registry, Collection and maintenance, no gRPC); a thread writes one
item at a time, back to back, while snapshots are taken (forced, one per round). Two ways of taking them,
alternated round by round on the same collection:

  - beside the writes: as the service does, the write mutex held only while the snapshot notes what to
    copy, ivfpq's lists copied afterwards a few at a time beside the writes;
  - under the write mutex: the lists copied while it is held (what the service did before 2925890, there
    through FAISS's serialize_index).

For each it prints the longest and the median one-item write that overlapped a snapshot, and the seconds a
snapshot took; and the one-item writes outside snapshots, for reference. It does not cover gRPC or a bulk
load running meanwhile (bench/index.py's probe sees both, and reports its slowest write that met a
snapshot).

    python bench/snapshots.py                 # 1M x 768, 5 rounds of each
    python bench/snapshots.py --quick         # 50k x 64, 2 rounds: a smoke run
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data import ClusteredStream  # noqa: E402
from imgsim.v1 import index_pb2  # noqa: E402
from index_service import validation  # noqa: E402
from index_service.kinds.base import no_lock  # noqa: E402
from index_service.kinds.ivfpq import IvfPqStructure  # noqa: E402
from index_service.registry import Registry  # noqa: E402
from index_service.snapshot import collected  # noqa: E402
from index_service.writes import WriteOp  # noqa: E402

CALL = validation.MAX_ITEMS_PER_CALL
FP = "bench-model"
SUMMARY: list[tuple[str, str]] = []


def say(name: str, value, unit: str = "") -> None:
    text = (f"{value:.4g}" if isinstance(value, float) else str(value)) + (f" {unit}" if unit else "")
    print(f"  {name}: {text}", flush=True)
    SUMMARY.append((name, text))


def write_op(ids: list[str], vectors: np.ndarray) -> WriteOp:
    """What the servicer makes of an Upsert call: its messages checked, its items assembled."""
    call = validation.UpsertCall()
    step = validation.MAX_ITEMS_PER_MESSAGE
    for start in range(0, len(ids), step):
        call.add(index_pb2.UpsertRequest(model_fingerprint=FP, batch=index_pb2.ItemBatch(
            ids=ids[start:start + step], vectors=vectors[start:start + step].astype("<f4").tobytes())))
    return WriteOp(fingerprint=FP, items=call.items())


def load(collection, stream: ClusteredStream) -> None:
    for start, vectors in stream.chunks(CALL):
        op = write_op([f"v{start + i}" for i in range(len(vectors))], vectors)
        while (future := collection.submit(op, only_if_room=True)) is None:
            time.sleep(0.05)  # as the servicer does: the bulk load goes at the encoder's pace
        future.result()
    while not (collection.stats().trained and collection.stats().pending == 0):
        time.sleep(0.5)


class OneItemWrites(threading.Thread):
    """Writes one item after another (each waits for its commit), keeping each write's start and end."""

    def __init__(self, collection, dim: int):
        super().__init__(daemon=True)
        self.collection, self.dim = collection, dim
        self.stop = threading.Event()
        self.spans: list[tuple[float, float]] = []

    def run(self) -> None:
        rng = np.random.default_rng(1)
        while not self.stop.is_set():
            op = write_op([f"probe-{len(self.spans) % 1000}"], rng.standard_normal((1, self.dim)).astype(np.float32))
            started = time.perf_counter()
            self.collection.submit(op).result()
            self.spans.append((started, time.perf_counter()))
            time.sleep(0.002)


def one_round(collection, dim: int, whole: bool) -> tuple[list[float], list[float], float]:
    """(writes overlapping the snapshot, writes outside it, the snapshot's seconds)."""
    original = IvfPqStructure.capture

    def copied_now(structure):  # the lists copied at once, while the caller holds the write mutex
        arrays, blobs, info = original(structure)(no_lock)
        state = collected(arrays), blobs, info
        return lambda shared: state
    if whole:
        IvfPqStructure.capture = copied_now
    writes = OneItemWrites(collection, dim)
    try:
        writes.start()
        time.sleep(1.0)
        began = time.perf_counter()
        assert collection.take_snapshot(force=True)
        ended = time.perf_counter()
        time.sleep(0.5)
    finally:
        writes.stop.set()
        writes.join()
        IvfPqStructure.capture = original
    during = [end - start for start, end in writes.spans if start < ended and end > began]
    outside = [end - start for start, end in writes.spans if end <= began or start >= ended]
    return during, outside, ended - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="50k x 64, 2 rounds")
    parser.add_argument("--data-dir", default=None, help="where the collection is made (a temporary folder)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.dim, args.rounds = 50_000, 64, 2
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-", dir=args.data_dir) as folder:
        registry = Registry(Path(folder), default_kind="ivfpq", snapshot_every=10**15)  # snapshots on demand only
        registry.open_all()
        collection = registry.get("default")
        started = time.monotonic()
        load(collection, ClusteredStream(args.size, args.dim, seed=args.size))
        print(f"    {args.size} x {args.dim} loaded, trained and encoded in {time.monotonic() - started:.0f} s",
              flush=True)
        found = {name: ([], [], []) for name in ("beside the writes", "under the write mutex")}
        for _ in range(args.rounds):
            for name in found:
                during, outside, seconds = one_round(collection, args.dim, name == "under the write mutex")
                found[name][0].extend(during)
                found[name][1].extend(outside)
                found[name][2].append(seconds)
        for name, (during, outside, seconds) in found.items():
            label = f"ivfpq {args.size} x {args.dim}, lists copied {name}"
            say(f"{label}, longest / median one-item write during a snapshot",
                f"{max(during) * 1000:.1f} / {statistics.median(during) * 1000:.1f}", "ms")
            say(f"{label}, writes that met a snapshot / longest write outside one",
                f"{len(during)} / {max(outside) * 1000:.1f} ms")
            say(f"{label}, snapshot seconds (median of {len(seconds)})", statistics.median(seconds), "s")
        registry.close()
    print("\nsummary")
    for name, text in SUMMARY:
        print(f"{name}: {text}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
