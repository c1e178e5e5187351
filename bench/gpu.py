"""The GPU path of the embedder, measured on a lent device in one short run (bench/gpu.sh; under 8 minutes
on one H200). ViT-B/16 with random weights at 224x224, as bench/embedder.py:

  1. the device's dense bfloat16 matmul throughput (8192^2, the peak the model is judged against);
  2. model only: images/s on ready tensors at batch 64-512 under bfloat16 autocast, and the model's
     efficiency (images/s x FLOPs per image / measured peak); then torch.compile at the best batch;
  3. JPEG decoding of 500x500 photos: torchvision's decode_jpeg on the GPU (batched) vs PIL on a pool of
     every CPU core (what the service does today);
  4. end to end: the real embedder service (--device cuda) fed 500x500 JPEG bytes through EmbedStream from
     several concurrent client streams.

--dry-run runs every step on the CPU with a small ViT and a few images, so the suite keeps it working on
machines without a device; its figures mean nothing. Ends with `name: value` lines.

    bash bench/gpu.sh              # on the device
    python bench/gpu.py --dry-run  # anywhere
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from embedder import flops_per_image, make_checkpoint, photo_jpeg  # noqa: E402
from client.local_services import free_port  # noqa: E402
from imgsim.healthcheck import is_serving  # noqa: E402
from imgsim.v1 import embedder_pb2, embedder_pb2_grpc  # noqa: E402

FIGURES: dict[str, float] = {}


def say(name: str, value: float) -> None:
    FIGURES[name] = value
    print(f"  {name}: {value:.4g}", flush=True)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(action, device: str, repeats: int = 3) -> float:
    """Median seconds of `action` (after one warm-up call)."""
    action()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak(device: str, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats=5)
    return 2.0 * size ** 3 / seconds


def model_only(checkpoint: Path, device: str, batches: list[int], images: int, peak: float, compile_too: bool) -> None:
    from transformers import ViTModel
    model = ViTModel.from_pretrained(checkpoint, add_pooling_layer=False).to(device).eval()
    per_image = flops_per_image(model.config)
    say("model_gflops_per_image", per_image / 1e9)
    autocast_dtype = torch.bfloat16

    def rate(forward, batch: int) -> float:
        pixels = torch.randn(batch, 3, model.config.image_size, model.config.image_size, device=device)
        passes = max(2, images // batch)

        def run():
            with torch.inference_mode(), torch.autocast(device_type=device, dtype=autocast_dtype):
                for _ in range(passes):
                    forward(pixel_values=pixels).last_hidden_state[:, 0]
        return passes * batch / timed(run, device)

    best = (0.0, batches[0])
    for batch in batches:
        images_per_s = rate(model, batch)
        say(f"model_only_bf16_batch{batch}_images_per_s", images_per_s)
        best = max(best, (images_per_s, batch))
    say("model_only_bf16_best_images_per_s", best[0])
    say("model_only_bf16_efficiency_vs_matmul_peak", best[0] * per_image / peak)
    if compile_too:
        try:
            compiled = torch.compile(model)
            say(f"model_only_bf16_compiled_batch{best[1]}_images_per_s", rate(compiled, best[1]))
        except Exception as err:  # noqa: BLE001 - a figure missing is reported, not fatal
            print(f"  torch.compile failed: {str(err).splitlines()[0][:200]}", flush=True)


def decoding(photos: list[bytes], device: str) -> None:
    from PIL import Image
    import io

    def with_pil():
        with ThreadPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(lambda data: Image.open(io.BytesIO(data)).convert("RGB").load(), photos))
    say("decode_pil_all_cores_images_per_s", len(photos) / timed(with_pil, "cpu"))
    try:
        from torchvision.io import decode_jpeg
    except Exception as err:  # noqa: BLE001 - torchvision does not import beside the CPU torch of our machines
        print(f"  torchvision unavailable ({type(err).__name__}): GPU decoding not measured", flush=True)
        return
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in photos]
    say(f"decode_torchvision_{device}_images_per_s",
        len(photos) / timed(lambda: decode_jpeg(encoded, device=device), device))


def end_to_end(checkpoint: Path, device: str, photos: list[bytes], streams: int, batch: int, workdir: Path) -> None:
    port = free_port()
    log_path = workdir / "embedder.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedder_service", "--port", str(port), "--model", str(checkpoint),
             "--device", device, "--max-batch-size", str(batch), "--log-level", "WARNING"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while not is_serving(address, timeout=1.0):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the embedder did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        import grpc
        per_stream = [photos[i::streams] for i in range(streams)]

        def one_stream(mine: list[bytes]) -> int:
            with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20),
                                                         ("grpc.max_receive_message_length", 64 << 20)]) as channel:
                stub = embedder_pb2_grpc.EmbedderStub(channel)
                requests = (embedder_pb2.EmbedStreamRequest(images=[embedder_pb2.Image(id=str(i), data=data)
                                                                    for i, data in enumerate(mine[start:start + 16])])
                            for start in range(0, len(mine), 16))
                return sum(len(reply.results) for reply in stub.EmbedStream(requests))

        def run():
            threads = [threading.Thread(target=one_stream, args=(mine,)) for mine in per_stream]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        say(f"end_to_end_embedstream_{streams}_streams_images_per_s", len(photos) / timed(run, "cpu", repeats=2))
    finally:
        process.terminate()
        process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU, small and fast")
    parser.add_argument("--batches", default="64,128,256,512")
    parser.add_argument("--images", type=int, default=4096, help="images per model-only measurement")
    parser.add_argument("--photos", type=int, default=4096, help="500x500 JPEGs sent end to end")
    parser.add_argument("--streams", type=int, default=16, help="concurrent EmbedStream calls")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    if args.dry_run:
        device, batches, args.images, args.photos, args.streams = "cpu", [2, 4], 8, 12, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/gpu.py: no CUDA device here; --dry-run runs it on the CPU")
        device, batches = "cuda", [int(b) for b in args.batches.split(",")]
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    photos = [photo_jpeg(500, 500, seed) for seed in range(min(args.photos, 256))]
    photos = (photos * (args.photos // len(photos) + 1))[:args.photos]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        checkpoint = Path(tmp) / "vit"
        make_checkpoint(checkpoint, quick=args.dry_run)
        print("matmul peak", flush=True)
        peak = matmul_peak(device, torch.bfloat16 if device == "cuda" else torch.float32, 512 if args.dry_run else 8192)
        say("matmul_peak_tflops", peak / 1e12)
        print("model only", flush=True)
        model_only(checkpoint, device, batches, args.images, peak, compile_too=not (args.no_compile or args.dry_run))
        if device == "cuda":
            torch.cuda.empty_cache()
        print("JPEG decoding", flush=True)
        decoding(photos[:256], device)
        print("end to end", flush=True)
        end_to_end(checkpoint, device, photos, args.streams, max(batches), Path(tmp))
    print("\nsummary")
    for name, value in FIGURES.items():
        print(f"{name}: {value:.4g}")


if __name__ == "__main__":
    main()
