"""`imgsim eval`: the labelled sets from the command line, the run, and its outputs."""

import argparse
import sys

from client.connection import UsageError, connect
from client.ingest import BadInput


def dataset_set(args, split: str, limit: int | None, shuffle: bool):
    from client.commands import load_split
    from client.evaluation import labelled
    from client.ingest import dataset_sources, pick_label_column

    rows = load_split(args.dataset, split, streaming=False)
    if shuffle:
        rows = rows.shuffle(seed=42)  # the write-up's candidate draw
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    if pick_label_column(rows, args.label_column) is None:
        raise BadInput(f"dataset {args.dataset!r} split {split!r} has no label column (label or labels; "
                       f"columns: {', '.join(rows.features)}): evaluation needs labels; pass --label-column")
    sources, _ = dataset_sources(rows, args.image_column, args.label_column)
    return labelled(f"{args.dataset} {split}", list(sources))


def folder_set(paths: list[str], limit: int | None, name: str):
    from client.evaluation import labelled
    from client.ingest import path_sources

    sources, _ = path_sources(paths)
    kept = list(sources)[:limit] if limit else list(sources)
    return labelled(name, kept)


def labelled_sets(args):
    if bool(args.paths) == bool(args.dataset):
        raise UsageError("give query folders or --dataset, one or the other")
    if args.dataset:
        queries = dataset_set(args, args.split, args.num_queries, shuffle=False)
        candidates = dataset_set(args, args.candidates_split, args.num_candidates, shuffle=True) \
            if args.candidates_split else None
    else:
        queries = folder_set(args.paths, args.num_queries, " ".join(args.paths))
        candidates = folder_set(args.candidates, args.num_candidates, " ".join(args.candidates)) \
            if args.candidates else None
    return queries, candidates


def image_lookup(queries, candidates):
    def image_of(item_id: str):
        group = queries if item_id.startswith("q") or candidates is None else candidates
        try:
            source = group.sources[int(item_id[1:])]
            return source.data if source.data is not None else source.bytes()
        except (ValueError, IndexError, OSError):
            return None
    return image_of


def eval_command(args: argparse.Namespace) -> int:
    from client.eval_report import compare, read_json, text_summary, write_html, write_json, write_png
    from client.evaluation import evaluate

    kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in ("flat", "hnsw", "ivfpq", "lsh")]
    if unknown or not kinds:
        raise UsageError(f"--kinds {args.kinds!r}: give some of flat, hnsw, ivfpq, lsh")
    against = None
    if args.against:
        try:
            against = read_json(args.against)
        except ValueError as err:
            raise UsageError(str(err)) from None
    try:
        queries, candidates = labelled_sets(args)
    except BadInput as err:
        raise UsageError(str(err)) from None
    with connect(args, ("embedder", "index")) as client:
        try:
            report = evaluate(client, queries, candidates, k=args.k, kinds=kinds, progress=sys.stderr.isatty(),
                              collection=args.collection)
        except BadInput as err:
            raise UsageError(str(err)) from None
    samples = []
    for sample in report.kinds[0].samples[:args.shown]:
        samples += [f"Query label: {sample['label']}",
                    f"Top {report.k} candidate labels: [{', '.join(hit['label'] for hit in sample['hits'])}]"]
    print(text_summary(report, samples))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.html:
        write_html(report, args.html, image_lookup(queries, candidates))
        print(f"wrote {args.html}")
    if args.png:
        write_png(report, args.png, image_lookup(queries, candidates))
        print(f"wrote {args.png}")
    if against is not None:
        print()
        print(compare(report.to_dict(), against))
    return 0
