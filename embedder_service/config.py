"""The embedder's configuration, built once from flags and environment in __main__."""

from dataclasses import dataclass, field

from imgsim.server.config import ServingConfig

DEFAULT_MODEL = "assets/vit-digits"
ONLINE_DEFAULT_MODEL = "nateraw/vit-base-beans"


@dataclass(frozen=True)
class EmbedderConfig:
    serving: ServingConfig = field(default_factory=ServingConfig)
    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    trust_remote_code: bool = False
    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    max_queue: int = 512
    max_request_images: int = 256
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    preprocess_workers: int = 2
    fast_preprocess: bool = True
    jpeg_draft: bool = True
    torch_threads: int = 0
