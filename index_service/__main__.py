"""imgsim-index: serves top-k cosine search over candidate vectors (flags -> config -> run)."""

import argparse
import sys
from pathlib import Path

from imgsim.flags import (add_option, add_serving_options, configure_logging, non_negative_int, positive_int,
                          serving_config)
from imgsim.serving import BadServingConfig, PortInUse, wait_for_stop_signal
from index_service.config import INDEX_KINDS, IndexConfig
from index_service.index import KindParams
from index_service.collection import DataDirMismatch
from index_service.server import create_server

ENV = "IMGSIM_INDEX"


def parse_config(argv: list[str] | None = None) -> IndexConfig:
    parser = argparse.ArgumentParser(prog="imgsim-index", description=__doc__)
    add_serving_options(parser, ENV, default_port=50052)
    add_option(parser, "--data-dir", f"{ENV}_DATA_DIR", "data/index", "folder holding the index's durable data",
               type=Path)
    add_option(parser, "--index-kind", f"{ENV}_KIND", "flat", "search structure for a new index",
               choices=list(INDEX_KINDS))
    add_option(parser, "--faiss-threads", f"{ENV}_FAISS_THREADS", 1,
               "OpenMP threads per FAISS search (concurrent calls each use this many)", type=positive_int)
    add_option(parser, "--snapshot-every", f"{ENV}_SNAPSHOT_EVERY", 100_000,
               "changed items after which the in-memory index is snapshotted, or a quarter of the index if more "
               "(restarts load the snapshot and replay the rest)",
               type=positive_int)
    add_option(parser, "--max-storage-bytes", f"{ENV}_MAX_STORAGE_BYTES", None,
               "quota on the store's size: past it writes get RESOURCE_EXHAUSTED, searches go on (unset: the disk)",
               type=positive_int)
    defaults = KindParams()
    for name, help_text in KIND_PARAM_HELP.items():
        add_option(parser, "--" + name.replace("_", "-"), f"{ENV}_{name.upper()}", getattr(defaults, name), help_text,
                   type=non_negative_int if name == "lsh_radius" else positive_int)
    args = vars(parser.parse_args(argv))
    kind_params = KindParams(**{name: args.pop(name) for name in KIND_PARAM_HELP})
    return IndexConfig(serving=serving_config(args, ENV), kind_params=kind_params, **args)


KIND_PARAM_HELP = {
    "hnsw_m": "hnsw: graph neighbours per node",
    "hnsw_ef_construction": "hnsw: candidate list while building",
    "hnsw_ef_search": "hnsw: candidate list while searching (higher: better recall, slower)",
    "ivf_nlist": "ivfpq: inverted lists; trained once 39x this many vectors are in",
    "ivf_nprobe": "ivfpq: lists visited per query",
    "pq_m": "ivfpq: bytes per compressed vector (must divide the dimension)",
    "rerank_factor": "ivfpq: candidates re-ranked with exact vectors per hit asked for (k=10: 1000)",
    "lsh_tables": "lsh: independent hash tables",
    "lsh_bits": "lsh: bits (random hyperplanes) per table",
    "lsh_radius": "lsh: bits a candidate's code may differ from the query's in a table",
}


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    configure_logging(config.serving.log_level, config.serving.log_format)
    try:
        running = create_server(config)
    except (PortInUse, BadServingConfig, DataDirMismatch) as err:
        sys.exit(f"imgsim-index: {err}")
    wait_for_stop_signal()
    running.stop()


if __name__ == "__main__":
    main()
