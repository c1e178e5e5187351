"""The SDK against real services: add, search, datasets integration, and errors as SDK exceptions."""

import grpc
import numpy as np
import pytest

from client import InvalidArgument, ModelMismatch, SimilarityClient
from conftest import png_bytes, start_index


@pytest.fixture
def client(embedder, index):
    with SimilarityClient(embedder=f"127.0.0.1:{embedder.port}", index=f"127.0.0.1:{index.port}") as opened:
        yield opened


def test_added_images_are_found_first_by_themselves(client, digits):
    images = [digits["train"][i]["image"] for i in range(40)]
    ids = [f"train-{i}" for i in range(40)]
    report = client.add(images, ids, [{"label": str(digits["train"][i]["labels"])} for i in range(40)])
    assert (report.inserted, report.replaced, report.count) == (40, 0, 40)
    found = client.search(images[:10], k=3)
    assert [hits[0].id for hits in found] == ids[:10]
    assert all(hits[0].score == pytest.approx(1.0, abs=1e-4) for hits in found)
    single = client.search(images[5], k=2)
    assert single[0].id == "train-5" and len(single) == 2


def test_search_filter_restricts_hits_to_the_asked_labels(client, digits):
    rows = digits["train"].select(range(100))
    client.add(list(rows["image"]), [str(i) for i in range(100)], [{"label": str(x)} for x in rows["labels"]])
    hits = client.search(rows[0]["image"], k=10, where={"label": ["3"]})
    assert hits and all(h.metadata["label"] == "3" for h in hits)


def test_embedding_fn_works_with_dataset_map_batched_as_in_the_write_up(client, digits):
    subset = digits["test"].select(range(20))
    mapped = subset.map(client.embedding_fn(), batched=True, batch_size=8)
    embeddings = np.array(mapped["embeddings"], dtype=np.float32)
    assert embeddings.shape == (20, client.model_info().dimension)
    np.testing.assert_allclose(embeddings, client.embed(list(subset["image"])), rtol=1e-5, atol=1e-6)


def test_index_dataset_streams_every_row_with_its_label_name_and_source(client, digits):
    subset = digits["train"].shuffle(seed=42).select(range(130))
    report = client.index_dataset(subset, label_column="labels", batch_size=32, progress=False)
    assert report.indexed == 130 and report.failed == []
    assert client.stats().count == 130
    hit = client.search(subset[17]["image"], k=1)[0]
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    assert hit.metadata["label"] == digits["train"].features["labels"].int2str(subset[17]["labels"])
    # The source names the row as loaded, not its place after shuffle and select.
    source_row = int(hit.metadata["source"].rsplit("/", 1)[1])
    assert source_row != 17 and digits["train"][source_row]["image"].tobytes() == subset[17]["image"].tobytes()


def test_embed_of_a_bad_image_raises_the_sdk_exception_with_its_status_code(client):
    with pytest.raises(InvalidArgument) as caught:
        client.embed([b"not an image"])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a recognised image format" in str(caught.value)


def test_queries_from_another_model_raise_model_mismatch(client, digits):
    client.add([digits["train"][0]["image"]], ["a"])
    query = client.embed(digits["train"][1]["image"])
    with pytest.raises(ModelMismatch) as caught:
        client.search_vectors(query, k=1, fingerprint="0" * 32)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_index_dataset_keeps_good_rows_and_reports_bad_ones(client, digits, tmp_path):
    from datasets import Dataset, Features, Image, Value

    good = png_bytes(digits["train"][0]["image"])
    table = {"image": [{"bytes": good, "path": None}, {"bytes": b"garbage", "path": None}],
             "labels": ["0", "1"]}
    dataset = Dataset.from_dict(table, features=Features({"image": Image(), "labels": Value("string")}))
    report = client.index_dataset(dataset, progress=False)
    assert report.indexed == 1
    assert [where for where, _ in report.failed] == ["dataset/split row 1"]
    assert "not a recognised image format" in report.failed[0][1]


def test_client_spreads_over_several_embedder_replicas_and_still_answers(embedder, tmp_path, digits):
    index = start_index(tmp_path / "replicas")
    try:
        address = f"127.0.0.1:{embedder.port}"
        with SimilarityClient(embedder=[address, address], index=f"127.0.0.1:{index.port}") as client:
            assert client.embed(digits["test"][0]["image"]).shape == (96,)
    finally:
        index.stop(0)
