"""kill -9 at random moments while a real index process ingests: nothing acknowledged is ever lost."""

import random
import signal
import subprocess
import sys
import threading
import time
import zlib

import grpc
import numpy as np

from client.local_services import free_port
from conftest import ROOT
from imgsim import vectors
from imgsim.healthcheck import is_serving
from imgsim.v1 import index_pb2, index_pb2_grpc

FP = "c" * 32
DIM = 16
ITEMS_PER_CALL = 40


def vector_of(item_id: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(item_id.encode())).standard_normal(DIM).astype(np.float32) + 0.1


def start(data_dir) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "index_service", "--port", str(port), "--data-dir",
                                str(data_dir), "--snapshot-every", "300", "--log-level", "WARNING"], cwd=ROOT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not is_serving(address, timeout=0.5):
        assert process.poll() is None and time.monotonic() < deadline, "index did not start"
        time.sleep(0.05)
    return process, address


class Writer(threading.Thread):
    """Upserts calls of ITEMS_PER_CALL new ids until the server dies; remembers what was acknowledged."""

    def __init__(self, address: str, first_id: int):
        super().__init__(daemon=True)
        self.address = address
        self.next_id = first_id
        self.acknowledged: list[str] = []
        self.in_flight: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = index_pb2_grpc.IndexStub(channel)
            while True:
                ids = [f"id-{self.next_id + i}" for i in range(ITEMS_PER_CALL)]
                self.in_flight = ids
                request = index_pb2.UpsertRequest(model_fingerprint=FP, items=[
                    index_pb2.Item(id=i, vector=vectors.to_proto(vector_of(i)), metadata={"id": i}) for i in ids])
                try:
                    stub.Upsert(iter([request]), timeout=10)
                except grpc.RpcError:
                    return
                self.acknowledged += ids
                self.next_id += ITEMS_PER_CALL


def stored(address: str, ids: list[str]) -> dict[str, index_pb2.Item]:
    found = {}
    with grpc.insecure_channel(address) as channel:
        stub = index_pb2_grpc.IndexStub(channel)
        for start_at in range(0, len(ids), 4000):
            for item in stub.Get(index_pb2.GetRequest(ids=ids[start_at:start_at + 4000])).items:
                found[item.id] = item
    return found


def test_acknowledged_writes_survive_repeated_sigkill(tmp_path):
    rng = random.Random(7)
    acknowledged: list[str] = []
    next_id = 0
    process, address = start(tmp_path)
    try:
        for cycle in range(5):
            writer = Writer(address, next_id)
            writer.start()
            time.sleep(rng.uniform(0.2, 1.2))
            process.send_signal(signal.SIGKILL)
            process.wait()
            writer.join(15)
            acknowledged += writer.acknowledged
            in_flight = [i for i in writer.in_flight if i not in set(writer.acknowledged)]
            next_id = writer.next_id + ITEMS_PER_CALL

            process, address = start(tmp_path)
            found = stored(address, acknowledged + in_flight)
            missing = [i for i in acknowledged if i not in found]
            assert not missing, f"cycle {cycle}: {len(missing)} acknowledged ids lost, e.g. {missing[:3]}"
            for item_id, item in found.items():
                np.testing.assert_array_equal(vectors.from_proto(item.vector), vector_of(item_id))
                assert dict(item.metadata) == {"id": item_id}
            # The unacknowledged call was one message, one transaction: all of it or none of it.
            present = [i for i in in_flight if i in found]
            assert len(present) in (0, len(in_flight)), f"cycle {cycle}: a write landed half"
            acknowledged += present
            with grpc.insecure_channel(address) as channel:
                count = index_pb2_grpc.IndexStub(channel).GetStats(index_pb2.GetStatsRequest()).count
            assert count == len(acknowledged)
        assert len(acknowledged) > 200, "the writer hardly wrote anything: the test proved little"
    finally:
        process.kill()
        process.wait()
