"""torch's thread pool is sized to the CPUs the embedder may use, not the host's cores (embedder_service/cpus.py),
read from cgroup files written here in the layouts of cgroup v2 and v1."""

import os
import subprocess
import sys

from conftest import ROOT
from embedder_service.cpus import quota_cpus, usable_cpus


def test_a_cgroup_v2_quota_lowers_the_thread_count(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert quota_cpus(tmp_path) == 1.5
    affinity = len(os.sched_getaffinity(0))
    threads, why = usable_cpus(tmp_path)
    assert threads == min(affinity, 2) and ("quota" in why or affinity <= 2)


def test_no_quota_means_the_affinity(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota_cpus(tmp_path) is None
    assert usable_cpus(tmp_path)[0] == len(os.sched_getaffinity(0))
    assert quota_cpus(tmp_path / "missing") is None


def test_a_cgroup_v1_quota_is_read_too(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cpus(tmp_path) == 0.5 and usable_cpus(tmp_path)[0] == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert quota_cpus(tmp_path) is None


def test_the_embedder_runs_with_one_thread_per_cpu_its_affinity_allows():
    # taskset pins the service to one CPU: torch alone would still start a thread per host core.
    process = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "embedder_service", "--port", "0",
                                "--dtype", "float32"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = next(line for line in process.stderr if "intra-op threads" in line)
    finally:
        process.terminate()
        process.wait(30)
    assert "torch uses 1 intra-op threads (1 CPUs in this process's affinity)" in line
