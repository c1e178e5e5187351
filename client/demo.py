"""The write-up's job end to end: index the candidates, query the test split, measure, draw the answers."""

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from client.local_services import start_local_services
from client.results import Hit
from client.sdk import SimilarityClient
from imgsim.assets import DEFAULT_DATASET, DEFAULT_MODEL

OFFLINE_MODEL = DEFAULT_MODEL
OFFLINE_DATASET = DEFAULT_DATASET
SEED = 42  # the write-up shuffles its candidates with seed 42
CELL = 128


@dataclass(frozen=True)
class DemoOptions:
    model: str = OFFLINE_MODEL
    dataset: str = OFFLINE_DATASET
    collection: str = "imgsim-demo"
    num_candidates: int | None = None
    num_queries: int | None = None
    k: int = 5
    shown: int = 5
    image_column: str = "image"
    label_column: str = "auto"
    out: Path = Path("demo-out")
    dtype: str = "float32"  # of the local embedder
    connection: object = None  # the parsed command line, when services are given (--embedder, --index...)

    @classmethod
    def from_args(cls, args) -> "DemoOptions":
        return cls(model=args.model, dataset=args.dataset, collection=args.collection,
                   num_candidates=args.num_candidates, num_queries=args.num_queries, k=args.k, shown=args.shown,
                   image_column=args.image_column, label_column=args.label_column, out=args.out,
                   dtype=args.dtype, connection=args if (args.embedder or args.index) else None)


@dataclass(frozen=True)
class DemoResult:
    precision_at_k: float
    queries: int
    candidates: int
    grid_path: Path


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
            (candidate_image(hit), f"{hit.metadata.get('label', '?')}  {hit.score:.3f}") for hit in found]
        for column, (picture, text) in enumerate(cells):
            grid.paste(picture.convert("RGB").resize((CELL - 8, CELL - 8)), (column * CELL + 4, top + 4))
            draw.text((column * CELL + 6, top + CELL), text, fill="black" if column else "blue")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def run_demo(options: DemoOptions, say=print) -> int:
    """Runs the demo; returns the exit code (0)."""
    result = demo(options, say)
    return 0 if result.queries else 1


def demo(options: DemoOptions, say=print) -> DemoResult:
    from datasets import load_dataset

    dataset = load_dataset(options.dataset)
    train = dataset["train"]
    candidates = train.shuffle(seed=SEED)
    if options.num_candidates:
        candidates = candidates.select(range(min(options.num_candidates, len(candidates))))
    queries = dataset["test"]
    if options.num_queries:
        queries = queries.select(range(min(options.num_queries, len(queries))))

    data_dir = Path(tempfile.mkdtemp(prefix="imgsim-demo-index-"))
    services = None
    try:
        if options.connection is None:
            say(f"starting local services: embedder ({options.model}) and index (data in {data_dir})")
            services = start_local_services(options.model, data_dir, options.out / "logs",
                                            embedder_args=["--dtype", options.dtype])
            client = SimilarityClient(embedder=services.services[1].address, index=services.services[0].address,
                                      collection=options.collection)
        else:
            from client.connection import connect
            client = connect(options.connection, ("embedder", "index"), options.collection)
        with client:
            info = client.model_info()
            say(f"model {info.model_id}: dimension {info.dimension}, {info.device}/{info.dtype}, "
                f"fingerprint {info.fingerprint}")
            client.drop_collection(options.collection, missing_ok=True)
            client.create_collection(options.collection)
            started = time.monotonic()
            report = client.index_dataset(candidates, options.image_column, options.label_column, batch_size=64,
                                          progress=False)
            say(f"indexed {report.indexed} candidates into collection {options.collection!r} in "
                f"{time.monotonic() - started:.1f} s" + (f", {len(report.failed)} failed" if report.failed else ""))

            started = time.monotonic()
            report = client.evaluate(queries, k=options.k, collection=options.collection,
                                     image_column=options.image_column, label_column=options.label_column,
                                     worst=0, progress=False)
            say(f"embedded and searched {report.query_count} queries in {time.monotonic() - started:.1f} s")
            samples = report.kinds[0].samples[:options.shown]
            sources = {item_id: item.metadata["source"] for item_id, item in client.get(
                sorted({hit["id"] for sample in samples for hit in sample["hits"]}), with_vectors=False).items()}

        for sample in samples:
            say(f"Query label: {sample['label']}")
            say(f"Top {options.k} candidate labels: [{', '.join(hit['label'] for hit in sample['hits'])}]")
        score = report.kinds[0].overall.precision_at_k
        say(f"Mean precision@{options.k} over {report.query_count} test queries with {report.candidate_count} "
            f"candidates: {score:.4f}")

        grid_path = options.out / "results.png"
        hits = [[Hit(hit["id"], hit["score"], {"label": hit["label"], "source": sources[hit["id"]]})
                 for hit in sample["hits"]] for sample in samples]
        draw_grid([queries[i][options.image_column] for i in range(len(samples))],
                  [sample["label"] for sample in samples], hits,
                  lambda hit: train[int(hit.metadata["source"].rsplit("/", 1)[1])][options.image_column], grid_path)
        say(f"wrote {grid_path}")
        return DemoResult(score, report.query_count, report.candidate_count, grid_path)
    finally:
        if services:
            services.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
