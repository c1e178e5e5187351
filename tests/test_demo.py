"""`imgsim demo` on the offline default, run as a user runs it: real child processes, real output."""

import re
import subprocess
import sys

from PIL import Image

from conftest import ROOT


def test_demo_prints_write_up_style_results_and_precision_of_at_least_0_95(tmp_path):
    out = tmp_path / "demo-out"
    done = subprocess.run([sys.executable, "-m", "client.cli", "demo", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cpu/float32" in done.stdout  # pinned: auto may time bfloat16 faster and change the last digits
    assert re.search(r"^Query label: \d$", done.stdout, re.M)
    assert re.search(r"^Top 5 candidate labels: \[\d, \d, \d, \d, \d\]$", done.stdout, re.M)
    precision = float(re.search(r"Mean precision@5 over 359 test queries with 1438 candidates: ([\d.]+)",
                                done.stdout).group(1))
    assert precision >= 0.95
    with Image.open(out / "results.png") as grid:
        assert grid.size[0] == 6 * 128 and grid.size[1] >= 5 * 128
    assert (out / "logs" / "embedder.log").exists()
