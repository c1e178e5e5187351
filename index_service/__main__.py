"""imgsim-index: serves top-k cosine search over candidate vectors (flags -> config -> run)."""

import argparse
import sys
from pathlib import Path

from imgsim.flags import add_common_server_options, add_option, configure_logging, positive_int
from imgsim.serving import PortInUse, wait_for_stop_signal
from index_service.config import INDEX_KINDS, IndexConfig
from index_service.server import create_server

ENV = "IMGSIM_INDEX"


def parse_config(argv: list[str] | None = None) -> IndexConfig:
    parser = argparse.ArgumentParser(prog="imgsim-index", description=__doc__)
    add_common_server_options(parser, ENV, default_port=50052)
    add_option(parser, "--data-dir", f"{ENV}_DATA_DIR", "data/index", "folder holding the index's durable data",
               type=Path)
    add_option(parser, "--index-kind", f"{ENV}_KIND", "flat", "search structure for a new index",
               choices=list(INDEX_KINDS))
    add_option(parser, "--faiss-threads", f"{ENV}_FAISS_THREADS", 1,
               "OpenMP threads per FAISS search (concurrent calls each use this many)", type=positive_int)
    add_option(parser, "--max-message-bytes", f"{ENV}_MAX_MESSAGE_BYTES", 64 * 1024 * 1024,
               "largest request or reply message", type=positive_int)
    return IndexConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    configure_logging(config.log_level)
    try:
        running = create_server(config)
    except PortInUse as err:
        sys.exit(f"imgsim-index: {err}")
    wait_for_stop_signal()
    running.stop(config.grace_s)


if __name__ == "__main__":
    main()
