"""Whatever a caller calls an image (bytes, a path, a PIL image, a numpy array) as encoded bytes to send."""

import io
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

ImageLike = Union[bytes, bytearray, str, Path, Image.Image, np.ndarray, dict]


def encoded(image: ImageLike) -> bytes:
    """Encoded image bytes. Files and bytes go as they are (no re-encoding); pixels are sent as lossless PNG."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, dict):  # a `datasets` Image feature read with decode=False
        return image["bytes"] if image.get("bytes") else Path(image["path"]).read_bytes()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"cannot send {type(image).__name__} as an image: give bytes, a path, a PIL image or an array")


def is_single(images: Any) -> bool:
    return isinstance(images, (bytes, bytearray, str, Path, Image.Image, dict)) or (
        isinstance(images, np.ndarray) and images.ndim <= 3 and images.dtype == np.uint8)
