"""The index service and the client run with torch and transformers absent: each deploys on its own."""

import subprocess
import sys
import textwrap

from conftest import ROOT

BLOCK_HEAVY_IMPORTS = """
import importlib.abc, sys

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, Absent())
"""

INDEX_AND_CLIENT_WORK = """
import numpy as np
from client import SimilarityClient
from client.cli import build_parser
from index_service.config import IndexConfig
from index_service.server import create_server

running = create_server(IndexConfig(data_dir=__import__("pathlib").Path(sys.argv[1])))
rng = np.random.default_rng(0)
candidates = rng.standard_normal((20, 16)).astype(np.float32)
with SimilarityClient(index=f"127.0.0.1:{running.port}") as client:
    client.upsert([f"c{i}" for i in range(20)], candidates, fingerprint="abc")
    hits = client.search_vectors(candidates[3], k=2, fingerprint="abc")[0]
    assert hits[0].id == "c3", hits
build_parser().parse_args(["stats", "--index", "127.0.0.1:1"])
running.stop(0)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
assert not heavy, heavy
print("ok without torch")
"""


def test_index_service_and_client_work_with_torch_and_transformers_absent(tmp_path):
    script = BLOCK_HEAVY_IMPORTS + textwrap.dedent(INDEX_AND_CLIENT_WORK)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ok without torch" in done.stdout


def test_the_blocker_really_blocks_torch():
    done = subprocess.run([sys.executable, "-c", BLOCK_HEAVY_IMPORTS + "import torch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "blocked by the test" in done.stderr


def test_client_loads_datasets_without_importing_torch():
    script = textwrap.dedent("""
        import sys
        from datasets import load_dataset
        import client
        from imgsim.assets import DEFAULT_DATASET
        rows = load_dataset(DEFAULT_DATASET, split="test").select(range(3))
        image = rows[0]["image"]
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
