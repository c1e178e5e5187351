"""The embedder's configuration, built once from flags and environment in __main__."""

from dataclasses import dataclass, field

from imgsim.assets import DEFAULT_MODEL
from imgsim.server.config import ServingConfig

ONLINE_DEFAULT_MODEL = "nateraw/vit-base-beans"


@dataclass(frozen=True)
class EmbedderConfig:
    serving: ServingConfig = field(default_factory=ServingConfig)
    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    pooling: str = "auto"
    preprocessing: str = "processor"
    trust_remote_code: bool = False
    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    max_queue: int = 512
    max_queue_bytes: int = 1024 * 1024 * 1024
    max_request_images: int = 256
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_decoded_bytes: int = 192 * 1024 * 1024
    preprocess_workers: int = 2
    fast_preprocess: bool = True
    draft_decode: bool = True
    torch_threads: int = 0
