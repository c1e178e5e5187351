"""Benchmarks the embedder: the bare model, the in-process pipeline, the service, and the write-up's own way.

On one machine in one run, medians of repeats, for a ViT-B/16-shaped model (random weights) and 500x500
JPEGs like beans, it prints:
  - images/s of the bare model on ready tensors at batch 1, 8 and 32 (the ceiling);
  - the same checkpoint at batch 8 in PyTorch eager float32 and bfloat16, ONNX Runtime and OpenVINO (exported
    here, same threads, same pixels), with the lowest cosine of each one's embeddings to PyTorch float32's;
  - images/s of the whole pipeline in-process (decode + preprocess + model) and through the service's
    EmbedStream, timed in alternation, and their ratio (median of the rounds' ratios);
  - served images/s through Embed (batches of 32), and with 32 concurrent clients each sending one image
    per call (dynamic batching), timed in alternation, and their ratio;
  - p50/p99 latency of single-image calls at light load;
  - preprocessing ms/image, fast path vs AutoImageProcessor, for 500x500 and 3000x2000 JPEGs;
  - draft decoding: the lowest cosine to the bit-faithful path, and its preprocessing speed-up, per image
    size, for the 224x224 ViT and for the shipped 32x32 model;
  - the write-up's pipeline (dataset.map(extract_fn, batched=True) in-process) vs client.index_dataset,
    alternated (medians of --repeats rounds, the ratio the median of the rounds' own).
It ends with a summary, one `name: value` line per figure and ratio.

    python bench/embedder.py --quick     # a small ViT and fewer images
    python bench/embedder.py             # ViT-B/16 (several minutes on a CPU)
"""

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from alternate import alternate, median_ratio  # noqa: E402
from client import SimilarityClient  # noqa: E402
from client.local_services import free_port, start_service  # noqa: E402
from embedder_service.model import EmbeddingModel  # noqa: E402
from embedder_service.preprocess import DRAFT_MARGIN, DRAFT_MIN_SIDE, Limits, ReferencePreprocessor, make_preprocessor  # noqa: E402
from imgsim.assets import DEFAULT_MODEL  # noqa: E402
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc  # noqa: E402

import grpc  # noqa: E402

LIMITS = Limits(max_pixels=10**9, max_decoded_bytes=2**40)


