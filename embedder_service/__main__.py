"""imgsim-embedder: serves embeddings of images over gRPC (flags -> config -> run)."""

import argparse
import sys

from embedder_service.config import DEFAULT_MODEL, ONLINE_DEFAULT_MODEL, EmbedderConfig
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
    model.add("--dtype", "float32", "compute dtype of the encoder (others run under autocast)",
              type=choice("float32", "bfloat16", "float16"))
    model.add_switch("--trust-remote-code", False, "run code shipped with the checkpoint; only for checkpoints "
                     "you trust")
    model.add("--torch-threads", 0, "intra-op threads of the encoder on CPU (0: torch's default, one per core)",
              type=integer(0, 1024))
    batching = options.group("batching and limits")
    batching.add("--max-batch-size", 32, "most images in one forward pass", type=integer(1, 4096))
    batching.add("--max-batch-delay-ms", 5.0, "longest an image waits for others to fill its batch",
                 type=number(0, 10_000))
    batching.add("--max-queue", 512, "images admitted and not yet embedded; past it unary calls get "
                 "RESOURCE_EXHAUSTED and streams wait (streams may hold at most 3/4 of it)", type=integer(1, 1 << 20))
    batching.add("--max-request-images", 256, "most images in one request message", type=integer(1, 65536))
    batching.add("--max-image-bytes", 20 * 1024 * 1024, "largest encoded image accepted", type=integer(1, 1 << 30))
    batching.add("--max-image-pixels", 40_000_000, "largest decoded image (width x height) accepted; guards against "
                 "decompression bombs", type=integer(1, 1 << 31))
    preprocessing = options.group("preprocessing")
    preprocessing.add("--preprocess-workers", 2, "threads decoding and resizing images beside the forward pass",
                      type=integer(1, 256))
    preprocessing.add_switch("--fast-preprocess", True, "reproduce a standard image processor's steps directly "
                             "(tensors equal to it) instead of calling it")
    preprocessing.add_switch("--jpeg-draft", True, "decode large JPEGs at reduced scale (cosine >= 0.999 to the "
                             "processor's path); off: bit-faithful")
    args = vars(parse_args(parser, argv))
    return EmbedderConfig(serving=serving_config(args, ENV, parser), **args)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    configure_logging(config.serving.log_level, config.serving.log_format)
    # Imported late: torch and transformers take seconds to import, and --help should not wait for them.
    import torch

    from embedder_service.server import start
    from imgsim.server.runner import BadServingConfig, PortInUse, serve_until_signalled

    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    try:
        serve_until_signalled(lambda stopping: start(config, stopping))
    except (PortInUse, BadServingConfig) as err:
        sys.exit(f"imgsim-embedder: {err}")
    except (OSError, ValueError) as err:
        sys.exit(f"imgsim-embedder: cannot load model {config.model!r}: {err}")


if __name__ == "__main__":
    main()
