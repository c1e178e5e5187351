"""imgsim: the command line of the image-similarity services.

Every mistake in how a command is called ends with one line and exit code 2; a failed call to a service
with one line naming it and exit code 1; Ctrl-C with what was done so far and exit code 130."""

import argparse
import json
import sys
from pathlib import Path

from client.connection import UsageError, add_connection_options, connect
from client.errors import ImgsimError
from client.where import parse_where
from imgsim.options import Options, choice, integer, parse_args, text


def build_parser() -> argparse.ArgumentParser:
    from client.demo import OFFLINE_DATASET, OFFLINE_MODEL

    parser = argparse.ArgumentParser(prog="imgsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the write-up's job: index a train split, query the test split",
                               description="Starts local services unless --embedder and --index are given. Works in "
                                           "its own collection (--collection), which it empties first.")
    add_connection_options(demo, ("embedder", "index"))
    options = Options(demo, "IMGSIM_DEMO")
    options.add("--model", OFFLINE_MODEL, "checkpoint for the local embedder (online: nateraw/vit-base-beans)")
    options.add("--dataset", OFFLINE_DATASET, "dataset folder or hub id with train and test splits (online: beans)")
    options.add("--collection", "imgsim-demo", "the demo's own collection (dropped and made anew)")
    options.add("--num-candidates", None, "candidates taken from the shuffled train split (the write-up: 100); all "
                "when unset", type=integer(1))
    options.add("--num-queries", None, "test images queried; all when unset", type=integer(1))
    options.add("--k", 5, "candidates per query", type=integer(1, 1000))
    options.add("--shown", 5, "queries printed and drawn", type=integer(1, 10))
    options.add("--image-column", "image", "the dataset's image column")
    options.add("--label-column", "auto", "the dataset's label column (auto: label or labels)")
    options.add("--out", "demo-out", "folder for the picture and the local services' logs", type=Path)
    options.add("--dtype", "float32", "compute dtype of the local embedder: float32 prints the same figure on every "
                "machine; auto lets it time the dtypes at start and take the fastest faithful one, as it does when "
                "run on its own", type=choice("float32", "auto", "bfloat16", "float16"))

    index = commands.add_parser("index", help="embed images and add them to a collection",
                                description="Indexes image files, folders (recursively; in an ImageFolder layout "
                                            "the subfolder is the label) and globs, or a dataset split (--dataset).")
    add_connection_options(index, ("embedder", "index"))
    index.add_argument("paths", nargs="*", help="image files, folders or globs")
    index.add_argument("--dataset", help="a dataset folder or hub id instead of paths")
    index.add_argument("--split", default="train", help="split of --dataset [default train]")
    index.add_argument("--streaming", action="store_true", help="stream the dataset instead of loading it")
    index.add_argument("--image-column", default="image", help="[default image]")
    index.add_argument("--label-column", default="auto", help="stored as metadata 'label' (auto: label or labels; "
                       "'' for none) [default auto]")
    index.add_argument("--id-column", default=None, help="column of ids [default: a hash of the image's bytes]")
    index.add_argument("--collection", default="default", help="[default default]")
    index.add_argument("--create", action="store_true", help="create the collection if it does not exist")
    index.add_argument("--skip-existing", action="store_true", help="skip ids the collection holds (resume a run)")
    index.add_argument("--batch-size", type=integer(1, 256), default=64, help="images per message [default 64]")

    evaluation = commands.add_parser(
        "eval", help="retrieval quality on your labelled images, through the services",
        description="Embeds labelled queries and candidates through the embedder, searches them through the index "
                    "(a scratch collection per --kinds, dropped afterwards; or an existing --collection) and reports "
                    "precision@k, recall@k, mAP@k, MRR (overall and per class), the approximate kinds' recall "
                    "against exact search, and search latency. Queries: image folders in an ImageFolder layout "
                    "(the subfolder is the label) or --dataset/--split; candidates: --candidates folders or "
                    "--candidates-split, else every query against all the others (leave-one-out).")
    add_connection_options(evaluation, ("embedder", "index"))
    evaluation.add_argument("paths", nargs="*", help="query image folders (ImageFolder layout)")
    evaluation.add_argument("--candidates", nargs="+", default=None, metavar="PATH", help="candidate folders")
    evaluation.add_argument("--dataset", help="a dataset folder or hub id instead of paths")
    evaluation.add_argument("--split", default="test", help="the query split of --dataset [default test]")
    evaluation.add_argument("--candidates-split", default=None,
                            help="the candidate split of --dataset (shuffled with seed 42, as the write-up) "
                                 "[default: leave-one-out on --split]")
    evaluation.add_argument("--num-queries", type=integer(1), default=None, help="the first N queries [all]")
    evaluation.add_argument("--num-candidates", type=integer(1), default=None, help="the first N candidates [all]")
    evaluation.add_argument("--image-column", default="image", help="[default image]")
    evaluation.add_argument("--label-column", default="auto", help="[default auto: label or labels]")
    evaluation.add_argument("--k", type=integer(1, 999), default=10, help="[default 10]")
    evaluation.add_argument("--kinds", default="flat", help="index kinds side by side, comma-separated, e.g. "
                            "flat,hnsw,ivfpq,lsh [default flat]")
    evaluation.add_argument("--collection", default=None,
                            help="evaluate against this existing collection (its items, their 'label') instead")
    evaluation.add_argument("--json", type=Path, default=None, help="write the JSON report here (schema "
                            "imgsim-eval/1, docs/eval.md)")
    evaluation.add_argument("--html", type=Path, default=None, help="write a self-contained HTML report here")
    evaluation.add_argument("--png", type=Path, default=None, help="write the report as a PNG picture here")
    evaluation.add_argument("--against", type=Path, default=None, help="a JSON report of an earlier run: print "
                            "both side by side with a bootstrap interval for the precision@k difference")
    evaluation.add_argument("--worst", type=integer(0, 100), default=8, help="worst queries in the HTML [8]")
    evaluation.add_argument("--shown", type=integer(0, 100), default=3,
                            help="sample queries printed with their top-k labels, as the write-up [3]")

    search = commands.add_parser("search", help="find the items most similar to image files")
    add_connection_options(search, ("embedder", "index"))
    search.add_argument("images", nargs="+", type=Path, help="image files")
    search.add_argument("--k", type=integer(1, 1000), default=5, help="[default 5]")
    search.add_argument("--collection", default="default", help="[default default]")
    search.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="this search's effort instead of the collection's: ivf_nprobe, hnsw_ef_search, "
                             "rerank_factor or lsh_radius, e.g. ivf_nprobe=256; repeatable")
    add_where(search)

    stats = commands.add_parser("stats", help="what the collections hold")
    add_connection_options(stats, ("index",))
    stats.add_argument("--collection", default=None, help="one collection [default: every one]")

    count = commands.add_parser("count", help="how many items (pass a filter)")
    add_connection_options(count, ("index",))
    count.add_argument("--collection", default="default", help="[default default]")
    add_where(count)

    delete = commands.add_parser("delete", help="remove items by id")
    add_connection_options(delete, ("index",))
    delete.add_argument("ids", nargs="+")
    delete.add_argument("--collection", default="default", help="[default default]")

    collections = commands.add_parser("collections", help="list, create, describe, drop or compact collections")
    add_connection_options(collections, ("index",))
    collections.add_argument("action", choices=["list", "create", "describe", "drop", "compact"])
    collections.add_argument("name", nargs="?")
    collections.add_argument("--kind", default="", help="create: flat, hnsw, ivfpq or lsh [default: the server's]")
    collections.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                             help="create: an index parameter, e.g. hnsw_m=16; repeatable")
    collections.add_argument("--exist-ok", action="store_true", help="create: an existing one is fine")
    collections.add_argument("--missing-ok", action="store_true", help="drop: a missing one is fine")

    moving = commands.add_parser(
        "reshard", help="move items to their home shard after the shard list changed",
        description="Moves every item that is not on the shard the --index list gives it, while the shards keep "
                    "serving. First point every writer at the new shard list; then run this once (again after an "
                    "interruption: it resumes).")
    add_connection_options(moving, ("index",))
    moving.add_argument("--collection", default=None, help="one collection [default: every one]")

    export = commands.add_parser("export", help="write a collection to a Parquet file (exact vectors)")
    add_connection_options(export, ("index",))
    export.add_argument("--collection", default="default", help="[default default]")
    export.add_argument("--out", required=True, type=Path, help="FILE.parquet")
    add_where(export)

    load = commands.add_parser("import", help="create a collection from a Parquet export and fill it")
    add_connection_options(load, ("index",))
    load.add_argument("file", type=Path, help="FILE.parquet written by imgsim export")
    load.add_argument("--collection", default=None, help="[default: the exported collection's name]")

    loadtest = commands.add_parser("loadtest", help="a bounded ghz-like load test of one RPC",
                                   description="Makes --total calls of --call from --concurrency threads and prints a "
                                               "ghz-like summary. Takes the data files of loadtest/ (as ghz does).")
    loadtest.add_argument("host", help="the service's host:port")
    loadtest.add_argument("--call", required=True, help="e.g. imgsim.v1.Index/Search or imgsim.v1.Embedder.Embed")
    loadtest.add_argument("-D", "--data-file", required=True, type=Path,
                          help="JSON request (a list of requests for client-streaming calls)")
    loadtest.add_argument("-c", "--concurrency", type=integer(1, 10000), default=50, help="calls at once [50]")
    loadtest.add_argument("-n", "--total", type=integer(1, 10_000_000), default=200, help="calls in all [200]")
    loadtest.add_argument("-t", "--timeout", type=float, default=20.0, help="seconds per call [20]")
    return parser


