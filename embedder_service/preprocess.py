"""Encoded image bytes -> RGB picture -> the checkpoint's pixel tensor, with the limits enforced on the way."""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedder_service.errors import InvalidImage


def describe(position: int, image_id: str) -> str:
    return f"image {position}" + (f" (id {image_id!r})" if image_id else "")


def decode(data: bytes, max_pixels: int, label: str) -> Image.Image:
    """Decodes an encoded image into upright RGB. Raises InvalidImage naming `label` and what was wrong."""
    if not data:
        raise InvalidImage(f"{label}: no bytes")
    try:
        with warnings.catch_warnings():
            # PIL warns about large images; the limit below is ours and explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            width, height = picture.size
            # Checked from the header, before any pixel is decoded: a small file can declare a huge image.
            if width * height > max_pixels:
                raise InvalidImage(f"{label}: {width}x{height} pixels is over the limit of {max_pixels} pixels")
            picture.seek(0)  # animated images: the first frame
            picture = ImageOps.exif_transpose(picture)
            return to_rgb(picture)
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage(f"{label}: not a recognised image format ({len(data)} bytes)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InvalidImage(f"{label}: cannot decode image: {err}") from None


def to_rgb(picture: Image.Image) -> Image.Image:
    if picture.mode == "RGB":
        picture.load()
        return picture
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        # Transparent pixels are composited on white, as a viewer would show them, not on their hidden colour.
        rgba = picture.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip at 255.
        array = np.asarray(picture, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        return Image.fromarray(np.uint8(np.round(array * (255.0 / peak)))).convert("RGB")
    return picture.convert("RGB")


class Preprocessor:
    """Turns encoded images into the pixel tensors the checkpoint's own AutoImageProcessor makes."""

    def __init__(self, processor, max_pixels: int):
        self.processor = processor
        self.max_pixels = max_pixels

    def __call__(self, data: bytes, label: str) -> np.ndarray:
        picture = decode(data, self.max_pixels, label)
        try:
            return self.processor(images=picture, return_tensors="np")["pixel_values"][0].astype(np.float32)
        except Exception as err:  # the processor is third-party code: any failure is this image's problem
            raise InvalidImage(f"{label}: the image processor refused it: {err}") from None
