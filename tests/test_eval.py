"""`imgsim eval` and SimilarityClient.evaluate: metrics known by construction, an independent numpy oracle on
the offline default, approximate-vs-exact, reports, comparisons, refusals; real services throughout."""

import json
import subprocess
import sys

import numpy as np
import pytest

from client import InvalidArgument, SimilarityClient
from client.eval_report import bootstrap_difference, read_json
from client.evaluation import per_query, relevance
from conftest import ROOT, SHIPPED_DATASET, png_bytes


def test_per_query_metrics_equal_hand_computed_values():
    relevant = relevance(["a", "b", "c", "d"], [["a", "x", "a"], ["x", "x", "x"], ["x", "c", "x"], ["x"]], k=3)
    scores = per_query(relevant, np.array([2, 4, 1, 0]))
    np.testing.assert_allclose(scores["precision"], [2 / 3, 0, 1 / 3, 0])
    np.testing.assert_allclose(scores["recall"], [1, 0, 1, np.nan])  # no relevant candidate: left out
    np.testing.assert_allclose(scores["ap"], [(1 + 2 / 3) / 2, 0, 0.5, np.nan])
    np.testing.assert_allclose(scores["rr"], [1, 0, 0.5, 0])


@pytest.fixture
def client(embedder, index):
    with SimilarityClient(embedder=f"127.0.0.1:{embedder.port}", index=f"127.0.0.1:{index.port}") as opened:
        yield opened


def image_folder(root, images: dict[str, list]):
    for label, pictures in images.items():
        (root / label).mkdir(parents=True)
        for n, picture in enumerate(pictures):
            (root / label / f"{n}.png").write_bytes(png_bytes(picture))
    return root


def test_metrics_through_the_services_equal_those_known_by_construction(client, digits, tmp_path):
    # Each query's exact copy is among the candidates, so it is every query's top-1 (cosine 1). D's copy is
    # labelled "a": labels a, b, c, d hold 2, 1, 1 and 0 candidates.
    a, b, c, d = (digits["test"][row]["image"].convert("RGB") for row in (0, 1, 2, 3))
    queries = image_folder(tmp_path / "queries", {"a": [a], "b": [b], "c": [c], "d": [d]})
    candidates = image_folder(tmp_path / "candidates", {"a": [a, d], "b": [b], "c": [c]})
    report = client.evaluate(str(queries), str(candidates), k=1, progress=False)
    flat = report.kind("flat")
    assert (report.query_count, report.candidate_count) == (4, 4)
    assert flat.overall.precision_at_k == pytest.approx(3 / 4)  # d's top-1 carries "a"
    assert flat.overall.recall_at_k == pytest.approx((1 / 2 + 1 + 1) / 3)  # d has nothing to find: left out
    assert flat.overall.map_at_k == pytest.approx(1.0)
    assert flat.overall.mrr == pytest.approx(3 / 4)
    assert flat.per_class["d"].precision_at_k == 0 and flat.confusion["d"] == {"a": 1}
    assert flat.recall_vs_exact == 1.0
    assert [c.name for c in client.list_collections()] == ["default"]  # the scratch collection is gone


def test_precision_on_the_offline_default_equals_numpy_over_exported_vectors(client, digits):
    client.create_collection("digits")
    client.index_dataset(digits["train"], collection="digits", progress=False)
    report = client.evaluate(digits["test"], k=5, collection="digits", progress=False)
    held = list(client.scroll(collection="digits", with_vectors=True))
    candidates = np.stack([item.vector for item in held])
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    labels = np.array([item.metadata["label"] for item in held])
    names = digits["test"].features["labels"].names
    queries = client.embed([row["image"] for row in digits["test"]])
    top = np.argsort(-(queries @ candidates.T), axis=1, kind="stable")[:, :5]
    expected = np.mean(labels[top] == np.array([names[v] for v in digits["test"]["labels"]])[:, None])
    assert report.kind("flat").overall.precision_at_k == pytest.approx(expected, abs=1e-9)
    assert report.kind("flat").overall.precision_at_k == pytest.approx(0.9710, abs=1e-4)  # the demo's figure
    assert report.kind("flat").recall_vs_exact == 1.0
    assert client.stats("digits").count == len(held)  # an existing collection is left as it was


