"""A stateful property test: random writes, refused writes, searches, restarts and kill -9 against a real
index process, checked after every step against a plain-Python model of what was acknowledged.

Invariants: every acknowledged write is present bit for bit, deleted items stay deleted, a refused write
leaves no trace, a call cut by kill -9 landed whole or not at all, and flat search equals exact numpy on the
model. CI runs a small number of examples; IMGSIM_STATEFUL_EXAMPLES=N IMGSIM_STATEFUL_STEPS=M run it long
(the counts of steps and kills are printed at the end, and after every example to the file named by
IMGSIM_STATEFUL_COUNTS).
"""

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from client.local_services import free_port
from conftest import ROOT
from imgsim import vectors
from imgsim.healthcheck import is_serving
from imgsim.v1 import index_pb2, index_pb2_grpc
from indexing import FP, exact_top_k, item

DIM = 6
IDS = [f"id{i}" for i in range(40)]
EXAMPLES = int(os.environ.get("IMGSIM_STATEFUL_EXAMPLES", "4"))
STEPS = int(os.environ.get("IMGSIM_STATEFUL_STEPS", "30"))
COUNTS = {"steps": 0, "kills": 0, "restarts": 0, "in_flight_kills": 0, "refused": 0, "examples": 0,
          "upserts": 0, "deletes": 0, "searches": 0}

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
good_vector = st.lists(finite, min_size=DIM, max_size=DIM).filter(lambda v: 1e-3 < np.linalg.norm(v))
extreme = st.sampled_from([
    [1e-25] * DIM, [3e38] * DIM, [1e-45] * DIM, [float("nan")] + [1.0] * (DIM - 1), [0.0] * DIM,
    [1e-25, 0, -1e-25, 0, 0, 0], [float("inf")] + [0.0] * (DIM - 1)])
metadata = st.dictionaries(st.sampled_from(["label", "n", "ok"]),
                           st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(-5, 5), st.booleans()), max_size=2)


class IndexProcess:
    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.process = None
        self.port = None
        self.channel = None
        self.stub = None

    def start(self) -> None:
        self.port = free_port()
        self.log = open(f"{self.data_dir}.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "index_service", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--snapshot-every", "25", "--compact-dead-fraction", "0.3", "--log-level", "WARNING"], cwd=ROOT,
            stderr=self.log)
        deadline = time.monotonic() + 60
        while not is_serving(f"127.0.0.1:{self.port}", timeout=0.5):
            assert self.process.poll() is None, f"the index exited with {self.process.returncode} while starting"
            assert time.monotonic() < deadline, "the index did not start"
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = index_pb2_grpc.IndexStub(self.channel)

    def stop(self, sig: int) -> None:
        if self.channel is not None:  # None when stopped before it served (a run ended by its time limit)
            self.channel.close()
        self.process.send_signal(sig)
        code = self.process.wait(60)
        self.log.close()
        if sig == signal.SIGTERM:
            assert code == 0, f"the index exited with {code} on SIGTERM"
        self.check_log()

    def check_log(self) -> None:
        """A failure the client never saw (a writer thread's error, say) still fails the run."""
        with open(f"{self.data_dir}.log", errors="replace") as log:
            text = log.read()
        assert "Traceback" not in text and " ERROR " not in text, text[-4000:]


class IndexMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.model: dict[str, tuple[bytes, dict]] = {}
        self.index = None

    @initialize()
    def start(self):
        import tempfile
        self.folder = tempfile.mkdtemp(prefix="imgsim-state-")
        self.index = IndexProcess(self.folder)
        self.index.start()
        COUNTS["examples"] += 1

    def teardown(self):
        import shutil
        if os.environ.get("IMGSIM_STATEFUL_COUNTS"):  # a long run's progress, readable while it runs
            with open(os.environ["IMGSIM_STATEFUL_COUNTS"], "w") as out:
                out.write(f"{time.strftime('%H:%M:%S')} {COUNTS}\n")
        try:
            if self.index is not None and self.index.process is not None and self.index.process.poll() is None:
                self.index.stop(signal.SIGKILL)
        finally:
            shutil.rmtree(getattr(self, "folder", ""), ignore_errors=True)
            if hasattr(self, "folder") and os.path.exists(f"{self.folder}.log"):
                os.remove(f"{self.folder}.log")

    def _upsert_messages(self, writes, fingerprints, dims):
        messages = []
        for number, (batch, fingerprint, dim) in enumerate(zip(writes, fingerprints, dims)):
            messages.append(index_pb2.UpsertRequest(
                model_fingerprint=fingerprint if number == 0 or fingerprint != FP else "",
                items=[item(i, np.asarray(v, dtype=np.float32)[:dim] if dim != DIM else np.asarray(v, np.float32), m)
                       for i, v, m in batch]))
        return messages

    def _apply(self, writes) -> None:
        for batch in writes:
            for item_id, vector, meta in batch:
                self.model[item_id] = (np.asarray(vector, dtype="<f4").tobytes(), meta)

    @rule(writes=st.lists(st.lists(st.tuples(st.sampled_from(IDS), good_vector, metadata), min_size=1, max_size=5),
                          min_size=1, max_size=3))
    def upsert(self, writes):
        COUNTS["steps"] += 1
        COUNTS["upserts"] += 1
        self.index.stub.Upsert(iter(self._upsert_messages(writes, [FP] * len(writes), [DIM] * len(writes))))
        self._apply(writes)

    @rule(writes=st.lists(st.lists(st.tuples(st.sampled_from(IDS), good_vector, metadata), min_size=1, max_size=4),
                          min_size=2, max_size=3),
          poison=st.sampled_from(["dimension", "fingerprint", "extreme"]), where=st.integers(0, 2),
          bad=extreme)
    def refused_upsert(self, writes, poison, where, bad):
        """A call with one bad message among good ones (the old poison stream): nothing of it may land."""
        COUNTS["steps"] += 1
        where = min(where, len(writes) - 1)
        fingerprints, dims = [FP] * len(writes), [DIM] * len(writes)
        if poison == "dimension":
            dims[where] = DIM - 1 if where else DIM
            if where == 0:
                dims[1] = DIM - 1
        elif poison == "fingerprint":
            fingerprints[max(where, 1)] = "e" * 32
        else:
            first_id = writes[where][0][0]
            writes[where][0] = (first_id, bad, {})
        with pytest.raises(grpc.RpcError) as caught:
            self.index.stub.Upsert(iter(self._upsert_messages(writes, fingerprints, dims)))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        COUNTS["refused"] += 1

    @rule(ids=st.lists(st.sampled_from(IDS + ["never"]), min_size=1, max_size=6))
    def delete(self, ids):
        COUNTS["steps"] += 1
        COUNTS["deletes"] += 1
        reply = self.index.stub.Delete(index_pb2.DeleteRequest(ids=ids))
        assert reply.deleted == len({i for i in ids if i in self.model})
        for item_id in ids:
            self.model.pop(item_id, None)

    @rule(query=good_vector, k=st.integers(1, 12))
    def search(self, query, k):
        COUNTS["steps"] += 1
        COUNTS["searches"] += 1
        request = index_pb2.SearchRequest(model_fingerprint=FP, k=k,
                                          queries=[vectors.to_proto(np.asarray(query, np.float32))])
        if not self.model:
            return
        hits = self.index.stub.Search(request).results[0].hits
        ids = sorted(self.model)
        matrix = np.stack([np.frombuffer(self.model[i][0], dtype="<f4") for i in ids])
        positions, scores = exact_top_k(matrix, np.asarray([query], np.float32), k)
        assert len(hits) == min(k, len(ids))
        np.testing.assert_allclose([h.score for h in hits], scores[0][:len(hits)], atol=1e-5)
        expected = {ids[p] for p, s in zip(positions[0], scores[0]) if s < scores[0][len(hits) - 1] - 1e-5}
        assert expected <= {h.id for h in hits}  # ties at the boundary may come in either order

    @rule()
    def restart(self):
        COUNTS["steps"] += 1
        COUNTS["restarts"] += 1
        self.index.stop(signal.SIGTERM)
        self.index.start()

    @rule()
    def kill(self):
        COUNTS["steps"] += 1
        COUNTS["kills"] += 1
        self.index.stop(signal.SIGKILL)
        self.index.start()

    @rule(writes=st.lists(st.tuples(st.sampled_from(IDS), good_vector, metadata), min_size=20, max_size=40),
          delay=st.floats(0.0, 0.05))
    def kill_during_upsert(self, writes, delay):
        """kill -9 while a call is in flight: acknowledged means present; otherwise all of it or none."""
        COUNTS["steps"] += 1
        COUNTS["in_flight_kills"] += 1
        outcome = {}

        def call():
            try:
                self.index.stub.Upsert(iter(self._upsert_messages([writes], [FP], [DIM])), timeout=10)
                outcome["ok"] = True
            except grpc.RpcError as err:
                outcome["error"] = err.code()
            except ValueError:  # a kill at delay 0 closed the channel before the call began: nothing was sent
                outcome["error"] = "not sent"

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(delay)
        self.index.stop(signal.SIGKILL)
        caller.join(30)
        self.index.start()
        latest = {item_id: (np.asarray(v, dtype="<f4").tobytes(), m) for item_id, v, m in writes}
        stored = {i.id: i for i in self.index.stub.Get(index_pb2.GetRequest(ids=list(latest))).items}
        landed = all(i in stored and vectors.from_proto(stored[i].vector).tobytes() == latest[i][0] for i in latest)
        if outcome.get("ok"):
            assert landed, "an acknowledged write was lost"
        if landed:
            self._apply([writes])
        else:
            # Not landed: every id must still hold what the model says (nothing of the call), or be absent.
            for item_id in latest:
                if item_id in self.model:
                    assert vectors.from_proto(stored[item_id].vector).tobytes() == self.model[item_id][0]
                else:
                    assert item_id not in stored, "half of an unacknowledged call landed"

    @rule()
    def compact(self):
        """(No precondition on the model: whether an in-flight write landed is up to timing, and a rule that
        is enabled by it makes hypothesis's replays diverge.)"""
        COUNTS["steps"] += 1
        self.index.stub.Compact(index_pb2.CompactRequest())

    @invariant()
    def matches_the_model(self):
        if self.index is None or self.index.stub is None:
            return
        stats = self.index.stub.GetStats(index_pb2.GetStatsRequest())
        assert stats.count == len(self.model)
        stored = {i.id: i for i in self.index.stub.Get(index_pb2.GetRequest(ids=IDS)).items}
        assert set(stored) == set(self.model), "deleted items came back or acknowledged ones went missing"
        for item_id, (raw, meta) in self.model.items():
            assert vectors.from_proto(stored[item_id].vector).tobytes() == raw
            got = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
                   for k, v in stored[item_id].typed_metadata.items()}
            assert got == meta


IndexMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                          suppress_health_check=list(HealthCheck))
TestIndexMachine = IndexMachine.TestCase


def teardown_module(module):
    print(f"\nstateful index test: {COUNTS}")
