"""Each benchmark script runs end to end at small sizes, so the scripts behind the README's figures keep
working. Only that they run and print their summary is checked here: speed is never judged by a test."""

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT

BENCHES = {
    "wire": (["bench/wire.py"], ["encode_ratio_float_over_bytes"]),
    "overhead": (["bench/overhead.py", "--sizes", "2000", "--calls", "20", "--repeats", "1", "--dim", "64"],
                 ["flat2000_bare_grpc_aio_health_ms", "flat2000_service_raw_stub_ms", "flat2000_inprocess_faiss_ms",
                  "flat2000_inprocess_own_scan_ms", "flat2000_ratio_service_vs_inprocess_faiss", "flat2000_added_ms"]),
    "index": (["bench/index.py", "--quick", "--kinds", "flat,hnsw", "--queries", "20", "--repeats", "1", "--timers"],
              ["flat 20000 recall@10", "hnsw 20000 slowest one-item write in the server #1", "hnsw 20000 RSS per vector (whole process, no snapshot being written)",
               "hnsw 20000 peak RSS (VmHWM, snapshots' copies included)", "flat 20000 restart until SERVING",
               "flat 20000 service vs numpy in-process, single", "flat 20000 service vs the write-up's search, single",
               "hnsw 20000 service vs hnswlib at equal recall, single", "flat 20000 memory bandwidth (array copy, all cores)",
               "flat 20000 numpy scan efficiency, single", "hnsw 20000 at hnsw_ef_search 512, recall@10 / single queries/s"]),
    "compaction": (["bench/compaction.py", "--quick", "--kinds", "flat,hnsw"],
                   ["flat RSS churned / fresh", "hnsw disk churned / fresh", "flat search time churned / fresh"]),
    "ivfpq_sweep": (["bench/ivfpq_sweep.py", "--size", "20000", "--dim", "64", "--nlist", "64", "--pq-m", "16,32",
                     "--nprobe", "8", "--candidates", "100", "--queries", "20"],
                    ["pq_m 16 nprobe 8 candidates 100 recall@10", "pq_m 32 code bytes", "pq_m 32 encoded",
                     "pq_m 32 nprobe 8 candidates 100 ms per single query (codes only, one thread)"]),
    "snapshots": (["bench/snapshots.py", "--quick"],
                  ["ivfpq 50000 x 64, lists copied beside the writes, longest / median one-item write during a snapshot",
                   "ivfpq 50000 x 64, lists copied under the write mutex, snapshot seconds (median of 2)"]),
    "cold_reads": (["bench/cold_reads.py", "--file-rows", "20000", "--repeats", "1"],
                   ["warm_plain_ms_per_1000_rows", "warm_announced_ms_per_1000_rows", "warm_ratio_plain_over_announced"]),
    "client_upsert": (["bench/client_upsert.py", "--vectors", "2000", "--repeats", "1", "--dim", "64"],
                      ["client_cpu_us_per_vector", "upsert_vectors_per_s"]),
    "gpu": (["bench/gpu.py", "--dry-run"],
            ["matmul_peak_tflops", "model_only_bf16_efficiency_vs_matmul_peak", "end_to_end_embedstream_2_streams_images_per_s"]),
    "embedder": (["bench/embedder.py", "--quick", "--images", "8", "--repeats", "1"],
                 ["served_embedstream_images_per_s", "preprocess_speedup_faithful_3000x2000",
                  "draft_shipped32_3000x2000_min_cosine", "ratio_index_dataset_vs_writeup_map",
                  "bare_model_batch32_efficiency_vs_fp32_matmul", "matmul_bf16_gflops",
                  "ratio_runtime_onnxruntime_vs_torch_fp32", "runtime_openvino_min_cosine_to_torch_fp32"]),
}


@pytest.fixture(scope="module")
def runs(request):
    """Every selected bench starts at once, two at a time: they spend much of their time starting processes,
    loading models and waiting for servers, so two side by side take about 0.7x the time of one after the
    other, and speed is not what these tests judge."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    selected.sort(key=lambda name: name not in ("embedder", "index", "gpu"))  # the long ones first
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(run_bench, name) for name in selected}


def run_bench(name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *BENCHES[name][0]], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("name", list(BENCHES))
def test_the_bench_runs_and_prints_its_summary(name, runs):
    done = runs[name].result()
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout.split("\nsummary\n", 1)[-1]
    figures = dict(line.split(": ", 1) for line in summary.splitlines() if ": " in line)
    for key in BENCHES[name][1]:
        assert key in figures, (key, sorted(figures)[:20])
        assert re.match(r"^-?[\d.]+(e[+-]?\d+)?( |$)", figures[key]), (key, figures[key])
