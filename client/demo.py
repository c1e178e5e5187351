"""The write-up's job end to end: index the candidates, query the test split, measure, draw the answers."""

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from client.images import encoded
from client.local_services import start_local_services
from client.results import Hit
from client.sdk import SimilarityClient

OFFLINE_MODEL = "assets/vit-digits"
OFFLINE_DATASET = "assets/digits"
SEED = 42  # the write-up shuffles its candidates with seed 42
MAX_QUERIES_PER_SEARCH = 1024
CELL = 128


@dataclass(frozen=True)
class DemoOptions:
    model: str = OFFLINE_MODEL
    dataset: str = OFFLINE_DATASET
    embedder: str | None = None
    index: str | None = None
    num_candidates: int | None = None
    num_queries: int | None = None
    k: int = 5
    shown: int = 5
    image_column: str = "image"
    label_column: str = "labels"
    out: Path = Path("demo-out")


@dataclass(frozen=True)
class DemoResult:
    precision_at_k: float
    queries: int
    candidates: int
    grid_path: Path


def precision_at_k(query_labels: list[str], hits: list[list[Hit]], k: int) -> float:
    """Mean over queries of the share of the top-k candidates that carry the query's label."""
    shares = [sum(h.metadata.get("label") == label for h in found[:k]) / k for label, found in zip(query_labels, hits)]
    return float(np.mean(shares))


def as_label(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def draw_grid(query_images: list[Image.Image], query_labels: list[str], hits: list[list[Hit]],
              candidate_image, path: Path) -> None:
    """Each query in the first column, its top-k to the right, with label and score under each."""
    columns = 1 + max(len(found) for found in hits)
    caption = 28
    grid = Image.new("RGB", (columns * CELL, len(query_images) * (CELL + caption)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (image, label, found) in enumerate(zip(query_images, query_labels, hits)):
        top = row * (CELL + caption)
        cells = [(image, f"query, label {label}")] + [
            (candidate_image(hit.id), f"{hit.metadata.get('label', '?')}  {hit.score:.3f}") for hit in found]
        for column, (picture, text) in enumerate(cells):
            grid.paste(picture.convert("RGB").resize((CELL - 8, CELL - 8)), (column * CELL + 4, top + 4))
            draw.text((column * CELL + 6, top + CELL), text, fill="black" if column else "blue")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def run_demo(options: DemoOptions, say=print) -> DemoResult:
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    dataset = load_dataset(options.dataset)
    candidates = dataset["train"].shuffle(seed=SEED)
    if options.num_candidates:
        candidates = candidates.select(range(min(options.num_candidates, len(candidates))))
    queries = dataset["test"]
    if options.num_queries:
        queries = queries.select(range(min(options.num_queries, len(queries))))

    data_dir = Path(tempfile.mkdtemp(prefix="imgsim-demo-index-"))
    services = None
    try:
        embedder, index = options.embedder, options.index
        if not (embedder and index):
            say(f"starting local services: embedder ({options.model}) and index (data in {data_dir})")
            services = start_local_services(options.model, data_dir, options.out / "logs")
            embedder = embedder or services.services[1].address
            index = index or services.services[0].address
        with SimilarityClient(embedder=embedder, index=index) as client:
            info = client.model_info()
            say(f"model {info.model_id}: dimension {info.dimension}, {info.device}/{info.dtype}, "
                f"fingerprint {info.fingerprint}")
            started = time.monotonic()
            report = client.index_dataset(candidates, options.image_column, options.label_column, batch_size=64)
            say(f"indexed {report.indexed} candidates in {time.monotonic() - started:.1f} s"
                + (f", {len(report.failed)} failed" if report.failed else ""))

            raw = queries.cast_column(options.image_column, ImageFeature(decode=False))
            query_labels = [str(label) for label in queries[options.label_column]]
            started = time.monotonic()
            vectors = client.embed([encoded(image) for image in raw[options.image_column]])
            hits: list[list[Hit]] = []
            for start in range(0, len(vectors), MAX_QUERIES_PER_SEARCH):
                hits += client.search_vectors(vectors[start:start + MAX_QUERIES_PER_SEARCH], k=options.k)
            say(f"searched {len(vectors)} queries in {time.monotonic() - started:.1f} s")

        for label, found in list(zip(query_labels, hits))[:options.shown]:
            say(f"Query label: {as_label(label)}")
            say(f"Top {options.k} candidate labels: {[as_label(h.metadata.get('label', '?')) for h in found]}")
        score = precision_at_k(query_labels, hits, options.k)
        say(f"Mean precision@{options.k} over {len(hits)} test queries with {len(candidates)} candidates: {score:.4f}")

        shown = min(options.shown, len(hits))
        grid_path = options.out / "results.png"
        draw_grid([queries[i][options.image_column] for i in range(shown)], query_labels[:shown], hits[:shown],
                  lambda item_id: candidates[int(item_id)][options.image_column], grid_path)
        say(f"wrote {grid_path}")
        return DemoResult(score, len(hits), len(candidates), grid_path)
    finally:
        if services:
            services.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