def photo_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG at quality 90: smooth colour shapes, coarse texture and a little sensor grain (about
    0.9 MB at 3000x2000, like a camera photo; per-pixel white noise alone would make it 1.7 MB and harder
    to decode than any photo)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    texture = np.asarray(Image.fromarray(rng.integers(0, 256, (max(1, height // 8), max(1, width // 8)), dtype=np.uint8))
                         .resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)[..., None]
    pixels = base + (texture - 128) / 8 + rng.normal(0, 2, (height, width, 1))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_checkpoint(folder: Path, quick: bool) -> None:
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768) if quick \
        else ViTConfig()  # ViTConfig() is ViT-B/16 at 224x224
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)


def flops_per_image(config) -> float:
    """Multiply-adds x 2 of a ViT forward pass: patch embedding, then per layer QKV, attention, output and MLP."""
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    d, mlp = config.hidden_size, config.intermediate_size
    patch = (tokens - 1) * d * 3 * config.patch_size ** 2
    per_layer = tokens * (4 * d * d + 2 * d * mlp) + 2 * tokens * tokens * d
    return 2.0 * (patch + config.num_hidden_layers * per_layer)


def matmul_flops_per_s(dtype: torch.dtype, size: int = 2048, repeats: int = 15) -> float:
    """Dense matmul throughput of this machine's CPU with torch's threads: the peak a model is judged against,
    so the best of the repeats (a median of 5 once came out at 158 GFLOP/s where other runs saw 223-261,
    and put the model at 129 % of it)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    return 2.0 * size ** 3 / min(median_seconds(lambda: a @ b, 1) for _ in range(repeats))


def median_seconds(action, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def bare_model(model: EmbeddingModel, batch: int, images: int, repeats: int) -> float:
    pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    passes = max(1, images // batch)
    return passes * batch / median_seconds(lambda: [model.embed(pixels) for _ in range(passes)], repeats)


class OnnxClassToken(torch.nn.Module):
    """The embedder's default pooling (the CLS token of last_hidden_state) as one exportable graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


def runtime_peers(model: EmbeddingModel, checkpoint: Path, folder: Path, batch: int, repeats: int,
                  figures: dict) -> None:
    """The same checkpoint executed by other runtimes, same threads, same pixels, beside PyTorch eager
    float32 (and bfloat16 autocast): images/s at `batch` and the lowest cosine of their embeddings to
    PyTorch float32's. A runtime not installed is reported as such (pip install onnx onnxruntime openvino)."""
    threads = torch.get_num_threads()
    pixels = np.random.default_rng(1).standard_normal((batch, 3, model.height, model.width)).astype(np.float32)
    reference = model.embed(pixels)
    runs = {"torch_fp32": lambda: model.embed(pixels)}
    bf16 = EmbeddingModel(str(checkpoint), dtype="bfloat16")
    runs["torch_bf16"] = lambda: bf16.embed(pixels)
    try:
        import onnxruntime
        onnx_path = folder / "vit.onnx"
        torch.onnx.export(OnnxClassToken(model.model), (torch.from_numpy(pixels),), str(onnx_path), dynamo=False,
                          input_names=["pixel_values"], output_names=["embedding"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        runs["onnxruntime"] = lambda: session.run(None, {"pixel_values": pixels})[0]
        try:
            import openvino
            compiled = openvino.compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                      "INFERENCE_PRECISION_HINT": "f32"})
            runs["openvino"] = lambda: compiled(pixels)[0]
        except ImportError:
            print("  openvino: not installed", flush=True)
    except ImportError:
        print("  onnxruntime: not installed", flush=True)
    for name, run in runs.items():
        vectors = np.asarray(run(), dtype=np.float32)  # warm-up, and the vectors compared
        figures[f"runtime_{name}_min_cosine_to_torch_fp32"] = float(
            np.sum(unit_rows(vectors) * unit_rows(reference), axis=1).min())
    # In alternation, one pass of each per round: timed in blocks, one run put OpenVINO at 0.84x PyTorch and
    # the next at 1.20x.
    seconds = alternate(runs, max(repeats, 7))
    for name in runs:
        rate = batch / statistics.median(seconds[name])
        figures[f"runtime_{name}_batch{batch}_images_per_s"] = rate
        figures[f"ratio_runtime_{name}_vs_torch_fp32"] = median_ratio(seconds["torch_fp32"], seconds[name])
        print(f"  {name}: {rate:.2f} images/s at batch {batch}, {figures[f'ratio_runtime_{name}_vs_torch_fp32']:.2f}x "
              f"PyTorch float32, lowest cosine to it {figures[f'runtime_{name}_min_cosine_to_torch_fp32']:.6f}",
              flush=True)


def pipeline_vs_stream(model: EmbeddingModel, stub, photos: list[bytes], batch: int, repeats: int,
                       figures: dict) -> None:
    """The whole pipeline in-process (decode + preprocess + model, batches of `batch`) and the service's
    EmbedStream, timed in alternation, round by round (at least 3), so that a noisy machine's drift falls
    on both: sequential blocks minutes apart gave this ratio 0.82 in one run and 0.98 in another."""
    preprocess = make_preprocessor(model.processor, LIMITS)

    def in_process():
        for start in range(0, len(photos), batch):
            model.embed(np.stack([preprocess(p, "x") for p in photos[start:start + batch]]))

    def embed_stream():
        requests = (embedder_pb2.EmbedStreamRequest(images=[embedder_pb2.Image(id=str(i), data=p)])
                    for i, p in enumerate(photos))
        for _ in stub.EmbedStream(requests):
            pass

    seconds = alternate({"inprocess_pipeline": in_process, "served_embedstream": embed_stream}, max(3, repeats))
    for name, values in seconds.items():
        figures[f"{name}_images_per_s"] = len(photos) / statistics.median(values)
    figures["ratio_embedstream_vs_inprocess_pipeline"] = median_ratio(
        seconds["inprocess_pipeline"], seconds["served_embedstream"])


def preprocessing_ms(processor, data: bytes, repeats: int) -> dict[str, float]:
    """ms/image of the processor's own path, the bit-faithful fast path (tensors equal to the processor's)
    and the fast path with draft decoding, measured in alternation (drift hits all three)."""
    paths = {"reference": ReferencePreprocessor(processor, LIMITS),
             "fast": make_preprocessor(processor, LIMITS, draft=False),
             "fast_draft": make_preprocessor(processor, LIMITS, draft=True)}
    calls = 10
    times = alternate({name: (lambda path=path: [path(data, "x") for _ in range(calls)])
                       for name, path in paths.items()}, repeats)
    return {name: 1000 * statistics.median(seconds) / calls for name, seconds in times.items()}


def draft_faithfulness(model: EmbeddingModel, name: str, sizes: list[tuple[int, int]], figures: dict) -> None:
    """For each image size: the lowest cosine between embeddings with and without draft decoding over a few
    photos, and the preprocessing speed-up draft decoding buys (fast path both ways, alternated)."""
    drafted = make_preprocessor(model.processor, LIMITS, draft=True)
    faithful = make_preprocessor(model.processor, LIMITS, draft=False)
    for width, height in sizes:
        photos = [photo_jpeg(width, height, seed) for seed in range(4)]
        with_draft = model.embed(np.stack([drafted(p, "x") for p in photos]))
        without = model.embed(np.stack([faithful(p, "x") for p in photos]))
        cosines = np.sum(unit_rows(with_draft) * unit_rows(without), axis=1)
        seconds = alternate({"draft": lambda: [drafted(p, "x") for p in photos],
                             "faithful": lambda: [faithful(p, "x") for p in photos]}, 3)
        key = f"draft_{name}_{width}x{height}"
        figures[f"{key}_min_cosine"] = float(cosines.min())
        figures[f"{key}_preprocess_speedup"] = statistics.median(seconds["faithful"]) / statistics.median(
            seconds["draft"])
        print(f"  draft {name} {width}x{height}: min cosine {cosines.min():.6f}, preprocessing "
              f"{figures[f'{key}_preprocess_speedup']:.2f}x faster", flush=True)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)


def served(stub, photos: list[bytes], repeats: int, figures: dict) -> None:
    def embed_batches():
        for start in range(0, len(photos), 32):
            stub.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=p) for p in photos[start:start + 32]]))

    def concurrent_singles():
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda p: stub.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=p)])),
                          photos))

    seconds = alternate({"served_embed_batch32": embed_batches, "served_32_concurrent_single": concurrent_singles},
                        max(3, repeats))
    for name, values in seconds.items():
        figures[f"{name}_images_per_s"] = len(photos) / statistics.median(values)
    figures["ratio_32_concurrent_single_vs_batch32"] = median_ratio(
        seconds["served_embed_batch32"], seconds["served_32_concurrent_single"])
    latencies = []
    for photo in photos[:max(20, len(photos) // 2)]:
        started = time.perf_counter()
        stub.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=photo)]))
        latencies.append(1000 * (time.perf_counter() - started))
    figures["single_image_latency_p50_ms"] = float(np.percentile(latencies, 50))
    figures["single_image_latency_p99_ms"] = float(np.percentile(latencies, 99))


