"""Each part installs and runs alone: fresh venvs with only `.[client]`, `.[index]` or `.[embedder]` from the
project's wheel (tests/fresh_installs.py), each running its own command against real services."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from client import SimilarityClient
from client.local_services import free_port
from conftest import png_bytes
from imgsim.healthcheck import is_serving

SERVER_ONLY = {"client": ("torch", "transformers", "faiss", "prometheus_client"),
               "index": ("torch", "transformers", "torchvision"),
               "embedder": ("faiss",)}


def installed(fresh_installs, part: str):
    install = fresh_installs.installs[part].wait()
    assert install.returncode == 0, f"pip install '.[{part}]' failed:\n{install.log}"
    return install


def run(install, *command, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(install.bin(command[0])), *command[1:]], capture_output=True, text=True,
                          timeout=timeout, cwd=install.venv)  # not the repository: only what was installed


def serving(process: subprocess.Popen, address: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not is_serving(address, timeout=0.5):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"{address} did not report SERVING"
        time.sleep(0.2)


@pytest.mark.parametrize("part", list(SERVER_ONLY))
def test_a_part_installs_without_what_only_other_parts_need(fresh_installs, part):
    install = installed(fresh_installs, part)
    found = run(install, "python", "-c", "import importlib.util as u, sys; print(','.join(m for m in sys.argv[1:] "
                "if u.find_spec(m)))", *SERVER_ONLY[part])
    assert found.returncode == 0 and found.stdout.strip() == "", (part, found.stdout, found.stderr)


def test_the_client_alone_runs_its_command_against_real_services(fresh_installs, embedder, index, tmp_path):
    install = installed(fresh_installs, "client")
    assert run(install, "imgsim", "--help").returncode == 0
    folder = tmp_path / "photos"
    for label, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (folder / label).mkdir(parents=True)
        for n in range(3):
            shade = tuple(max(0, c - 30 * n) for c in colour)
            (folder / label / f"{n}.png").write_bytes(png_bytes(Image.new("RGB", (32, 32), shade)))
    addresses = ["--embedder", f"127.0.0.1:{embedder.port}", "--index", f"127.0.0.1:{index.port}"]
    indexed = run(install, "imgsim", "index", str(folder), "--collection", "photos", "--create", *addresses)
    assert indexed.returncode == 0, indexed.stderr
    found = run(install, "imgsim", "search", str(folder / "red" / "1.png"), "--collection", "photos", "--k", "1",
                *addresses)
    assert found.returncode == 0, found.stderr
    best = json.loads(found.stdout)["hits"][0]
    assert best["id"] == "red/1.png" and best["score"] > 0.9999 and best["metadata"]["label"] == "red"


def test_the_index_alone_starts_serves_and_stops(fresh_installs, tmp_path):
    install = installed(fresh_installs, "index")
    port = free_port()
    process = subprocess.Popen([str(install.bin("imgsim-index")), "--port", str(port), "--data-dir",
                                str(tmp_path / "data")], cwd=install.venv, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        serving(process, f"127.0.0.1:{port}")
        vectors = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
        with SimilarityClient(index=f"127.0.0.1:{port}") as client:
            client.upsert([f"v{i}" for i in range(50)], vectors, fingerprint="fp")
            assert client.search_vectors(vectors[7], k=1, fingerprint="fp")[0][0].id == "v7"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_the_embedder_alone_serves_the_packaged_default_model(fresh_installs, embedder):
    install = installed(fresh_installs, "embedder")
    assert run(install, "imgsim-embedder", "--help").returncode == 0
    port = free_port()
    process = subprocess.Popen([str(install.bin("imgsim-embedder")), "--port", str(port), "--dtype", "float32"],
                               cwd=install.venv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        serving(process, f"127.0.0.1:{port}", timeout=300)
        with SimilarityClient(embedder=f"127.0.0.1:{port}") as alone, \
                SimilarityClient(embedder=f"127.0.0.1:{embedder.port}") as dev:
            # The model inside the wheel is the repository's: the same fingerprint, the same vectors.
            assert alone.fingerprint == dev.fingerprint
            image = png_bytes(Image.new("RGB", (32, 32), (10, 200, 90)))
            np.testing.assert_allclose(alone.embed(image), dev.embed(image), atol=1e-6)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def test_the_client_alone_says_what_to_install_for_datasets_and_export(fresh_installs, index, tmp_path):
    install = installed(fresh_installs, "client")
    embedder = ["--embedder", "127.0.0.1:1"]
    for command in (["demo", *embedder], ["export", "--out", str(tmp_path / "x.parquet")],
                    ["index", "--dataset", "beans", *embedder]):
        done = run(install, "imgsim", *command, "--index", f"127.0.0.1:{index.port}")
        assert done.returncode == 2 and "pip install 'imgsim[client,datasets]'" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
