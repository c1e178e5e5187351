"""Soak: ~10k mixed good and bad requests; memory settles, and no thread or file descriptor leaks."""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from client.local_services import start_local_services
from conftest import SHIPPED_MODEL, png_bytes
from imgsim import vectors
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc, index_pb2, index_pb2_grpc

ROUNDS = 5
CALLS_PER_ROUND = 2000


def footprint(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def test_mixed_good_and_bad_traffic_leaves_memory_threads_and_fds_flat(tmp_path, digits):
    good_images = [png_bytes(digits["test"][i]["image"]) for i in range(16)]
    rng = np.random.default_rng(0)
    with start_local_services(str(SHIPPED_MODEL), tmp_path / "data", tmp_path / "logs") as services:
        index_address, embedder_address = (s.address for s in services.services)
        pids = {"index": services.services[0].process.pid, "embedder": services.services[1].process.pid}
        with grpc.insecure_channel(embedder_address) as e_channel, grpc.insecure_channel(index_address) as i_channel:
            embedder = embedder_pb2_grpc.EmbedderStub(e_channel)
            index = index_pb2_grpc.IndexStub(i_channel)
            fingerprint = embedder.GetModelInfo(embedder_pb2.GetModelInfoRequest()).model_fingerprint
            query = vectors.to_proto(rng.standard_normal(96).astype(np.float32))

            def one_call(n: int) -> str:
                kind = n % 8
                try:
                    if kind == 0:
                        embedder.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=good_images[n % 16])]))
                    elif kind == 1:
                        embedder.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=os.urandom(200))]))
                    elif kind == 2:
                        embedder.Embed(embedder_pb2.EmbedRequest())
                    elif kind == 3:
                        index.Upsert(iter([index_pb2.UpsertRequest(model_fingerprint=fingerprint, items=[
                            index_pb2.Item(id=f"id-{n % 500}", vector=query, metadata={"n": str(n)})])]))
                    elif kind == 4:
                        index.Upsert(iter([index_pb2.UpsertRequest(model_fingerprint="other", items=[
                            index_pb2.Item(id="x", vector=query)])]))
                    elif kind == 5:
                        index.Search(index_pb2.SearchRequest(model_fingerprint=fingerprint, k=5, queries=[query]))
                    elif kind == 6:
                        index.Search(index_pb2.SearchRequest(model_fingerprint=fingerprint, k=0, queries=[query]))
                    else:
                        list(embedder.EmbedStream(iter([embedder_pb2.EmbedStreamRequest(images=[
                            embedder_pb2.Image(data=good_images[n % 16]), embedder_pb2.Image(data=b"bad")])])))
                    return "OK"
                except grpc.RpcError as err:
                    return err.code().name

            samples = []
            with ThreadPoolExecutor(8) as pool:
                for round_number in range(ROUNDS):
                    codes = list(pool.map(one_call, range(round_number * CALLS_PER_ROUND,
                                                          (round_number + 1) * CALLS_PER_ROUND)))
                    samples.append({name: footprint(pid) for name, pid in pids.items()})
    assert set(codes) == {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}
    assert "INTERNAL" not in codes
    warm = samples[1]  # after the first round: caches, pools and arenas have grown to their working size
    for name in pids:
        growth_kb = samples[-1][name]["rss_kb"] - warm[name]["rss_kb"]
        print(f"{name}: rss {[s[name]['rss_kb'] // 1024 for s in samples]} MB, "
              f"threads {[s[name]['threads'] for s in samples]}, fds {[s[name]['fds'] for s in samples]}")
        assert growth_kb < max(16 * 1024, 0.1 * warm[name]["rss_kb"]), f"{name} grew {growth_kb} kB after warm-up"
        assert samples[-1][name]["threads"] <= warm[name]["threads"] + 2
        assert samples[-1][name]["fds"] <= warm[name]["fds"] + 2
