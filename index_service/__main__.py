"""imgsim-index: top-k cosine search over candidate vectors in named collections (flags -> config -> run)."""

import argparse
import os
import sys
from pathlib import Path

from imgsim.logs import configure_logging
from imgsim.options import Options, choice, integer, number, parse_args
from imgsim.server.config import add_serving_options, serving_config
from index_service.config import KINDS, PARAM_RANGES, IndexConfig, KindParams

ENV = "IMGSIM_INDEX"


def parse_config(argv: list[str] | None = None) -> IndexConfig:
    parser = argparse.ArgumentParser(prog="imgsim-index", description=__doc__)
    options = Options(parser, ENV)
    add_serving_options(options, default_port=50052)
    storage = options.group("storage")
    storage.add("--data-dir", "data/index", "folder holding the collections (one process owns it at a time)",
                type=Path)
    storage.add("--snapshot-every", 100_000, "changed items after which a collection is snapshotted, or a quarter "
                "of it if more (restarts load the snapshot and replay the rest)", type=integer(1, 10**12))
    storage.add("--max-storage-bytes", None, "quota on the data directory: past it writes get RESOURCE_EXHAUSTED, "
                "searches and deletes go on (unset: the disk)", type=integer(1 << 20))
    storage.add("--compact-dead-fraction", 0.2, "share of a collection's rows held by deleted or replaced items "
                "past which it is compacted in the background", type=number(0.01, 0.9))
    search = options.group("search")
    search.add("--search-threads", os.cpu_count() or 2, "calls (searches, reads, validation) worked on at once",
               type=integer(1, 256))
    search.add("--faiss-threads", 1, "OpenMP threads per FAISS search", type=integer(1, 256))
    kinds = options.group("index kinds (for the default collection and collections created without them)")
    kinds.add("--index-kind", "flat", "search structure", env=f"{ENV}_KIND", type=choice(*KINDS))
    defaults = KindParams()
    for name, (low, high, kind, help_text) in PARAM_RANGES.items():
        kinds.add("--" + name.replace("_", "-"), getattr(defaults, name), f"{kind}: {help_text}",
                  type=integer(low, high))
    args = vars(parse_args(parser, argv))
    params = {name: args.pop(name) for name in PARAM_RANGES}
    if params["lsh_radius"] > params["lsh_bits"]:
        parser.error(f"--lsh-radius {params['lsh_radius']} cannot exceed --lsh-bits {params['lsh_bits']}")
    serving = serving_config(args, ENV, parser)
    return IndexConfig(serving=serving, kind_params=KindParams(**params), **args)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    configure_logging(config.serving.log_level, config.serving.log_format)
    from imgsim.server.memory import keep_resident_memory_tight
    keep_resident_memory_tight()
    from imgsim.server.runner import BadServingConfig, PortInUse, serve_until_signalled
    from index_service.config import BadParams
    from index_service.errors import IndexServiceError
    from index_service.locks import DataDirInUse
    from index_service.registry import DataDirError
    from index_service.server import start

    try:
        serve_until_signalled(lambda stopping: start(config, stopping))
    except (PortInUse, BadServingConfig, DataDirInUse, DataDirError, BadParams, IndexServiceError) as err:
        sys.exit(f"imgsim-index: {err}")


if __name__ == "__main__":
    main()
