"""imgsim-embedder: serves embeddings of images over gRPC (flags -> config -> run)."""

import argparse
import logging
import sys

from embedder_service.checkpoint import POOLINGS, CheckpointError, resolve
from embedder_service.config import DEFAULT_MODEL, ONLINE_DEFAULT_MODEL, EmbedderConfig
from embedder_service.preprocess import PRESETS
from imgsim.logs import configure_logging
from imgsim.options import Options, choice, integer, number, parse_args
from imgsim.server.config import add_serving_options, serving_config

ENV = "IMGSIM_EMBEDDER"


def parse_config(argv: list[str] | None = None) -> EmbedderConfig:
    parser = argparse.ArgumentParser(prog="imgsim-embedder", description=__doc__)
    options = Options(parser, ENV)
    add_serving_options(options, default_port=50051)
    model = options.group("model")
    model.add("--model", DEFAULT_MODEL, f"checkpoint: a local folder or a hub id (online: {ONLINE_DEFAULT_MODEL})")
    model.add("--revision", None, "hub revision (branch, tag or commit) of --model")
    model.add("--device", "auto", "auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    model.add("--dtype", "auto", "compute dtype of the encoder (lower ones under autocast); auto: measured at start, "
              "the fastest whose embeddings keep cosine >= 0.9999 to float32's (a lower precision only if 1.3x "
              "faster than float32)",
              type=choice("auto", "float32", "bfloat16", "float16"))
    model.add("--pooling", "auto", "how one vector is taken from the model: cls (class token, the write-up's), mean, "
              "pooler, image_embeds (CLIP-like); auto: cls for ViT-like models, image_embeds for CLIP-like, the "
              "model's pooled output otherwise", type=choice(*POOLINGS))
    model.add_switch("--trust-remote-code", False, "run code shipped with the checkpoint; only for checkpoints "
                     "you trust")
    model.add("--torch-threads", 0, "intra-op threads of the encoder on CPU (0: the CPUs this process may use: "
              "its affinity, lowered to its container's CPU quota)",
              type=integer(0, 1024))
    batching = options.group("batching and limits")
    batching.add("--max-batch-size", 32, "most images in one forward pass", type=integer(1, 4096))
    batching.add("--max-batch-delay-ms", 5.0, "longest an image waits for others to fill its batch",
                 type=number(0, 10_000))
    batching.add("--max-queue", 512, "images admitted and not yet embedded; past it unary calls get "
                 "RESOURCE_EXHAUSTED and streams wait (streams may hold at most 3/4 of it)", type=integer(1, 1 << 20))
    batching.add("--max-queue-bytes", 1024 * 1024 * 1024, "encoded bytes of the images admitted and not yet "
                 "embedded (the same rules as --max-queue)", type=integer(1 << 20, 1 << 40))
    batching.add("--max-request-images", 256, "most images in one request message", type=integer(1, 65536))
    batching.add("--max-image-bytes", 20 * 1024 * 1024, "largest encoded image accepted", type=integer(1, 1 << 30))
    batching.add("--max-image-pixels", 40_000_000, "largest decoded image (width x height) accepted; guards against "
                 "decompression bombs", type=integer(1, 1 << 31))
    batching.add("--max-decoded-bytes", 192 * 1024 * 1024, "largest decoded image in bytes (pixels x bytes per "
                 "pixel of its mode), read from the header before decoding", type=integer(1 << 16, 1 << 34))
    preprocessing = options.group("preprocessing")
    preprocessing.add("--preprocessing", "processor", "processor (the checkpoint's image processor) or writeup (the "
                      "write-up's chain: resize the short side to 256/224 x H, centre crop H, scale, normalise)",
                      type=choice(*PRESETS))
    preprocessing.add("--preprocess-workers", 2, "threads decoding and resizing images beside the forward pass",
                      type=integer(1, 256))
    preprocessing.add_switch("--fast-preprocess", True, "reproduce a standard image processor's steps directly "
                             "(tensors equal to it) instead of calling it")
    preprocessing.add_switch("--draft-decode", True, "decode large images at reduced scale (never below twice "
                             "the model's input side nor 224 pixels; measured cosine >= 0.9999 to the faithful "
                             "path), which also bounds their memory; off: tensors equal to the processor's")
    args = vars(parse_args(parser, argv))
    if args["max_image_bytes"] > args["max_queue_bytes"]:
        parser.error(f"--max-image-bytes {args['max_image_bytes']} is over --max-queue-bytes {args['max_queue_bytes']}: "
                     "no image that large could ever be admitted")
    return EmbedderConfig(serving=serving_config(args, ENV, parser), **args)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    configure_logging(config.serving.log_level, config.serving.log_format)
    from imgsim.server.memory import keep_resident_memory_tight
    keep_resident_memory_tight()
    try:
        resolve(config.model, config.revision)  # a --model that names nothing fails before torch's seconds of import
    except CheckpointError as err:
        sys.exit(f"imgsim-embedder: {err}")
    # Imported late: torch and transformers take seconds to import, and --help should not wait for them.
    import torch
    from transformers.utils import logging as transformers_logging

    # transformers' own messages go through our handler (one format, JSON included), without progress bars.
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.disable_progress_bar()

    from embedder_service.server import start
    from imgsim.server.runner import BadServingConfig, PortInUse, serve_until_signalled

    from embedder_service.cpus import usable_cpus
    threads, why = (config.torch_threads, "--torch-threads") if config.torch_threads > 0 else usable_cpus()
    torch.set_num_threads(threads)
    logging.getLogger("embedder_service").info("torch uses %d intra-op threads (%s)", threads, why)
    try:
        serve_until_signalled(lambda stopping: start(config, stopping))
    except (PortInUse, BadServingConfig, CheckpointError) as err:
        sys.exit(f"imgsim-embedder: {err}")
    except (OSError, ValueError) as err:
        sys.exit(f"imgsim-embedder: cannot load model {config.model!r}: {err}")


if __name__ == "__main__":
    main()