def write_up_vs_service(model: EmbeddingModel, address: str, photos: list[bytes], rounds: int, figures: dict) -> None:
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    dataset = Dataset.from_dict({"image": [{"bytes": p, "path": None} for p in photos]},
                                features=Features({"image": ImageFeature()}))
    processor, encoder = model.processor, model.model

    def extract_fn(batch):  # the write-up's extract_embeddings, with the processor in place of torchvision
        pixels = processor(images=[image.convert("RGB") for image in batch["image"]], return_tensors="pt")
        with torch.no_grad():
            return {"embeddings": encoder(**pixels).last_hidden_state[:, 0].cpu()}

    with tempfile.TemporaryDirectory() as data_dir:
        index = start_service("index_service", ["--data-dir", data_dir], Path(data_dir) / "index.log")
        try:
            with SimilarityClient(embedder=address, index=index.address, timeout=600) as client:
                # Rounds after the first replace the same ids, which costs the index little beside embedding.
                seconds = alternate({
                    "writeup_dataset_map": lambda: dataset.map(extract_fn, batched=True, batch_size=32,
                                                               load_from_cache_file=False),
                    "client_index_dataset": lambda: client.index_dataset(dataset, label_column=None, batch_size=32,
                                                                         progress=False)}, rounds)
        finally:
            index.stop()
    figures["writeup_dataset_map_images_per_s"] = len(photos) / statistics.median(seconds["writeup_dataset_map"])
    figures["client_index_dataset_images_per_s"] = len(photos) / statistics.median(seconds["client_index_dataset"])
    figures["ratio_index_dataset_vs_writeup_map"] = 1 / median_ratio(seconds["client_index_dataset"],
                                                                     seconds["writeup_dataset_map"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small ViT and fewer images")
    parser.add_argument("--images", type=int, default=None, help="images per measurement [64; quick 128]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--service-torch-threads", type=int, default=0, help="the service's --torch-threads")
    args = parser.parse_args()
    images = args.images or (128 if args.quick else 64)
    figures: dict[str, float] = {}
    photos = [photo_jpeg(500, 500, seed) for seed in range(images)]
    big = photo_jpeg(3000, 2000, 99)

    with tempfile.TemporaryDirectory(prefix="bench-embedder-") as tmp:
        checkpoint = Path(tmp) / "vit"
        make_checkpoint(checkpoint, args.quick)
        model = EmbeddingModel(str(checkpoint), dtype="float32")
        print(f"model: {'small ViT' if args.quick else 'ViT-B/16'}, {torch.get_num_threads()} torch threads "
              f"in-process, {images} images of 500x500", flush=True)
        for batch in (1, 8, 32):
            figures[f"bare_model_batch{batch}_images_per_s"] = bare_model(model, batch, images if batch > 1 else
                                                                           max(8, images // 4), args.repeats)
            print(f"  bare batch {batch}: {figures[f'bare_model_batch{batch}_images_per_s']:.2f}", flush=True)
        # --quick keeps the suite's run short: a machine without native bfloat16 takes seconds per 768^3 product.
        figures["matmul_fp32_gflops"] = matmul_flops_per_s(torch.float32, repeats=5 if args.quick else 15) / 1e9
        figures["matmul_bf16_gflops"] = matmul_flops_per_s(torch.bfloat16, size=256 if args.quick else 768,
                                                           repeats=2 if args.quick else 5) / 1e9
        figures["model_gflops_per_image"] = flops_per_image(model.model.config) / 1e9
        figures["bare_model_batch32_efficiency_vs_fp32_matmul"] = (figures["bare_model_batch32_images_per_s"]
                                                                   * figures["model_gflops_per_image"]
                                                                   / figures["matmul_fp32_gflops"])
        print(f"  matmul fp32 {figures['matmul_fp32_gflops']:.1f} GFLOP/s, bf16 {figures['matmul_bf16_gflops']:.1f}; "
              f"the model at batch 32 reaches {figures['bare_model_batch32_efficiency_vs_fp32_matmul']:.0%} of fp32",
              flush=True)
        print(f"runtimes, {torch.get_num_threads()} threads each:", flush=True)
        runtime_peers(model, checkpoint, Path(tmp), 8, args.repeats, figures)
        for name, data in (("500x500", photos[0]), ("3000x2000", big)):
            ms = preprocessing_ms(model.processor, data, args.repeats)
            for path, value in ms.items():
                figures[f"preprocess_{path}_ms_{name}"] = value
            figures[f"preprocess_speedup_faithful_{name}"] = ms["reference"] / ms["fast"]
            figures[f"preprocess_speedup_with_draft_{name}"] = ms["reference"] / ms["fast_draft"]
            print(f"  preprocessing {name}: processor {ms['reference']:.2f} ms, fast (bit-faithful) "
                  f"{ms['fast']:.2f} ms, fast with draft {ms['fast_draft']:.2f} ms", flush=True)

        print(f"draft decoding (reduce while both sides stay >= {DRAFT_MARGIN}x the model input and >= "
              f"{DRAFT_MIN_SIDE} pixels):", flush=True)
        sizes = [(500, 500), (1024, 768), (3000, 2000)]
        draft_faithfulness(model, "vit224", sizes, figures)
        draft_faithfulness(EmbeddingModel(str(DEFAULT_MODEL), dtype="float32"), "shipped32", sizes, figures)

        port = free_port()
        log_path = Path(tmp) / "embedder.log"
        with log_path.open("w") as log:
            process = subprocess.Popen([sys.executable, "-m", "embedder_service", "--port", str(port), "--model",
                                        str(checkpoint), "--max-batch-size", "32", "--torch-threads",
                                        str(args.service_torch_threads), "--log-level", "WARNING"],
                                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        address = f"127.0.0.1:{port}"
        try:
            from imgsim.healthcheck import is_serving
            while not is_serving(address, timeout=1.0):
                if process.poll() is not None:
                    sys.exit(log_path.read_text())
                time.sleep(0.2)
            with grpc.insecure_channel(address) as channel:
                stub = embedder_pb2_grpc.EmbedderStub(channel)
                stub.Embed(embedder_pb2.EmbedRequest(images=[embedder_pb2.Image(data=photos[0])]))  # warm
                pipeline_vs_stream(model, stub, photos, 32, args.repeats, figures)
                served(stub, photos, args.repeats, figures)
            write_up_vs_service(model, address, photos, args.repeats, figures)
        finally:
            process.terminate()
            process.wait()

    figures["ratio_embedstream_vs_bare_model_batch32"] = (figures["served_embedstream_images_per_s"]
                                                          / figures["bare_model_batch32_images_per_s"])
    print("\nsummary")
    for name, value in figures.items():
        print(f"{name}: {value:.6f}" if "cosine" in name else f"{name}: {value:.4g}")  # 0.99996 is not 1


if __name__ == "__main__":
    main()
