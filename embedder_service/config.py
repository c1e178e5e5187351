"""The embedder's configuration, built once from flags and environment in __main__."""

from dataclasses import dataclass

DEFAULT_MODEL = "assets/vit-digits"
ONLINE_DEFAULT_MODEL = "nateraw/vit-base-beans"


@dataclass(frozen=True)
class EmbedderConfig:
    host: str = "127.0.0.1"
    port: int = 50051
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
    max_workers: int = 32
    grace_s: float = 10.0
    log_level: str = "INFO"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def max_message_bytes(self) -> int:
        # A request carries up to max_request_images images, but the budget is what one large request may
        # bring, plus the proto framing; one image at the limit must fit.
        return max(self.max_image_bytes + 1024 * 1024, 64 * 1024 * 1024)