def add_where(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--where", action="append", default=[], type=text, metavar="CLAUSE",
                        help="a metadata filter; repeated clauses must all hold. KEY=V1,V2 (any of), KEY!=V, "
                             "KEY>N, KEY>=N, KEY<N, KEY<=N. Values match as text and, when they read as one, as "
                             "numbers or booleans too ('\"3\"' for the string only)")


def print_json(value) -> None:
    print(json.dumps(value, default=str))


def run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from client.commands import require
        require("datasets", "imgsim demo")
        from client.demo import DemoOptions, run_demo
        return run_demo(DemoOptions.from_args(args))
    if args.command == "eval":
        from client.eval_command import eval_command
        return eval_command(args)
    if args.command == "loadtest":
        from client.loadtest import main as loadtest
        return loadtest(args)
    if args.command == "index":
        from client.commands import index_command
        return index_command(args)
    if args.command == "search":
        from client.commands import parse_params
        where = parse_where(args.where)
        missing = [str(p) for p in args.images if not p.is_file()]
        if missing:
            raise UsageError(f"no such image file: {missing[0]}")
        with connect(args, ("embedder", "index"), args.collection) as client:
            found = client.search(list(args.images), k=args.k, where=where, params=parse_params(args.param))
        for path, hits in zip(args.images, found):
            print_json({"query": str(path), "hits": [h.__dict__ for h in hits]})
        return 0
    from client.commands import index_only_command
    return index_only_command(args)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parse_args(parser, argv)
    try:
        code = run(args)
    except UsageError as err:
        print(f"imgsim: {err}", file=sys.stderr)
        code = 2
    except ImgsimError as err:
        print(f"imgsim: {err}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("imgsim: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
