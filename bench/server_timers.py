"""Runs imgsim-index with timers on its write path, for bench/index.py --timers: where a one-item write's
time goes while a bulk load and snapshots run. Each event is a JSON line in $IMGSIM_TIMERS_FILE:
  - group: one group commit (items, whether a snapshot was being written, its phases: plan, the vector
    file's write and sync, the catalog commit, the publish) and how long its one-item writes had queued;
  - small_rpc: an Upsert call of at most 8 items, from the handler's start to its reply;
  - lock: a hold of the collection's shared or exclusive lock over 30 ms (or a wait over 50 ms), by site.
The timers wrap the service's own methods (no change to what they do) and cost microseconds per group.

    python bench/server_timers.py --port 50052 --data-dir D        # imgsim-index's flags
    python bench/server_timers.py --report FILE                    # what bench/index.py prints
"""

import json
import os
import runpy
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

SMALL = 8  # items: the probe's writes
LOCK_HOLD_S, LOCK_WAIT_S = 0.03, 0.05


class Recorder:
    def __init__(self, path: str):
        self.out = open(path, "a", buffering=1)
        self.lock = threading.Lock()
        self.local = threading.local()

    def emit(self, **event) -> None:
        with self.lock:
            self.out.write(json.dumps(event) + "\n")

    def phase(self, tag: str, seconds: float) -> None:
        phases = getattr(self.local, "phases", None)
        if phases is not None:
            phases.append((tag, round(seconds, 4)))


def install(recorder: Recorder) -> None:
    """Wraps the write path's steps, the Upsert handler and the collection lock."""
    from index_service import catalog, locks, servicer, vector_file, writes
    from index_service.collection import Collection

    def timed(cls, name: str, tag: str) -> None:
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            started = time.monotonic()
            try:
                return original(self, *args, **kwargs)
            finally:
                recorder.phase(tag, time.monotonic() - started)
        setattr(cls, name, wrapper)

    for cls, name, tag in [(Collection, "_plan", "plan"), (Collection, "_publish", "publish"),
                           (catalog.Catalog, "commit", "catalog"), (vector_file.VectorFile, "write", "vwrite"),
                           (vector_file.VectorFile, "sync", "vsync")]:
        timed(cls, name, tag)

    submit = writes.Writer.submit

    def queued_submit(self, op):
        op.queued_at = time.monotonic()
        return submit(self, op)
    writes.Writer.submit = queued_submit

    apply = Collection._apply

    def timed_apply(self, ops):
        if getattr(recorder.local, "phases", None) is not None:  # planned again without a caller that left
            return apply(self, ops)
        recorder.local.phases = []
        started = time.monotonic()
        try:
            return apply(self, ops)
        finally:
            recorder.emit(ev="group", t=started, d=time.monotonic() - started, items=sum(op.size() for op in ops),
                          snapshotting=self.snapshotting.locked(), phases=recorder.local.phases,
                          queued=[started - getattr(op, "queued_at", started) for op in ops if op.size() <= SMALL])
            recorder.local.phases = None
    Collection._apply = timed_apply

    upsert = servicer.IndexServicer.Upsert

    async def timed_upsert(self, request_iterator, context):
        items = [0]

        async def counted():
            async for request in request_iterator:
                items[0] += len(request.items) + len(request.batch.ids)
                yield request
        started = time.monotonic()
        try:
            return await upsert(self, counted(), context)
        finally:
            if items[0] <= SMALL:
                collections = list(getattr(self.registry, "collections", {}).values())
                recorder.emit(ev="small_rpc", t=started, d=time.monotonic() - started,
                              snapshotting=any(c.snapshotting.locked() for c in collections))
    servicer.IndexServicer.Upsert = timed_upsert

    def timed_lock(name: str) -> None:
        original = getattr(locks.ReadWriteLock, name)

        @contextmanager
        def wrapper(self, *args, **kwargs):
            asked = time.monotonic()
            with original(self, *args, **kwargs):
                held = time.monotonic()
                try:
                    yield
                finally:
                    hold, wait = time.monotonic() - held, held - asked
                    if hold > LOCK_HOLD_S or wait > LOCK_WAIT_S:
                        frames = traceback.extract_stack(limit=5)[:-2]
                        recorder.emit(ev="lock", kind=name, t=asked, wait=wait, hold=hold,
                                      site=f"{frames[-1].name} < {frames[-2].name}" if len(frames) > 1 else "")
        setattr(locks.ReadWriteLock, name, wrapper)
    timed_lock("shared")
    timed_lock("exclusive")


def report(path: Path) -> list[tuple[str, str]]:
    """`name: value` pairs: the longest one-item write in the server and where its time went, the longest
    lock holds by site."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups = [e for e in events if e["ev"] == "group" and e["queued"]]
    lines = []
    slowest = sorted((e for e in events if e["ev"] == "small_rpc"), key=lambda e: -e["d"])[:3]
    for rank, rpc in enumerate(slowest, 1):
        own = next((g for g in groups if rpc["t"] <= g["t"] <= rpc["t"] + rpc["d"]), None)
        split = "its group not found"
        if own is not None:
            queued_at = own["t"] - own["queued"][0]
            slow = ", ".join(f"{tag} {s:.3f}" for tag, s in own["phases"] if s > 0.01) or "none over 10 ms"
            split = (f"before the queue {queued_at - rpc['t']:.3f} s, queued {own['queued'][0]:.3f} s, its group "
                     f"{own['d']:.3f} s (steps over 10 ms: {slow}), reply {rpc['t'] + rpc['d'] - own['t'] - own['d']:.3f} s")
        during = ", a snapshot being written" if rpc["snapshotting"] else ""
        lines.append((f"slowest one-item write in the server #{rank}", f"{rpc['d']:.3f} s ({split}{during})"))
    sites: dict[tuple[str, str], list[dict]] = {}
    for e in events:
        if e["ev"] == "lock":
            sites.setdefault((e["kind"], e["site"]), []).append(e)
    for (kind, site), held in sorted(sites.items(), key=lambda kv: -max(e["hold"] for e in kv[1]))[:6]:
        lines.append((f"{kind} lock held at {site}, longest hold",
                      f"{max(e['hold'] for e in held):.3f} s (longest wait {max(e['wait'] for e in held):.3f} s; "
                      f"{len(held)} holds over {LOCK_HOLD_S * 1000:.0f} ms or waits over {LOCK_WAIT_S * 1000:.0f} ms)"))
    return lines


def main() -> None:
    if sys.argv[1:2] == ["--report"]:
        for name, value in report(Path(sys.argv[2])):
            print(f"{name}: {value}")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    install(Recorder(os.environ["IMGSIM_TIMERS_FILE"]))
    sys.argv[0] = "imgsim-index"
    runpy.run_module("index_service", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
