"""Faults survived: an embedder killed mid-stream, an index restarted under search load, a full disk."""

import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from client import ImgsimError, Overloaded, SimilarityClient, Unavailable
from client.local_services import free_port
from conftest import ROOT, SHIPPED_MODEL, png_bytes, start_index
from imgsim.healthcheck import is_serving


def start(module: str, port: int, *args: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", module, "--port", str(port), *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not is_serving(f"127.0.0.1:{port}", timeout=0.5):
        assert process.poll() is None and time.monotonic() < deadline, f"{module} did not start"
        time.sleep(0.05)
    return process


def test_an_embedder_killed_mid_stream_is_retried_and_the_stream_completes(digits):
    port = free_port()
    # float32 both times: the oracle below is float32, and --dtype auto may choose by timing.
    embedder = start("embedder_service", port, "--max-batch-size", "2", "--max-batch-delay-ms", "0", "--dtype",
                     "float32")
    images = [png_bytes(digits["train"][i % 1438]["image"]) for i in range(1500)]
    outcome = {}

    def embed_all():
        with SimilarityClient(embedder=f"127.0.0.1:{port}", stream_retry_s=60) as client:
            outcome["vectors"] = client.embed(images)

    caller = threading.Thread(target=embed_all)
    caller.start()
    try:
        time.sleep(1.0)
        assert caller.is_alive(), "the stream ended before the kill: make it longer"
        embedder.send_signal(signal.SIGKILL)
        embedder.wait()
        time.sleep(1.0)
        embedder = start("embedder_service", port, "--dtype", "float32")
        caller.join(120)
    finally:
        embedder.kill()
        embedder.wait()
    vectors = outcome["vectors"]
    assert vectors.shape == (1500, 96)
    from embedder_service.model import EmbeddingModel
    from embedder_service.preprocess import Limits, ReferencePreprocessor
    model = EmbeddingModel(str(SHIPPED_MODEL), dtype="float32")
    preprocess = ReferencePreprocessor(model.processor, Limits(10**9, 1 << 34))
    sample = [0, 750, 1499]
    expected = model.embed(np.stack([preprocess(images[i], "x") for i in sample]))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors[sample], expected, atol=1e-4)


def test_an_embedder_that_stays_down_gives_a_clear_error(digits):
    port = free_port()
    with SimilarityClient(embedder=f"127.0.0.1:{port}", stream_retry_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            client.embed([png_bytes(digits["test"][0]["image"])])
    assert "embedder: UNAVAILABLE" in str(caught.value)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 15


def test_searches_during_an_index_restart_fail_only_with_unavailable_then_recover(tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    index = start("index_service", port, "--data-dir", str(tmp_path))
    candidates = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    with SimilarityClient(index=address) as client:
        client.upsert([f"c{i}" for i in range(2000)], candidates, fingerprint="fp")
    codes: Counter = Counter()
    stop = threading.Event()

    def search_load():
        with SimilarityClient(index=address, timeout=5) as client:
            while not stop.is_set():
                try:
                    hits = client.search_vectors(candidates[7], k=3, fingerprint="fp")[0]
                    codes["OK" if hits[0].id == "c7" else "WRONG"] += 1
                except ImgsimError as err:
                    codes[err.code.name] += 1
                    time.sleep(0.01)

    load = threading.Thread(target=search_load)
    load.start()
    try:
        time.sleep(0.5)
        index.send_signal(signal.SIGKILL)
        index.wait()
        time.sleep(1.5)
        ok_before_restart = codes["OK"]
        index = start("index_service", port, "--data-dir", str(tmp_path))
        deadline = time.monotonic() + 60  # a busy machine may take a while to start it: wait for answers
        while codes["OK"] <= ok_before_restart + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        load.join(30)
        index.terminate()
        index.wait(15)
    assert codes["OK"] > ok_before_restart > 0  # served before, and again after
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert codes["UNAVAILABLE"] > 0  # the outage was seen, not hidden


def fill_until_full(client: SimilarityClient, dim: int = 64) -> tuple[list[str], np.ndarray]:
    """Upserts batches until the store refuses one; returns what was acknowledged."""
    rng = np.random.default_rng(1)
    acknowledged, vectors = [], []
    for batch in range(10_000):
        chunk = rng.standard_normal((200, dim)).astype(np.float32)
        ids = [f"b{batch}-{i}" for i in range(200)]
        try:
            client.upsert(ids, chunk, fingerprint="fp")
        except Overloaded as err:
            assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "nothing of this write was kept" in str(err)
            return acknowledged, np.concatenate(vectors)
        acknowledged += ids
        vectors.append(chunk)
    raise AssertionError("the store never filled up")


def check_full_store_behaviour(address: str, kind_note: str) -> None:
    with SimilarityClient(index=address, timeout=10) as client:
        acknowledged, vectors = fill_until_full(client)
        assert len(acknowledged) > 0, kind_note
        assert client.stats().count == len(acknowledged)  # the refused write left nothing behind
        hits = client.search_vectors(vectors[5], k=1, fingerprint="fp")[0]  # searches still served
        assert hits[0].id == acknowledged[5]
        stored = client.get(acknowledged[-3:])
        np.testing.assert_array_equal(stored[acknowledged[-1]].vector, vectors[-1])


def test_a_full_store_refuses_writes_whole_and_keeps_serving_searches(tmp_path):
    index = start_index(tmp_path / "quota", max_storage_bytes=600_000)
    try:
        check_full_store_behaviour(f"127.0.0.1:{index.port}", "quota")
    finally:
        index.stop(0)
    reopened = start_index(tmp_path / "quota", max_storage_bytes=600_000)
    try:
        with SimilarityClient(index=f"127.0.0.1:{reopened.port}") as client:
            assert client.stats().count > 0
    finally:
        reopened.stop(0)


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB file system (tmpfs), where the machine lets this test mount one."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_a_full_disk_refuses_writes_whole_and_keeps_serving_searches(small_disk, kind):
    port = free_port()
    index = start("index_service", port, "--data-dir", str(small_disk / "data"), "--index-kind", kind,
                  "--snapshot-every", "100000000")
    try:
        check_full_store_behaviour(f"127.0.0.1:{port}", kind)
        assert index.poll() is None  # still alive: no crash through the memory map
    finally:
        index.terminate()
        index.wait(30)
