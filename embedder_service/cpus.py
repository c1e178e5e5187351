"""How many CPUs this process may really use: what torch's thread pool should be sized to.

torch sizes its pool to the host's cores, ignoring the CPU affinity and the container's CPU quota: an
embedder limited to 2 CPUs on a 64-core node would run 64 threads in 2 CPUs' worth of time slices, and
three replicas without limits on one small host would each take every core.
"""

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def quota_cpus(cgroup: Path = CGROUP) -> float | None:
    """The cgroup's CPU quota in CPUs (v2 cpu.max, else v1 cfs files); None when unlimited or unknown."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = CGROUP) -> tuple[int, str]:
    """(CPUs, why): the affinity mask, lowered to the cgroup quota (rounded up) when one is set."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    quota = quota_cpus(cgroup)
    if quota is not None and math.ceil(quota) < allowed:
        return max(1, math.ceil(quota)), f"the CPU quota of {quota:g} CPUs"
    return allowed, f"{allowed} CPUs in this process's affinity"
