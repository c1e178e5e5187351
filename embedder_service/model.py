"""The encoder: any vision checkpoint AutoModel loads, and the pooling that turns its output into one vector
per image. Knows nothing of gRPC."""

import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from embedder_service import checkpoint

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A lower-precision dtype is taken only when its embeddings stay this close to float32's.
AUTO_DTYPE_MIN_COSINE = 0.9999
AUTO_DTYPE_BATCH = 8
# ... and only when it is at least this much faster than float32: where the two time alike (the small
# offline default on an AVX-512 CPU: bfloat16 3.7 vs 4.5 ms in one start, 4.8 vs 4.7 ms in the next) the
# pick flipped between starts, and with it the last digits of every score. Where bfloat16 pays it is 2-3x
# faster (ViT-B/16 on a CPU with AVX512_BF16), far past this.
AUTO_DTYPE_MIN_SPEEDUP = 1.3
AUTO_DTYPE_ROUNDS = 3


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    revision: str
    dimension: int
    image_height: int
    image_width: int
    device: str
    dtype: str
    fingerprint: str
    pooling: str
    preprocessing: str
    dtype_reason: str


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested} asked for CUDA, but torch sees no CUDA device")
    return device


def pool(model, pixel_values: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per image: the class token, the mean of the features, the model's pooled output, or the
    projected image embedding (CLIP-like models)."""
    if pooling == "image_embeds":
        features = model.get_image_features(pixel_values=pixel_values)
        return features if torch.is_tensor(features) else features.pooler_output
    outputs = model(pixel_values=pixel_values)
    hidden = outputs.last_hidden_state
    if pooling == "cls":
        if hidden.dim() != 3:
            raise ValueError("--pooling cls needs a sequence of tokens; this model outputs feature maps")
        return hidden[:, 0]
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
    # mean: of the tokens (sequence models) or over height and width (convolutional feature maps)
    return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(dim=2)


def image_size(processor, preset: str) -> tuple[int, int]:
    """(height, width) the preprocessing produces."""
    if preset == "writeup":  # CenterCrop(size["height"])
        side = int((processor.size or {}).get("height") or (processor.size or {}).get("shortest_edge") or 224)
        return side, side
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if "height" in size:
        return int(size["height"]), int(size["width"])
    side = int(size.get("shortest_edge", 224))
    return side, side


class EmbeddingModel:
    """A loaded checkpoint that turns ready pixel tensors into embeddings."""

    def __init__(self, model_id: str, revision: str | None = None, device: str = "auto", dtype: str = "float32",
                 trust_remote_code: bool = False, pooling: str = "auto", preset: str = "processor"):
        self.source = checkpoint.resolve(model_id, revision)
        self.device = pick_device(device)
        self.processor, self.model, self.config, self.pooling = checkpoint.load(self.source, trust_remote_code,
                                                                                pooling)
        self.model.to(device=self.device).eval()
        self.preset = preset
        self.height, self.width = image_size(self.processor, preset)
        self.compute_dtype = torch.float32
        probe = self._probe_batch(1)
        try:
            self.dimension = int(self._forward(probe).shape[1])
        except Exception as err:  # a model that loads but cannot embed an image of its own size
            raise checkpoint.CheckpointError(f"{model_id} could not embed a test image with --pooling "
                                             f"{self.pooling}: {checkpoint.first_line(err)}") from None
        self.dtype, self.dtype_reason = self._choose_dtype(dtype)
        self.compute_dtype = DTYPES[self.dtype]
        self.dtype_family = self._family_of(self.dtype)
        self.weights_id = checkpoint.weights_identity(self.source, self.config)
        log.info("loaded %s on %s: %s pooling, dimension %d, %s (%s)", model_id, self.device, self.pooling,
                 self.dimension, self.dtype, self.dtype_reason)

    def _probe_batch(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        return rng.standard_normal((n, 3, self.height, self.width)).astype(np.float32)

    def info(self, preprocessing: dict) -> ModelInfo:
        fingerprint = checkpoint.fingerprint(self.weights_id, checkpoint.canonical_config(self.config), preprocessing,
                                             self.pooling, self.dtype_family)
        return ModelInfo(model_id=self.source.name, revision="" if self.source.folder else
                         (getattr(self.config, "_commit_hash", None) or self.source.revision or ""),
                         dimension=self.dimension, image_height=self.height, image_width=self.width,
                         device=str(self.device), dtype=self.dtype, fingerprint=fingerprint, pooling=self.pooling,
                         preprocessing=self.preset, dtype_reason=self.dtype_reason)

    def _forward(self, pixel_values: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(pixel_values)
        if self.device.type == "cuda":
            # Pinned host memory lets the copy run asynchronously with the previous batch's work.
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            return pool(self.model, batch, self.pooling)

    def embed(self, pixel_values: np.ndarray) -> np.ndarray:
        """(batch, channels, height, width) float32 pixels -> (batch, dimension) raw embeddings, float32."""
        return self._forward(pixel_values).float().cpu().numpy()

    def _autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def _choose_dtype(self, requested: str) -> tuple[str, str]:
        """`auto`: times float32 and the lower precisions this device has on a warm-up batch, and takes the
        fastest whose embeddings keep cosine >= AUTO_DTYPE_MIN_COSINE to float32's, float32 unless another is
        AUTO_DTYPE_MIN_SPEEDUP times faster (machines of one kind differ: without native bfloat16, bfloat16 ran
        7x slower than float32 here)."""
        if requested != "auto":
            return requested, "asked for"
        batch = self._probe_batch(AUTO_DTYPE_BATCH)
        faithful, reference = [], None
        for name in ["float32", "bfloat16"] + (["float16"] if self.device.type == "cuda" else []):
            self.compute_dtype = DTYPES[name]
            try:
                vectors = self.embed(batch)
            except RuntimeError as err:
                log.info("dtype %s unusable here: %s", name, checkpoint.first_line(err))
                continue
            if reference is None:
                reference = vectors
            cosine = float(np.min(np.sum(unit(vectors) * unit(reference), axis=1)))
            if cosine < AUTO_DTYPE_MIN_COSINE:
                log.info("dtype %s: cosine %.6f to float32, below %g", name, cosine, AUTO_DTYPE_MIN_COSINE)
            else:
                faithful.append(name)
        # Timed in turns, the best of each: a start often shares the cores with another (the index loading
        # beside it), and timing one dtype after the other gave the burst to whichever came first.
        timings = {name: float("inf") for name in faithful}
        for _ in range(AUTO_DTYPE_ROUNDS):
            for name in faithful:
                self.compute_dtype = DTYPES[name]
                timings[name] = min(timings[name], self._time(batch))
        self.compute_dtype = torch.float32
        measured = ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in timings.items())
        return fastest_worth_it(timings), (f"auto: fastest faithful on a batch of {AUTO_DTYPE_BATCH}, a lower "
                                           f"precision only if {AUTO_DTYPE_MIN_SPEEDUP:g}x faster ({measured})")

    def _family_of(self, name: str) -> str:
        """What the fingerprint records of the dtype: "float32-faithful" for float32 and for any lower precision
        whose embeddings keep cosine >= AUTO_DTYPE_MIN_COSINE to float32's on the probe batch (so replicas
        whose `auto` timed differently still share one space), else the dtype's own name."""
        if name == "float32":
            return "float32-faithful"
        batch = self._probe_batch(AUTO_DTYPE_BATCH)
        chosen = self.compute_dtype
        self.compute_dtype = torch.float32
        reference = self.embed(batch)
        self.compute_dtype = chosen
        cosine = float(np.min(np.sum(unit(self.embed(batch)) * unit(reference), axis=1)))
        return "float32-faithful" if cosine >= AUTO_DTYPE_MIN_COSINE else name

    def _time(self, batch: np.ndarray) -> float:
        started = time.perf_counter()
        self.embed(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def warm_up(self, max_batch_size: int) -> None:
        """Forward passes before serving, so the first callers do not pay for lazy initialisation; on a GPU
        also at the largest batch, which picks its kernels."""
        self.embed(self._probe_batch(1))
        if self.device.type == "cuda":
            self.embed(self._probe_batch(max_batch_size))


def fastest_worth_it(seconds: dict[str, float]) -> str:
    """The fastest dtype of `seconds` (each faithful), unless float32 is among them and the fastest is less
    than AUTO_DTYPE_MIN_SPEEDUP times faster than it."""
    best = min(seconds, key=seconds.get)
    if "float32" in seconds and seconds["float32"] < AUTO_DTYPE_MIN_SPEEDUP * seconds[best]:
        return "float32"
    return best


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
