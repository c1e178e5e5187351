"""Load testing: the ghz files are real, and `imgsim loadtest` runs them at 32-way concurrency with no errors."""

import base64
import json

import numpy as np
import pytest

from client import SimilarityClient
from client.cli import main as imgsim
from client.loadtest import find_method, load_requests
from conftest import ROOT, SHIPPED_MODEL

LOADTEST = ROOT / "loadtest"


def test_the_search_data_matches_the_shipped_model():
    from conftest import served_info

    info = served_info(SHIPPED_MODEL)
    search = json.loads((LOADTEST / "data" / "search.json").read_text())
    assert search["model_fingerprint"] == info.fingerprint, "rerun python loadtest/make_data.py"
    vector = np.frombuffer(base64.b64decode(search["queries"][0]["float32_le"]), dtype="<f4")
    assert vector.shape == (info.dimension,)


@pytest.mark.parametrize("name", ["embed", "embed-stream", "search"])
def test_each_ghz_config_names_a_real_method_and_parsable_data(name):
    config = json.loads((LOADTEST / f"ghz-{name}.json").read_text())
    assert (ROOT / config["protoset"]).exists() and config["insecure"] is True
    method = find_method(config["call"])
    requests = load_requests(method, ROOT / config["data-file"])
    assert requests and all(r.ByteSize() > 0 for r in requests)
    assert config["concurrency"] == 32


def test_the_protoset_describes_both_services():
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString((LOADTEST / "imgsim.protoset").read_bytes()).file
    services = {f"{f.package}.{s.name}" for f in files for s in f.service}
    assert services == {"imgsim.v1.Embedder", "imgsim.v1.Index"}


def test_loadtest_of_search_at_32_way_concurrency_has_no_errors(embedder, index, digits, capsys):
    with SimilarityClient(embedder=f"127.0.0.1:{embedder.port}", index=f"127.0.0.1:{index.port}") as client:
        client.index_dataset(digits["train"].select(range(300)), progress=False)
    with pytest.raises(SystemExit) as exited:
        imgsim(["loadtest", f"127.0.0.1:{index.port}", "--call", "imgsim.v1.Index/Search", "-D",
                str(LOADTEST / "data" / "search.json"), "-c", "32", "-n", "3000"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "  Count:        3000" in out
    assert "  [OK]   3000 responses" in out
    assert "Requests/sec:" in out and "99 % in" in out


@pytest.mark.parametrize("call, data", [("imgsim.v1.Embedder/Embed", "embed.json"),
                                        ("imgsim.v1.Embedder.EmbedStream", "embed_stream.json")])
def test_loadtest_of_the_embedder_calls_has_no_errors(embedder, call, data, capsys):
    with pytest.raises(SystemExit) as exited:
        imgsim(["loadtest", f"127.0.0.1:{embedder.port}", "--call", call, "-D", str(LOADTEST / "data" / data),
                "-c", "32", "-n", "200"])
    assert exited.value.code == 0
    assert "  [OK]   200 responses" in capsys.readouterr().out


def test_loadtest_counts_errors_by_status_code_and_fails(index, tmp_path, capsys):
    bad = json.loads((LOADTEST / "data" / "search.json").read_text())
    bad["k"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit) as exited:
        imgsim(["loadtest", f"127.0.0.1:{index.port}", "--call", "imgsim.v1.Index/Search", "-D",
                str(tmp_path / "bad.json"), "-c", "4", "-n", "8"])
    assert exited.value.code == 1
    assert "  [INVALID_ARGUMENT]   8 responses" in capsys.readouterr().out
