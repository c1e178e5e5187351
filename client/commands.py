"""What the command line's data commands do, once their arguments are parsed."""

import argparse
import json
import signal
import sys

from client.connection import UsageError, connect
from client.where import parse_where


def parse_params(pairs: list[str]) -> dict[str, int]:
    """Repeated --param NAME=INTEGER options (index parameters) as a dict."""
    params = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not value.strip().isdigit():
            raise UsageError(f"--param {pair!r}: write NAME=INTEGER, e.g. hnsw_m=16")
        params[name.strip()] = int(value)
    return params


def print_json(value) -> None:
    print(json.dumps(value, default=str))


def index_command(args: argparse.Namespace) -> int:
    from client.ingest import BadInput, dataset_sources, path_sources, run

    if bool(args.paths) == bool(args.dataset):
        raise UsageError("give image paths (files, folders, globs) or --dataset, one or the other")
    try:
        if args.dataset:
            split = load_split(args.dataset, args.split, args.streaming)
            sources, total = dataset_sources(split, args.image_column, args.label_column or None, args.id_column)
        else:
            sources, total = path_sources(args.paths)
    except BadInput as err:
        raise UsageError(str(err)) from None
    with connect(args, ("embedder", "index"), args.collection) as client:
        if args.create:
            client.create_collection(args.collection, exist_ok=True)
        # A second Ctrl-C while the summary is written stops at once.
        report = run(client, sources, total, args.collection, args.batch_size, sys.stderr.isatty(),
                     args.skip_existing)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        count = client.stats(args.collection).count
    for where, message in report.failed:
        print(f"failed: {where}: {message}", file=sys.stderr)
    state = "interrupted after" if report.interrupted else "done:"
    print(f"{state} indexed {report.indexed} ({report.inserted} new, {report.replaced} replaced), "
          f"skipped {report.skipped} already held, failed {len(report.failed)}; collection {args.collection!r} "
          f"holds {count}")
    if report.interrupted:
        print("run it again with --skip-existing to finish", file=sys.stderr)
        return 130
    return 1 if report.failed else 0


def require(module: str, what: str) -> None:
    """A plain refusal when an optional part is missing: the client extra leaves datasets and pyarrow out."""
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}, which `pip install imgsim[client]` leaves out: "
                         "pip install 'imgsim[client,datasets]'")


def load_split(dataset: str, split: str, streaming: bool):
    require("datasets", "--dataset")
    from datasets import get_dataset_split_names, load_dataset
    from datasets.exceptions import DatasetNotFoundError

    try:
        splits = get_dataset_split_names(dataset)
    except (DatasetNotFoundError, FileNotFoundError, ValueError, ConnectionError) as err:
        raise UsageError(f"cannot load dataset {dataset!r}: {str(err).splitlines()[0]}") from None
    if split not in splits:
        raise UsageError(f"dataset {dataset!r} has no split {split!r}; its splits are: {', '.join(splits)}")
    return load_dataset(dataset, split=split, streaming=streaming)


def index_only_command(args: argparse.Namespace) -> int:
    """stats, count, delete, collections, export, import."""
    with connect(args, ("index",), getattr(args, "collection", None)) as client:
        if args.command == "stats":
            names = [args.collection] if args.collection else [c.name for c in client.list_collections()]
            for name in names:
                print_json(client.stats(name).__dict__)
        elif args.command == "count":
            print(client.count(parse_where(args.where)))
        elif args.command == "delete":
            deleted = client.delete(args.ids)
            print(f"deleted {deleted}, not found {len(set(args.ids)) - deleted}")
        elif args.command == "collections":
            return collections_command(client, args)
        elif args.command == "reshard":
            report = client.reshard([args.collection] if args.collection else None,
                                    lambda line: print(line, file=sys.stderr) if sys.stderr.isatty() else None)
            print(f"moved {report.moved} items to their home shard in {report.passes} passes "
                  f"({report.kept_newer} already had a newer write there, {report.undone} copies taken back "
                  f"because the item changed while it moved)")
        elif args.command == "export":
            require("pyarrow", "imgsim export")
            from client.export import export_collection
            written = export_collection(client, args.collection, args.out, parse_where(args.where), sys.stderr.isatty())
            print(f"exported {written} items of {args.collection!r} to {args.out}")
        elif args.command == "import":
            require("pyarrow", "imgsim import")
            from client.export import import_collection
            if not args.file.is_file():
                raise UsageError(f"no such file: {args.file}")
            try:
                name, written = import_collection(client, args.file, args.collection, sys.stderr.isatty())
            except ValueError as err:
                raise UsageError(str(err)) from None
            print(f"imported {written} items into {name!r}")
    return 0


def collections_command(client, args: argparse.Namespace) -> int:
    if args.action == "list":
        for info in client.list_collections():
            print_json(info.__dict__)
        return 0
    if not args.name:
        raise UsageError(f"collections {args.action} needs a NAME")
    if args.action == "create":
        params = parse_params(args.param)
        print_json(client.create_collection(args.name, args.kind, params, exist_ok=args.exist_ok).__dict__)
    elif args.action == "describe":
        print_json(client.stats(args.name).__dict__)
    elif args.action == "drop":
        print("dropped" if client.drop_collection(args.name, args.missing_ok) else "no such collection")
    elif args.action == "compact":
        print(f"reclaimed {client.compact(args.name)} rows")
    return 0