def imgsim_eval(embedder, index, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.cli", "eval", "--dataset", str(SHIPPED_DATASET),
                           "--num-queries", "60", "--embedder", f"127.0.0.1:{embedder.port}", "--index",
                           f"127.0.0.1:{index.port}", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_two_real_runs_compare_side_by_side_with_a_bootstrap_interval(embedder, index, tmp_path):
    first = imgsim_eval(embedder, index, "--k", "5", "--kinds", "flat,lsh", "--json", str(tmp_path / "a.json"),
                        "--html", str(tmp_path / "a.html"), "--png", str(tmp_path / "a.png"))
    assert first.returncode == 0, first.stderr
    assert "Query label:" in first.stdout and "Top 5 candidate labels: [" in first.stdout
    saved = read_json(tmp_path / "a.json")
    assert saved["schema"] == "imgsim-eval/1" and [k["kind"] for k in saved["kinds"]] == ["flat", "lsh"]
    assert saved["leave_one_out"] and saved["query_count"] == 60 and saved["kinds"][0]["recall_vs_exact"] == 1.0
    assert "<svg" in (tmp_path / "a.html").read_text() and (tmp_path / "a.png").stat().st_size > 1000
    second = imgsim_eval(embedder, index, "--k", "5", "--kinds", "hnsw", "--against", str(tmp_path / "a.json"))
    assert second.returncode == 0, second.stderr
    assert "hnsw vs flat:" in second.stdout
    assert "P@5 difference, 95% bootstrap interval (paired over the same queries" in second.stdout


def test_the_bootstrap_interval_finds_a_real_difference_and_none_where_there_is_none():
    rng = np.random.default_rng(1)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(300))}
    better = {q: min(1.0, v + 0.1) for q, v in base.items()}
    low, high, paired = bootstrap_difference(better, base)
    assert paired and 0 < low < high
    low, high, _ = bootstrap_difference(base, dict(base))
    assert low <= 0 <= high


def test_unlabelled_images_and_bad_options_are_refused_in_one_line(embedder, index, client, tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(png_bytes(__import__("PIL.Image").Image.new("RGB", (8, 8))))
    with pytest.raises(InvalidArgument, match="evaluation needs labels"):
        client.evaluate(str(tmp_path / "flat" / "a.png"), progress=False)
    done = imgsim_eval(embedder, index, "--kinds", "flat,annoy")
    assert done.returncode == 2 and "--kinds 'flat,annoy': give some of flat, hnsw, ivfpq, lsh" in done.stderr
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else"}))
    done = imgsim_eval(embedder, index, "--against", str(tmp_path / "other.json"))
    assert done.returncode == 2 and "not an imgsim-eval/1 report" in done.stderr


def test_ctrl_c_stops_cleanly_and_drops_the_scratch_collection(embedder, index, client):
    import signal
    import time
    process = subprocess.Popen([sys.executable, "-m", "client.cli", "eval", "--dataset", str(SHIPPED_DATASET),
                                "--candidates-split", "train", "--kinds", "flat,hnsw,lsh", "--embedder",
                                f"127.0.0.1:{embedder.port}", "--index", f"127.0.0.1:{index.port}"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(c.name.startswith("eval-") for c in client.list_collections()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert [c.name for c in client.list_collections()] == ["default"]


def test_a_bad_file_in_the_folder_is_named_and_left_out_and_the_run_goes_on(client, digits, tmp_path):
    images = {label: [digits["train"][row]["image"].convert("RGB") for row in rows]
              for label, rows in (("a", (0, 1, 2)), ("b", (3, 4, 5)))}
    folder = image_folder(tmp_path / "photos", images)
    (folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    report = client.evaluate(str(folder), k=2, progress=False)
    assert report.query_count == 6 and report.leave_one_out
    assert len(report.failed_images) == 1 and "broken.jpg" in report.failed_images[0]
    assert report.kind("flat").overall.queries == 6
