"""A Search runs in one of two places: small searches of memory on the server's event loop (no hand-off to a
worker thread), the rest in the worker pool. Both answer alike, and the event loop never waits for a writer."""

import threading
import time

import pytest

from conftest import start_index
from imgsim.healthcheck import is_serving
from index_service import collection as collection_module
from index_service.locks import Busy, ReadWriteLock
from indexing import Index, exact_top_k, ids_as_numbers, random_vectors


def test_a_shared_lock_asked_for_without_waiting_is_refused_while_a_writer_holds_or_waits_for_it():
    lock = ReadWriteLock()
    with lock.shared(wait=False):
        pass
    writer_in, release = threading.Event(), threading.Event()

    def write():
        with lock.exclusive():
            writer_in.set()
            release.wait(10)
    writer = threading.Thread(target=write)
    writer.start()
    assert writer_in.wait(10)
    with pytest.raises(Busy):
        with lock.shared(wait=False):
            pass
    release.set()
    writer.join(10)
    with lock.shared(wait=False):  # free again
        pass
    # A writer that waits (behind a reader) also turns readers that will not wait away.
    waiting = threading.Event()
    with lock.shared():
        writer = threading.Thread(target=lambda: (waiting.set(), lock.exclusive().__enter__()))
        writer.start()
        waiting.wait(10)
        deadline = time.monotonic() + 10
        while not lock._writers_waiting:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(Busy):
            with lock.shared(wait=False):
                pass


def test_which_searches_count_as_quick(tmp_path):
    running = start_index(tmp_path / "data", index_kind="flat")
    idx = Index(running.port)
    try:
        idx.upsert([f"v{i}" for i in range(300)], random_vectors(300, 64))
        flat = running.servicer.registry.get("")
        assert flat.quick_search(1)  # 300 x 64 floats
        assert not flat.quick_search(collection_module.QUICK_SEARCH_FLOATS // (300 * 64) + 1)  # too many queries
        assert not flat.quick_search(1, {"hnsw_ef_search": 0})  # out of range: the pool's path reports it
        running.servicer.registry.create("graph", "hnsw", {"hnsw_m": 16}, "test-model", 64)
        assert not running.servicer.registry.get("graph").quick_search(1)  # one core per search: the pool
        running.servicer.registry.create("codes", "ivfpq", {"ivf_nlist": 16, "pq_m": 8}, "test-model", 64)
        assert not running.servicer.registry.get("codes").quick_search(1)  # re-ranks from the vector file
    finally:
        idx.close()
        running.stop(0)


def test_quick_and_pooled_searches_answer_alike_and_the_loop_never_waits_for_a_writer(tmp_path, monkeypatch):
    running = start_index(tmp_path / "data", index_kind="flat")
    idx = Index(running.port)
    address = f"127.0.0.1:{running.port}"
    try:
        candidates, queries = random_vectors(2000, 32, seed=1), random_vectors(20, 32, seed=2)
        idx.upsert([f"v{i}" for i in range(len(candidates))], candidates)
        collection = running.servicer.registry.get("")
        assert collection.quick_search(1)
        quick = [idx.search(q, 10) for q in queries]
        monkeypatch.setattr(collection_module, "QUICK_SEARCH_FLOATS", 0)
        assert not collection.quick_search(1)
        pooled = [idx.search(q, 10) for q in queries]
        assert quick == pooled
        expected, _ = exact_top_k(candidates, queries, 10)
        assert [ids_as_numbers(found)[0] for found in quick] == expected.tolist()
        monkeypatch.undo()

        # A writer holds the collection: a quick search must not wait on the event loop (health, other calls
        # go on) but in the pool, and answer once the writer is done.
        answers, held, release = [], threading.Event(), threading.Event()

        def hold():
            with collection.lock.exclusive():
                held.set()
                release.wait(30)
        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(10)
        searcher = threading.Thread(target=lambda: answers.append(idx.search(queries[0], 10, timeout=30)))
        searcher.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert is_serving(address, timeout=1.0)  # the loop is free
        assert time.monotonic() - started < 1.0
        assert answers == []  # the search waits for the writer
        release.set()
        holder.join(10)
        searcher.join(30)
        assert answers == [quick[0]]
    finally:
        release.set()
        idx.close()
        running.stop(0)
