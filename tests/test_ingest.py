"""Real data in, as a new user brings it: a folder of photos and dataset splits through the `imgsim` command
against real services: ids that name the image, labels, sources, bad files named, resuming, Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from client import SimilarityClient
from client.export import export_collection
from conftest import ROOT, SHIPPED_DATASET, SHIPPED_MODEL, jpeg_bytes, png_bytes, start_embedder
from imgsim.server.config import ServingConfig

CLASSES = ["zero", "one", "two", "three", "four"]


@pytest.fixture(scope="module")
def metered_embedder():
    running = start_embedder(SHIPPED_MODEL, ServingConfig(metrics_port=0))
    yield running
    running.stop(0)


def images_embedded(embedder) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{embedder.metrics_port}/metrics", timeout=5).read().decode()
    line = next(line for line in text.splitlines() if line.startswith("imgsim_embedder_images_total "))
    return float(line.split()[1])


def photos(folder, digits, per_class: int = 10):
    """An ImageFolder layout: one subfolder per class, JPEG and PNG files, and one corrupt file."""
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        rows = [i for i in range(len(digits["train"])) if digits["train"][i]["labels"] == label][:per_class]
        for n, row in enumerate(rows):
            image = digits["train"][row]["image"].convert("RGB").resize((64, 64))
            if n % 2:
                (folder / name / f"{n:03d}.jpg").write_bytes(jpeg_bytes(image, 95))
            else:
                (folder / name / f"{n:03d}.png").write_bytes(png_bytes(image))
    (folder / "three" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return folder


def imgsim(*args, embedder=None, index=None, timeout=300) -> subprocess.CompletedProcess:
    addresses = [*(["--embedder", f"127.0.0.1:{embedder.port}"] if embedder else []),
                 *(["--index", f"127.0.0.1:{index.port}"] if index else [])]
    return subprocess.run([sys.executable, "-m", "client.cli", *args, *addresses], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_a_folder_of_photos_is_indexed_with_folder_labels_and_bad_files_named(tmp_path, digits, metered_embedder,
                                                                              index):
    folder = photos(tmp_path / "photos", digits)
    done = imgsim("index", str(folder), embedder=metered_embedder, index=index)
    assert done.returncode == 1, done.stderr  # one file failed
    assert f"failed: {folder / 'three' / 'broken.jpg'}: " in done.stderr and "Traceback" not in done.stderr
    assert "indexed 50 (50 new, 0 replaced)" in done.stdout and "failed 1" in done.stdout
    with SimilarityClient(index=f"127.0.0.1:{index.port}") as client:
        stored = client.get(["three/000.png", "one/001.jpg"])
        assert stored["three/000.png"].metadata["label"] == "three"
        assert stored["one/001.jpg"].metadata["source"] == str((folder / "one" / "001.jpg").resolve())
        fingerprint = metered_embedder.servicer.info.fingerprint
        assert client.search_vectors(stored["three/000.png"].vector, k=1, fingerprint=fingerprint)[0][0].id == \
            "three/000.png"
        again = imgsim("index", str(folder), embedder=metered_embedder, index=index)
        assert "indexed 50 (0 new, 50 replaced)" in again.stdout  # the same data twice: nothing added
        assert client.stats().count == 50
        (folder / "two" / "002.png").unlink()
        (folder / "two" / "zz-new.png").write_bytes((folder / "two" / "000.png").read_bytes())
        imgsim("index", str(folder), embedder=metered_embedder, index=index)
        found = client.search_vectors(stored["three/000.png"].vector, k=60, fingerprint=fingerprint)[0]
        # The new file is added and nothing is twice; the removed file's item stays until deleted by its id.
        assert len({h.id for h in found}) == len(found) == 51
        assert "two/zz-new.png" in {h.id for h in found} and client.delete(["two/002.png"]) == 1


def test_dataset_splits_go_into_one_collection_without_replacing_each_other(metered_embedder, index):
    for split in ("train", "test"):
        done = imgsim("index", "--dataset", str(SHIPPED_DATASET), "--split", split, "--collection", "digits",
                      "--create", embedder=metered_embedder, index=index)
        assert done.returncode == 0, done.stderr
        assert "0 replaced" in done.stdout
    with SimilarityClient(index=f"127.0.0.1:{index.port}") as client:
        assert client.stats("digits").count == 1797
        assert client.count({"label": "3"}, collection="digits") == 183


@pytest.mark.parametrize("args, words", [
    (["--dataset", str(SHIPPED_DATASET), "--image-column", "img"], "no image column 'img' in the dataset; its "
                                                                    "columns are: image, labels"),
    (["--dataset", str(SHIPPED_DATASET), "--split", "validation"], "has no split 'validation'; its splits are"),
    (["--dataset", "/no/such/dataset"], "cannot load dataset '/no/such/dataset'"),
    (["/no/such/folder"], "/no/such/folder: no such file or folder"),
    ([], "give image paths (files, folders, globs) or --dataset"),
])
def test_index_mistakes_end_with_one_line_and_exit_2(metered_embedder, index, args, words):
    done = imgsim("index", *args, embedder=metered_embedder, index=index)
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_cleanly_and_skip_existing_finishes_without_embedding_again(tmp_path, digits,
                                                                                metered_embedder, index):
    folder = photos(tmp_path / "many", digits, per_class=120)
    (folder / "three" / "broken.jpg").unlink()
    for original in list(folder.rglob("*.*")):  # copies under other names: a run long enough to interrupt
        for copy in range(3):
            (original.parent / f"copy{copy}-{original.name}").write_bytes(original.read_bytes())
    total = sum(1 for _ in folder.rglob("*.*"))
    command = [sys.executable, "-m", "client.cli", "index", str(folder), "--batch-size", "4",
               "--embedder", f"127.0.0.1:{metered_embedder.port}", "--index", f"127.0.0.1:{index.port}"]
    embedded_at_start = images_embedded(metered_embedder)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupt on the embedder's progress, early in the run: the first write lands only after 1,024 images,
    # and waiting for it left so little of the run that a busy machine sometimes let it finish first.
    deadline = time.monotonic() + 60
    while images_embedded(metered_embedder) - embedded_at_start < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted after indexed" in out
    with SimilarityClient(index=f"127.0.0.1:{index.port}") as client:
        held = client.stats().count
        assert 0 < held < total, "the run finished before Ctrl-C: make it longer"
        embedded_before = images_embedded(metered_embedder)
        done = subprocess.run(command + ["--skip-existing"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"skipped {held} already held" in done.stdout
        assert client.stats().count == total
        assert images_embedded(metered_embedder) - embedded_before == total - held  # nothing held embedded again


def test_the_demo_works_in_its_own_collection_and_leaves_others_byte_for_byte_unchanged(
        tmp_path, metered_embedder, index):
    with SimilarityClient(index=f"127.0.0.1:{index.port}") as client:
        client.create_collection("mine")
        import numpy as np
        client.upsert([f"m{i}" for i in range(40)], np.random.default_rng(0).standard_normal((40, 96)),
                      [{"label": "keep"}] * 40, fingerprint="someone-elses-model", collection="mine")
        client.upsert(["d"], np.ones((1, 96)), fingerprint="someone-elses-model")  # and the default collection
        export_collection(client, "mine", tmp_path / "before.parquet", progress=False)
        export_collection(client, "default", tmp_path / "default-before.parquet", progress=False)
    done = imgsim("demo", "--num-queries", "40", "--out", str(tmp_path / "out"), embedder=metered_embedder,
                  index=index)
    assert done.returncode == 0, done.stderr
    assert "Mean precision@5 over 40 test queries" in done.stdout
    with SimilarityClient(index=f"127.0.0.1:{index.port}") as client:
        export_collection(client, "mine", tmp_path / "after.parquet", progress=False)
        export_collection(client, "default", tmp_path / "default-after.parquet", progress=False)
        assert client.stats("imgsim-demo").count == 1438
    import pyarrow.parquet as pq
    for name in ("", "default-"):
        before = pq.read_table(tmp_path / f"{name}before.parquet").to_pydict()
        after = pq.read_table(tmp_path / f"{name}after.parquet").to_pydict()
        assert before == after


def test_a_streaming_dataset_is_indexed(metered_embedder, index):
    from datasets import load_dataset

    stream = load_dataset(str(SHIPPED_DATASET), split="test", streaming=True)
    with SimilarityClient(embedder=f"127.0.0.1:{metered_embedder.port}", index=f"127.0.0.1:{index.port}") as client:
        report = client.index_dataset(stream, progress=False)
        assert report.indexed == 359 and client.stats().count == 359
        sevens = sum(1 for row in load_dataset(str(SHIPPED_DATASET), split="test") if row["labels"] == 7)
        assert client.count({"label": "7"}) == sevens


def test_index_uses_the_environment_for_addresses(metered_embedder, index, tmp_path, digits):
    folder = photos(tmp_path / "p", digits, per_class=2)
    env = {**os.environ, "IMGSIM_EMBEDDER_ADDRESS": f"127.0.0.1:{metered_embedder.port}",
           "IMGSIM_INDEX_ADDRESS": f"grpc://127.0.0.1:{index.port}"}
    done = subprocess.run([sys.executable, "-m", "client.cli", "index", str(folder / "one")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr and "indexed 2" in done.stdout


def test_where_clauses_are_parsed_and_a_bad_one_ends_in_one_line(metered_embedder, index, tmp_path, digits):
    assert imgsim("index", str(photos(tmp_path / "photos", digits, per_class=2)), "--collection", "p", "--create",
                  embedder=metered_embedder, index=index).returncode == 1  # the corrupt file
    counted = imgsim("count", "--collection", "p", "--where", "label=one,two", "--where", "label!=two", index=index)
    assert counted.returncode == 0 and counted.stdout == "2\n", counted.stderr
    for clause, words in [("label~one", "--where 'label~one': write KEY=V1,V2"),
                          ("label>one", "--where 'label>one': > compares numbers, and 'one' is not one")]:
        done = imgsim("count", "--collection", "p", "--where", clause, index=index)
        assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
