"""Encoded image bytes -> an upright picture (RGB, or L for greyscale), within limits on pixels and memory.

Memory: the decoded size (width x height x bytes per pixel of the decoder's mode) is checked from the header
before anything is decoded. 16-bit images are scaled to 8 bits in strips of rows (never a float64 copy of
the whole image) and transparency is composited on white. With `reduce_to` (draft decoding), a JPEG is
decoded at 1/2, 1/4 or 1/8 scale and other formats are box-reduced right after decoding, in both cases only
while both sides stay at least `reduce_to` long, so the full-size picture never gets copied or converted.
"""

import io
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedder_service.errors import InvalidImage

log = logging.getLogger(__name__)
# Bytes per pixel as each mode decodes (modes not listed: 4, the most any takes).
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
              "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "CMYK": 4, "I": 4, "F": 4}
STRIP_ROWS = 256


def describe(position: int, image_id: str) -> str:
    return f"image {position}" + (f" (id {image_id!r})" if image_id else "")


def decode(data: bytes, max_pixels: int, max_decoded_bytes: int, label: str,
           reduce_to: int | None = None) -> Image.Image:
    """The picture upright, as RGB or L. Raises InvalidImage naming `label` and what was wrong."""
    if not data:
        raise InvalidImage(f"{label}: no bytes", "empty")
    try:
        with warnings.catch_warnings():
            # PIL warns about large images; the limits below are ours and explicit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            width, height = picture.size
            # Checked from the header, before any pixel is decoded: a small file can declare a huge image.
            if width * height > max_pixels:
                raise InvalidImage(f"{label}: its size {width}x{height} pixels is over the limit of {max_pixels} "
                                   "pixels", "too_large")
            decoded = width * height * MODE_BYTES.get(picture.mode, 4)
            if decoded > max_decoded_bytes:
                raise InvalidImage(f"{label}: it decodes to {decoded} bytes ({width}x{height} {picture.mode}), over "
                                   f"the limit of {max_decoded_bytes} (--max-decoded-bytes)", "too_large")
            picture.seek(0)  # animated images: the first frame
            if reduce_to and picture.format == "JPEG":
                picture.draft(picture.mode if picture.mode in ("RGB", "L") else "RGB", (reduce_to, reduce_to))
            picture.load()
            picture = reduced(picture, reduce_to) if reduce_to else to_rgb_or_grey(picture)
            return ImageOps.exif_transpose(picture)
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage(f"{label}: not a recognised image format ({len(data)} bytes)", "not_an_image") from None
    except Image.DecompressionBombError as err:  # PIL's own guard, at twice its limit, fires in open()
        raise InvalidImage(f"{label}: its size is over the limit of {max_pixels} pixels ({err})", "too_large") from None
    except MemoryError:
        raise InvalidImage(f"{label}: not enough memory to decode it", "too_large") from None
    except Exception as err:  # decoders of untrusted bytes fail in many ways (struct.error, EOFError...):
        # whatever it is, it is this image's problem, not the server's
        raise InvalidImage(f"{label}: cannot decode image: {type(err).__name__}: {err}", "decode_error") from None


def reduced(picture: Image.Image, reduce_to: int) -> Image.Image:
    """Box-reduced by the largest whole factor that keeps both sides at least `reduce_to`."""
    return converted(picture, max(1, min(picture.size) // reduce_to))


def to_rgb_or_grey(picture: Image.Image) -> Image.Image:
    return converted(picture, 1)


def converted(picture: Image.Image, factor: int) -> Image.Image:
    """RGB, or L for greyscale (resized as L and widened to RGB after: the same numbers, a third of the
    memory), box-reduced by `factor`. 16-bit values are scaled (not clipped) to 8 bits, and transparent pixels
    composited on white, as a viewer shows them. Done in strips of rows, so no full-size copy is made beyond
    the result: a 6300x6300 16-bit image costs its decoded size plus a third of it."""
    mode = picture.mode
    grey = mode in ("L", "LA", "La", "1") or mode.startswith("I") or mode == "F"
    if mode in ("RGB", "L") and factor == 1:
        return picture
    width, height = picture.size
    out = Image.new("L" if grey else "RGB", (-(-width // factor), -(-height // factor)))
    peak = sixteen_bit_peak(picture)
    step = factor * max(1, STRIP_ROWS // factor)
    for top in range(0, height, step):
        strip = to_eight_bits(picture.crop((0, top, width, min(height, top + step))), grey, peak)
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def sixteen_bit_peak(picture: Image.Image) -> int | None:
    """What full scale is for a 16/32-bit greyscale image: 65535, or 255 when its values fit 8 bits."""
    if not (picture.mode.startswith("I") or picture.mode == "F"):
        return None
    low, high = picture.getextrema()
    return 255 if high <= 255 else 65535


def to_eight_bits(strip: Image.Image, grey: bool, peak: int | None) -> Image.Image:
    mode = strip.mode
    if peak is not None:
        values = np.asarray(strip, dtype=np.float32 if mode == "F" else None).astype(np.int64)
        scaled = (np.clip(values, 0, peak) * 255 + peak // 2) // peak
        return Image.fromarray(scaled.astype(np.uint8), "L")
    if mode in ("LA", "La", "PA") or mode in ("RGBA", "RGBa") or (mode == "P" and "transparency" in strip.info):
        rgba = np.asarray(strip.convert("LA" if grey else "RGBA"), dtype=np.uint16)
        colour, alpha = rgba[..., :-1], rgba[..., -1:]
        composed = (colour * alpha + 255 * (255 - alpha) + 127) // 255
        return Image.fromarray(composed.astype(np.uint8)[..., 0] if grey else composed.astype(np.uint8),
                               "L" if grey else "RGB")
    return strip.convert("L" if grey else "RGB")
