"""imgsim-embedder: serves embeddings of images over gRPC (flags -> config -> run)."""

import argparse
import sys

from embedder_service.config import DEFAULT_MODEL, ONLINE_DEFAULT_MODEL, EmbedderConfig
from imgsim.flags import (add_option, add_serving_options, configure_logging, non_negative_float, parse_bool,
                          positive_int, serving_config)
from imgsim.serving import BadServingConfig, PortInUse, wait_for_stop_signal

ENV = "IMGSIM_EMBEDDER"


def parse_config(argv: list[str] | None = None) -> EmbedderConfig:
    parser = argparse.ArgumentParser(prog="imgsim-embedder", description=__doc__)
    add_serving_options(parser, ENV, default_port=50051)
    add_option(parser, "--model", f"{ENV}_MODEL", DEFAULT_MODEL,
               f"checkpoint: a local folder or a hub id (online: {ONLINE_DEFAULT_MODEL})")
    add_option(parser, "--revision", f"{ENV}_REVISION", None, "hub revision (branch, tag or commit) of --model")
    add_option(parser, "--device", f"{ENV}_DEVICE", "auto", "auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    add_option(parser, "--dtype", f"{ENV}_DTYPE", "float32", "compute dtype of the encoder (others under autocast)",
               choices=["float32", "bfloat16", "float16"])
    add_option(parser, "--trust-remote-code", f"{ENV}_TRUST_REMOTE_CODE", "false",
               "run code shipped with the checkpoint (true/false); off unless you trust the checkpoint",
               type=parse_bool)
    add_option(parser, "--max-batch-size", f"{ENV}_MAX_BATCH_SIZE", 32, "most images in one forward pass",
               type=positive_int)
    add_option(parser, "--max-batch-delay-ms", f"{ENV}_MAX_BATCH_DELAY_MS", 5.0,
               "longest an image waits for others to fill its batch", type=non_negative_float)
    add_option(parser, "--max-queue", f"{ENV}_MAX_QUEUE", 512,
               "images admitted and not yet embedded; past it unary calls get RESOURCE_EXHAUSTED, streams wait",
               type=positive_int)
    add_option(parser, "--max-request-images", f"{ENV}_MAX_REQUEST_IMAGES", 256, "most images in one request message",
               type=positive_int)
    add_option(parser, "--max-image-bytes", f"{ENV}_MAX_IMAGE_BYTES", 20 * 1024 * 1024,
               "largest encoded image accepted", type=positive_int)
    add_option(parser, "--max-image-pixels", f"{ENV}_MAX_IMAGE_PIXELS", 40_000_000,
               "largest decoded image (width x height) accepted; guards against decompression bombs",
               type=positive_int)
    add_option(parser, "--preprocess-workers", f"{ENV}_PREPROCESS_WORKERS", 2,
               "threads decoding and resizing images beside the forward pass", type=positive_int)
    add_option(parser, "--fast-preprocess", f"{ENV}_FAST_PREPROCESS", "true",
               "reproduce a standard image processor's steps directly (tensors equal to it) instead of calling it",
               type=parse_bool)
    add_option(parser, "--jpeg-draft", f"{ENV}_JPEG_DRAFT", "true",
               "decode large JPEGs at reduced scale (cosine >= 0.999 to the processor's path); false: bit-faithful",
               type=parse_bool)
    add_option(parser, "--torch-threads", f"{ENV}_TORCH_THREADS", 0,
               "intra-op threads of the encoder on CPU (0: torch's default, one per core)", type=int)
    args = vars(parser.parse_args(argv))
    return EmbedderConfig(serving=serving_config(args, ENV), **args)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    configure_logging(config.serving.log_level, config.serving.log_format)
    # Imported late: torch and transformers take seconds to import, and --help should not wait for them.
    import torch

    from embedder_service.server import create_server

    # Measured on 2 cores (bench/embedder.py --quick): one thread per core streamed 1.13x the in-process
    # pipeline, leaving a core to the preprocessing workers only 0.81x; the workers mostly wait on PIL.
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    try:
        running = create_server(config)
    except (PortInUse, BadServingConfig) as err:
        sys.exit(f"imgsim-embedder: {err}")
    except (OSError, ValueError) as err:
        sys.exit(f"imgsim-embedder: cannot load model {config.model!r}: {err}")
    wait_for_stop_signal()
    running.stop()


if __name__ == "__main__":
    main()
