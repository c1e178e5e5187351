"""Regressions for the index-core review: each finding, reproduced against real processes and files."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from client.local_services import free_port
from conftest import ROOT, start_index
from imgsim import vectors
from imgsim.healthcheck import is_serving
from imgsim.v1 import index_pb2
from index_service.config import KindParams
from indexing import FP, Index, clustered, item, random_vectors


def launch(data_dir, *flags, port=None, wait=True):
    port = port or free_port()
    process = subprocess.Popen([sys.executable, "-m", "index_service", "--port", str(port), "--data-dir",
                                str(data_dir), *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    if wait:
        deadline = time.monotonic() + 60
        while not is_serving(f"127.0.0.1:{port}", timeout=0.5):
            if process.poll() is not None:
                raise AssertionError(f"index exited {process.returncode}: {process.stdout.read()}")
            assert time.monotonic() < deadline
            time.sleep(0.05)
    return process, port


def stop(process, sig=signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(sig)
    output, _ = process.communicate(timeout=60)
    return process.returncode, output


def test_after_a_refused_poison_call_and_kill_9_the_index_starts_and_writes_again(tmp_path):
    process, port = launch(tmp_path)
    idx = Index(port)
    idx.upsert(["a"], random_vectors(1, 8))
    with pytest.raises(grpc.RpcError):
        idx.stub.Upsert(iter([index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("p", np.ones(8))]),
                              index_pb2.UpsertRequest(model_fingerprint=FP, items=[item("q", np.ones(5))])]))
    idx.close()
    stop(process, signal.SIGKILL)
    process, port = launch(tmp_path)
    idx = Index(port)
    try:
        assert idx.stats().count == 1
        assert idx.upsert(["p", "q"], np.ones((2, 8))).count == 3
    finally:
        idx.close()
        stop(process)


def test_a_second_process_refuses_the_data_directory_at_once_and_takes_over_after_a_kill(tmp_path):
    first, _ = launch(tmp_path)
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "index_service", "--port", "0", "--data-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and time.monotonic() - started < 15
    assert f"data directory {tmp_path} is in use by pid {first.pid}" in second.stderr
    stop(first, signal.SIGKILL)  # the lock dies with its holder: nothing stale is left behind
    third, port = launch(tmp_path)
    assert stop(third)[0] == 0


@pytest.mark.parametrize("case, expected", [
    ("under a file", "part of its path is a file"),
    ("is a file", "a file of that name is in the way"),
    ("read-only", "Read-only file system"),
])
def test_a_data_directory_that_cannot_be_used_is_named_in_one_line(tmp_path, case, expected):
    if case == "under a file":
        (tmp_path / "file").write_text("x")
        data_dir = tmp_path / "file" / "data"
    elif case == "is a file":
        data_dir = tmp_path / "file"
        data_dir.write_text("x")
    else:
        data_dir = tmp_path / "ro"
        data_dir.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(data_dir)],
                              capture_output=True)
        if done.returncode:
            pytest.skip("cannot mount a read-only file system here")
    try:
        done = subprocess.run([sys.executable, "-m", "index_service", "--port", "0", "--data-dir", str(data_dir)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        if case == "read-only":
            subprocess.run(["umount", "-l", str(data_dir)], check=False)
    assert done.returncode == 1
    assert f"cannot use data directory {data_dir}: {expected}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("params, words", [
    ({"hnsw_m": 1}, "params.hnsw_m must be from 2 to 256"),
    ({"ivf_nlist": 0}, "params.ivf_nlist must be from 1 to 65536"),
    ({"lsh_bits": 40}, "params.lsh_bits must be from 1 to 32"),
    ({"lsh_bits": 2, "lsh_radius": 3}, "lsh_radius (3) cannot exceed lsh_bits (2)"),
])
def test_collection_parameters_are_checked_against_what_each_kind_accepts(index, params, words):
    idx = Index(index.port)
    with pytest.raises(grpc.RpcError) as caught:
        idx.stub.CreateCollection(index_pb2.CreateCollectionRequest(name="x", index_kind="hnsw",
                                                                    params=index_pb2.IndexParams(**params)))
    idx.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()


@pytest.mark.parametrize("nlist", [1, 4])
def test_ivfpq_with_few_lists_trains_and_restarts(tmp_path, nlist):
    params = KindParams(ivf_nlist=nlist, ivf_nprobe=nlist, pq_m=8)
    running = start_index(tmp_path, index_kind="ivfpq", kind_params=params)
    idx = Index(running.port)
    candidates = clustered(10200, 16)
    with pytest.raises(grpc.RpcError):  # a subnormal vector never reaches training
        idx.upsert(["tiny"], np.full((1, 16), 1e-45, dtype=np.float32))
    for start in range(0, len(candidates), 4000):
        idx.upsert([f"v{i}" for i in range(start, min(start + 4000, len(candidates)))], candidates[start:start + 4000])
    deadline = time.monotonic() + 120
    while not idx.stats().trained:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    idx.close()
    running.stop(0)
    running = start_index(tmp_path, index_kind="ivfpq", kind_params=params)
    idx = Index(running.port)
    try:
        assert idx.stats().trained and idx.stats().count == 10200
        assert idx.search(candidates[3], 1, exact=True)[0][0][0] == "v3"
        hits = idx.search(candidates[3], 10)[0]
        assert len(hits) == 10 and hits[0][1] > 0.9
    finally:
        idx.close()
        running.stop(0)


def vector_file(data_dir):
    return data_dir / "collections" / "default" / "vectors.f32"


def catalog_file(data_dir):
    return data_dir / "collections" / "default" / "catalog.sqlite3"


def test_bit_flips_in_the_vector_file_are_caught_never_served(tmp_path):
    running = start_index(tmp_path)
    idx = Index(running.port)
    candidates = random_vectors(300, 16)
    idx.upsert([f"v{i}" for i in range(300)], candidates)
    idx.close()
    running.stop(0)
    path = vector_file(tmp_path)
    data = bytearray(path.read_bytes())
    damaged_rows = [5, 77, 200]
    for row in damaged_rows:
        data[4096 + row * 64 + 9] ^= 0x10  # one bit in each of three vectors
    path.write_bytes(bytes(data))
    running = start_index(tmp_path)
    idx = Index(running.port)
    try:
        assert idx.stats().damaged == 3
        got = idx.get([f"v{r}" for r in (5, 6, 77)])
        assert sorted(got.damaged_ids) == ["v5", "v77"] and [i.id for i in got.items] == ["v6"]
        for exact in (False, True):
            found = idx.search(candidates[[5, 77, 200]], 3, exact=exact)
            assert all(i not in ("v5", "v77", "v200") for hits in found for i, _ in hits)
        assert idx.upsert(["v5"], candidates[5:6]).count == 300  # writing it again repairs it
        assert idx.search(candidates[5], 1)[0][0][0] == "v5" and idx.stats().damaged == 2
    finally:
        idx.close()
        running.stop(0)


def test_a_flipped_catalog_record_is_refused_not_served_as_wrong_metadata(tmp_path):
    running = start_index(tmp_path)
    idx = Index(running.port)
    idx.upsert([f"v{i}" for i in range(50)], random_vectors(50, 8), [{"label": "cat"}] * 50)
    idx.close()
    running.stop(0)
    with sqlite3.connect(catalog_file(tmp_path)) as db:  # one character of one record's metadata changes
        db.execute("UPDATE items SET metadata = replace(metadata, 'cat', 'cot') WHERE id = 'v7'")
    running = start_index(tmp_path)
    idx = Index(running.port)
    try:
        got = idx.get(["v7", "v8"])
        assert got.damaged_ids == ["v7"] and [i.metadata["label"] for i in got.items] == ["cat"]
        hits = idx.search(random_vectors(1, 8, seed=3), 50)[0]
        assert "v7" not in {i for i, _ in hits} and len(hits) == 49
    finally:
        idx.close()
        running.stop(0)


def test_a_deleted_write_ahead_log_after_kill_9_is_reported_not_silently_accepted(tmp_path):
    process, port = launch(tmp_path)
    idx = Index(port)
    for start in range(0, 400, 40):  # many small commits, none checkpointed yet
        idx.upsert([f"v{i}" for i in range(start, start + 40)], random_vectors(40, 8, seed=start))
    idx.close()
    stop(process, signal.SIGKILL)
    wal = catalog_file(tmp_path).with_name("catalog.sqlite3-wal")
    assert wal.exists() and wal.stat().st_size > 0
    wal.unlink()
    process, _ = launch(tmp_path, wait=False)
    code, output = process.wait(60), process.stdout.read()
    assert code == 1
    assert "committed writes are missing (was catalog.sqlite3-wal deleted" in output


def test_get_stats_never_sees_part_of_a_call(tmp_path):
    running = start_index(tmp_path)
    idx = Index(running.port)
    seen, stop_polling = set(), threading.Event()

    def poll():
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            from imgsim.v1 import index_pb2_grpc
            stub = index_pb2_grpc.IndexStub(channel)
            while not stop_polling.is_set():
                seen.add(stub.GetStats(index_pb2.GetStatsRequest()).count)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        for call in range(4):
            ids = [f"c{call}-{i}" for i in range(16384)]
            idx.upsert(ids, random_vectors(16384, 8, seed=call), per_message=2048)
    finally:
        stop_polling.set()
        poller.join()
        idx.close()
        running.stop(0)
    assert seen <= {0, 16384, 32768, 49152, 65536}, sorted(seen)
    assert len(seen) >= 2


def test_a_call_whose_deadline_passes_before_its_commit_stores_nothing(index):
    idx = Index(index.port)
    idx.upsert(["first"], random_vectors(1, 8))
    gate = threading.Event()

    def slow_messages():
        yield index_pb2.UpsertRequest(model_fingerprint=FP, items=[item(f"s{i}", np.ones(8)) for i in range(100)])
        gate.wait(5)  # the client takes longer than its deadline to finish the call
        yield index_pb2.UpsertRequest(items=[item("s100", np.ones(8))])

    with pytest.raises(grpc.RpcError) as caught:
        idx.stub.Upsert(slow_messages(), timeout=1.0)
    gate.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)
    assert idx.stats().count == 1 and idx.get(["s0", "s100"]).items == []
    idx.close()


def test_sigterm_during_a_slow_call_finishes_it_within_the_grace_or_stores_nothing(tmp_path):
    process, port = launch(tmp_path, "--grace-s", "1")
    idx = Index(port)
    outcome = {}

    def messages():
        for n in range(40):
            yield index_pb2.UpsertRequest(model_fingerprint=FP, items=[item(f"m{n}", np.ones(8) + n)])
            time.sleep(0.1)  # 4 s in all: longer than the grace

    def call():
        try:
            idx.stub.Upsert(messages(), timeout=30)
            outcome["ok"] = True
        except grpc.RpcError as err:
            outcome["code"] = err.code()

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)
    code, output = stop(process)
    caller.join(30)
    idx.close()
    assert code == 0, output
    assert "code" in outcome and outcome["code"] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    process, port = launch(tmp_path)
    idx = Index(port)
    try:
        assert idx.stats().count == 0  # the call was cut before its commit: nothing of it is stored
    finally:
        idx.close()
        stop(process)


def test_sigterm_while_loading_exits_cleanly_and_says_so(tmp_path):
    running = start_index(tmp_path, index_kind="hnsw")
    idx = Index(running.port)
    data = clustered(40000, 64)
    for start in range(0, 40000, 4000):
        idx.upsert([f"v{i}" for i in range(start, start + 4000)], data[start:start + 4000])
    idx.close()
    running.stop(0)
    snapshots = tmp_path / "collections" / "default" / "snapshots"
    for folder in snapshots.iterdir():  # no snapshot: the next start rebuilds the graph, which takes a while
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    port = free_port()
    process, _ = launch(tmp_path, "--index-kind", "hnsw", port=port, wait=False)
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while True:  # bound and answering, but not serving yet: it is loading
            assert time.monotonic() < deadline, "never saw the index loading"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
            except grpc.RpcError:
                assert process.poll() is None
                time.sleep(0.02)
    code, output = stop(process)
    assert code == 0, output
    assert "stopped before serving" in output


def test_tls_files_that_are_not_a_certificate_and_key_are_named_not_reported_as_a_taken_port(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    done = subprocess.run([sys.executable, "-m", "index_service", "--port", "0", "--data-dir", str(tmp_path / "d"),
                           "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot use the TLS files" in done.stderr and "port" not in done.stderr


def test_a_snapshot_that_fails_at_shutdown_on_a_full_disk_leaves_no_staging_folder_and_exits_0(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        process, port = launch(mount / "data", "--index-kind", "lsh", "--snapshot-every", "1000000000")
        idx = Index(port)
        written = 0
        try:
            while True:
                idx.upsert([f"v{written + i}" for i in range(200)], random_vectors(200, 64, seed=written))
                written += 200
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        filler = mount / "filler"  # take what is left, so the closing snapshot cannot be written
        with filler.open("wb") as file:
            try:
                file.write(b"\0" * (8 << 20))
            except OSError:
                pass
        assert idx.delete(["v0", "v1"]).deleted == 2  # deletes still commit on a full disk
        idx.close()
        code, output = stop(process)
        assert code == 0, output
        assert not list((mount / "data" / "collections" / "default" / "snapshots").glob("staging-*"))
        filler.unlink()
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)  # the operator adds space
        process, port = launch(mount / "data", "--index-kind", "lsh")
        idx = Index(port)
        assert idx.stats().count == written - 2
        idx.close()
        stop(process)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        os.sync()


def test_calls_cancelled_while_their_write_waits_in_the_queue_leave_no_trace_and_break_nothing(tmp_path):
    """Found by the long stateful run: a call cancelled while its write waited behind another made the writer
    settle a cancelled future, which failed the whole group and could free its rows twice."""
    process, port = launch(tmp_path)
    idx = Index(port)
    big = random_vectors(16384, 256, seed=1)
    small = random_vectors(40, 256, seed=2)
    try:
        writer = threading.Thread(target=idx.upsert, args=([f"big{i}" for i in range(len(big))], big))
        writer.start()
        time.sleep(0.05)
        calls = []
        for number in range(40):
            request = index_pb2.UpsertRequest(model_fingerprint=FP, items=[item(f"small{number}", small[number])])
            calls.append(idx.stub.Upsert.future(iter([request])))
        for call in calls:
            call.cancel()
        writer.join(60)
        after = random_vectors(300, 256, seed=3)
        idx.upsert([f"after{i}" for i in range(300)], after)
        landed = [n for n, call in enumerate(calls) if not call.cancelled() and call.exception() is None]
        stored = {i.id: i for i in idx.get([f"small{n}" for n in range(40)] + [f"after{i}" for i in range(300)]
                                             + [f"big{i}" for i in range(0, 16384, 97)]).items}
        # A client's own cancel races the commit (the proto says so): acknowledged calls are there, the rest
        # landed whole or not at all, and nothing else is.
        small_stored = {i for i in stored if i.startswith("small")}
        assert {f"small{n}" for n in landed} <= small_stored
        assert set(stored) - small_stored == {f"after{i}" for i in range(300)} | {f"big{i}" for i in range(0, 16384, 97)}
        expected = {**{f"small{n}": small[n] for n in range(40)}, **{f"after{i}": after[i] for i in range(300)},
                    **{f"big{i}": big[i] for i in range(16384)}}
        for item_id, stored_item in stored.items():  # no two ids share a row
            assert vectors.from_proto(stored_item.vector).tobytes() == expected[item_id].tobytes()
        assert idx.stats().count == 16384 + 300 + len(small_stored)
    finally:
        idx.close()
        code, output = stop(process)
    assert code == 0
    assert "write group failed" not in output and "Traceback" not in output, output


def test_finished_upsert_calls_leave_their_vectors_behind_in_no_one(tmp_path):
    """grpc keeps finished calls' done-callbacks for a while; one that held the write kept each call's vectors
    (raw and unit, 2 x 48 MiB per 16,384 x 768 message) resident: 2.4 GiB during a 1M ingest by the SDK."""
    from client import SimilarityClient
    process, port = launch(tmp_path / "data", "--index-kind", "ivfpq", "--ivf-nlist", "4096")  # never trains here

    def resident_anon_bytes() -> int:
        with open(f"/proc/{process.pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))
    try:
        data = random_vectors(16384, 768)
        with SimilarityClient(index=f"127.0.0.1:{port}", timeout=600) as client:
            client.upsert([f"warm-{i}" for i in range(16384)], data, fingerprint=FP)
            before = resident_anon_bytes()
            for call in range(8):
                client.upsert([f"c{call}-{i}" for i in range(16384)], data, fingerprint=FP)
        grown = resident_anon_bytes() - before
        assert grown < 300 * 2**20, f"resident memory grew by {grown / 2**20:.0f} MiB over 8 calls of 48 MiB"
    finally:
        stop(process)
