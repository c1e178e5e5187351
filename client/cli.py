"""imgsim: the client's command line (demo, index, search, stats, loadtest)."""

import argparse
import json
import sys
from pathlib import Path

from client.errors import ImgsimError
from imgsim.flags import add_option, positive_int

EMBEDDER_ENV = "IMGSIM_EMBEDDER_ADDRESS"
INDEX_ENV = "IMGSIM_INDEX_ADDRESS"


def add_addresses(parser: argparse.ArgumentParser, required: tuple[str, ...]) -> None:
    if "embedder" in required:
        add_option(parser, "--embedder", EMBEDDER_ENV, None,
                   "embedder address host:port; several comma-separated replicas are spread round robin")
    if "index" in required:
        add_option(parser, "--index", INDEX_ENV, None, "index address host:port")


def build_parser() -> argparse.ArgumentParser:
    from client.demo import OFFLINE_DATASET, OFFLINE_MODEL

    parser = argparse.ArgumentParser(prog="imgsim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="index a dataset's train split, query its test split, report precision@k",
                               description="Starts local services unless --embedder and --index are given.")
    add_addresses(demo, ("embedder", "index"))
    add_option(demo, "--model", "IMGSIM_DEMO_MODEL", OFFLINE_MODEL,
               "checkpoint for the local embedder (online: nateraw/vit-base-beans)")
    add_option(demo, "--dataset", "IMGSIM_DEMO_DATASET", OFFLINE_DATASET,
               "dataset folder or hub id with train and test splits (online: beans)")
    add_option(demo, "--num-candidates", "IMGSIM_DEMO_NUM_CANDIDATES", None,
               "candidates taken from the shuffled train split (the write-up: 100); all when unset", type=positive_int)
    add_option(demo, "--num-queries", "IMGSIM_DEMO_NUM_QUERIES", None, "test images queried; all when unset",
               type=positive_int)
    add_option(demo, "--k", "IMGSIM_DEMO_K", 5, "candidates per query", type=positive_int)
    add_option(demo, "--shown", "IMGSIM_DEMO_SHOWN", 5, "queries printed and drawn", type=positive_int)
    add_option(demo, "--image-column", "IMGSIM_DEMO_IMAGE_COLUMN", "image", "the dataset's image column")
    add_option(demo, "--label-column", "IMGSIM_DEMO_LABEL_COLUMN", "labels", "the dataset's label column")
    add_option(demo, "--out", "IMGSIM_DEMO_OUT", "demo-out", "folder for the picture and the services' logs",
               type=Path)

    index = commands.add_parser("index", help="stream a dataset split through the embedder into the index")
    add_addresses(index, ("embedder", "index"))
    index.add_argument("--dataset", required=True, help="dataset folder or hub id")
    index.add_argument("--split", default="train", help="split to index [default train]")
    index.add_argument("--image-column", default="image", help="[default image]")
    index.add_argument("--label-column", default="labels", help="stored as metadata 'label' [default labels]")
    index.add_argument("--id-column", default=None, help="column of ids [default: the row number]")
    index.add_argument("--batch-size", type=positive_int, default=64, help="[default 64]")

    search = commands.add_parser("search", help="find the candidates most similar to image files")
    add_addresses(search, ("embedder", "index"))
    search.add_argument("images", nargs="+", type=Path, help="image files")
    search.add_argument("--k", type=positive_int, default=5, help="[default 5]")
    search.add_argument("--where", action="append", default=[], metavar="KEY=V1,V2",
                        help="keep candidates whose metadata KEY is one of the values; repeatable")

    stats = commands.add_parser("stats", help="what the index holds")
    add_addresses(stats, ("index",))

    load = commands.add_parser("loadtest", help="a bounded ghz-like load test of one RPC",
                               description="Makes --total calls of --call from --concurrency threads and prints a "
                                           "ghz-like summary. Takes the data files of loadtest/ (as ghz does).")
    load.add_argument("host", help="the service's host:port")
    load.add_argument("--call", required=True, help="e.g. imgsim.v1.Index/Search or imgsim.v1.Embedder.Embed")
    load.add_argument("-D", "--data-file", required=True, type=Path,
                      help="JSON request (a list of requests for client-streaming calls)")
    load.add_argument("-c", "--concurrency", type=positive_int, default=50, help="calls at once [default 50]")
    load.add_argument("-n", "--total", type=positive_int, default=200, help="calls in all [default 200]")
    load.add_argument("-t", "--timeout", type=float, default=20.0, help="seconds per call [default 20]")
    return parser


def require(args: argparse.Namespace, *names: str) -> None:
    missing = [n for n in names if not getattr(args, n)]
    if missing:
        envs = {"embedder": EMBEDDER_ENV, "index": INDEX_ENV}
        sys.exit("imgsim: give " + " and ".join(f"--{n} (or {envs[n]})" for n in missing))


def parse_where(clauses: list[str]) -> dict[str, list[str]]:
    where = {}
    for clause in clauses:
        key, sep, values = clause.partition("=")
        if not sep or not key or not values:
            sys.exit(f"imgsim: --where wants KEY=V1,V2, got {clause!r}")
        where[key] = values.split(",")
    return where


def run(args: argparse.Namespace) -> None:
    from client.sdk import SimilarityClient

    if args.command == "demo":
        from client.demo import DemoOptions, run_demo

        run_demo(DemoOptions(
            model=args.model, dataset=args.dataset, embedder=args.embedder, index=args.index,
            num_candidates=args.num_candidates, num_queries=args.num_queries, k=args.k, shown=args.shown,
            image_column=args.image_column, label_column=args.label_column, out=args.out))
    elif args.command == "index":
        from datasets import load_dataset

        require(args, "embedder", "index")
        split = load_dataset(args.dataset, split=args.split)
        with SimilarityClient(embedder=args.embedder.split(","), index=args.index) as client:
            report = client.index_dataset(split, args.image_column, args.label_column, args.id_column,
                                          args.batch_size)
            print(f"indexed {report.indexed}, failed {len(report.failed)}; the index holds {client.stats().count}")
            for item_id, message in report.failed:
                print(f"  {item_id}: {message}", file=sys.stderr)
    elif args.command == "search":
        require(args, "embedder", "index")
        with SimilarityClient(embedder=args.embedder.split(","), index=args.index) as client:
            found = client.search(list(args.images), k=args.k, where=parse_where(args.where))
        for path, hits in zip(args.images, found):
            print(json.dumps({"query": str(path), "hits": [h.__dict__ for h in hits]}))
    elif args.command == "loadtest":
        import grpc

        from client.loadtest import find_method, load_requests, run_load, summary

        method = find_method(args.call)
        requests = load_requests(method, args.data_file)
        with grpc.insecure_channel(args.host) as channel:
            result = run_load(channel, method, requests, args.concurrency, args.total, args.timeout)
        print(summary(result))
        if result.errors:
            sys.exit(1)
    elif args.command == "stats":
        require(args, "index")
        with SimilarityClient(index=args.index) as client:
            print(json.dumps(client.stats().__dict__))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except ImgsimError as err:
        sys.exit(f"imgsim: {err}")


if __name__ == "__main__":
    main()
