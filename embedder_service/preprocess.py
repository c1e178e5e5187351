"""Encoded image bytes -> upright RGB picture -> the checkpoint's pixel tensor, limits enforced on the way."""

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedder_service.errors import InvalidImage

log = logging.getLogger(__name__)


def describe(position: int, image_id: str) -> str:
    return f"image {position}" + (f" (id {image_id!r})" if image_id else "")


def decode(data: bytes, max_pixels: int, label: str, draft_side: int | None = None) -> Image.Image:
    """Decodes an encoded image into upright RGB. Raises InvalidImage naming `label` and what was wrong.

    draft_side: for a JPEG, let the decoder scale down by 1/2, 1/4 or 1/8 in the DCT domain as long as both
    sides stay at least this long: a 3000x2000 photo bound for 224x224 decodes several times faster.
    """
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
                raise InvalidImage(f"{label}: its size {width}x{height} pixels is over the limit of {max_pixels} pixels")
            picture.seek(0)  # animated images: the first frame
            if draft_side and picture.format == "JPEG":
                picture.draft("RGB", (draft_side, draft_side))
            picture = ImageOps.exif_transpose(picture)
            return to_rgb(picture)
    except InvalidImage:
        raise
    except UnidentifiedImageError:
        raise InvalidImage(f"{label}: not a recognised image format ({len(data)} bytes)") from None
    except Image.DecompressionBombError as err:  # PIL's own guard, at twice its limit, fires in open()
        raise InvalidImage(f"{label}: its size is over the limit of {max_pixels} pixels ({err})") from None
    except Exception as err:  # decoders of untrusted bytes fail in many ways (struct.error, EOFError...):
        # whatever it is, it is this image's problem, not the server's
        raise InvalidImage(f"{label}: cannot decode image: {type(err).__name__}: {err}") from None


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


class ReferencePreprocessor:
    """Turns encoded images into pixel tensors with the checkpoint's own AutoImageProcessor."""

    def __init__(self, processor, max_pixels: int):
        self.processor = processor
        self.max_pixels = max_pixels

    def __call__(self, data: bytes, label: str) -> np.ndarray:
        picture = decode(data, self.max_pixels, label)
        try:
            return self.processor(images=picture, return_tensors="np")["pixel_values"][0].astype(np.float32)
        except Exception as err:  # the processor is third-party code: any failure is this image's problem
            raise InvalidImage(f"{label}: the image processor refused it: {err}") from None


@dataclass(frozen=True)
class Recipe:
    """What a standard image processor does, read off its settings."""
    height: int | None  # resize to exactly height x width...
    width: int | None
    shortest_edge: int | None  # ...or the short side to this, keeping the aspect ratio
    resample: int
    crop: tuple[int, int] | None
    rescale_factor: float | None
    mean: np.ndarray | None
    std: np.ndarray | None


def recipe_of(processor) -> Recipe | None:
    """The processor's steps, if it is a standard PIL-backend processor this module can reproduce; else None."""
    try:
        from transformers.image_processing_backends import PilBackend
    except ImportError:
        return None
    if not isinstance(processor, PilBackend) or type(processor)._preprocess is not PilBackend._preprocess:
        return None  # custom steps: only the processor itself knows them
    if getattr(processor, "do_pad", False) or not getattr(processor, "do_resize", False):
        return None
    size = dict(processor.size or {})
    height, width, shortest = size.get("height"), size.get("width"), size.get("shortest_edge")
    if not ((height and width and len(size) == 2) or (shortest and set(size) == {"shortest_edge"})):
        return None
    crop = None
    if getattr(processor, "do_center_crop", False):
        crop = (int(processor.crop_size["height"]), int(processor.crop_size["width"]))
    normalize = bool(getattr(processor, "do_normalize", False))
    return Recipe(
        height=height, width=width, shortest_edge=shortest, resample=int(processor.resample),
        crop=crop, rescale_factor=processor.rescale_factor if getattr(processor, "do_rescale", False) else None,
        mean=np.asarray(processor.image_mean, dtype=np.float32) if normalize else None,
        std=np.asarray(processor.image_std, dtype=np.float32) if normalize else None)


def resized_size(recipe: Recipe, width: int, height: int) -> tuple[int, int]:
    """(width, height) after the resize step, by transformers' own rule for a shortest edge."""
    if recipe.height:
        return recipe.width, recipe.height
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(recipe.shortest_edge * long / short)
    return (recipe.shortest_edge, new_long) if width <= height else (new_long, recipe.shortest_edge)


class FastPreprocessor:
    """The processor's own steps done directly: optional JPEG draft decoding, one PIL resize, a centre crop,
    then rescale and normalisation in numpy. Without draft decoding the tensors equal the processor's."""

    def __init__(self, recipe: Recipe, max_pixels: int, jpeg_draft: bool):
        self.recipe = recipe
        self.max_pixels = max_pixels
        if not jpeg_draft:
            self.draft_side = None
        elif recipe.height:
            self.draft_side = max(recipe.height, recipe.width)  # either orientation of a rotated photo fits
        else:
            self.draft_side = recipe.shortest_edge

    def __call__(self, data: bytes, label: str) -> np.ndarray:
        picture = decode(data, self.max_pixels, label, self.draft_side)
        recipe = self.recipe
        width, height = resized_size(recipe, *picture.size)
        if width * height > self.max_pixels:
            # A shortest-edge resize of a 1x10000 strip would make a 224x2240000 image.
            raise InvalidImage(f"{label}: its aspect ratio {picture.size[0]}x{picture.size[1]} would resize to "
                               f"{width}x{height} pixels, over the limit of {self.max_pixels}")
        try:
            picture = picture.resize((width, height), resample=recipe.resample)
        except ValueError as err:
            raise InvalidImage(f"{label}: cannot resize image: {err}") from None
        pixels = np.asarray(picture)
        if recipe.crop:
            pixels = centre_crop(pixels, *recipe.crop)
        # The processor's order and precision: rescale in float64, then float32, then normalise.
        values = pixels.astype(np.float64) * recipe.rescale_factor if recipe.rescale_factor else pixels
        values = values.astype(np.float32)
        if recipe.mean is not None:
            values = (values - recipe.mean) / recipe.std
        return np.ascontiguousarray(values.transpose(2, 0, 1))


def centre_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' centre crop, padding with zeros where the image is smaller than the crop."""
    top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
    if top >= 0 and left >= 0:
        return pixels[top:top + height, left:left + width]
    padded = np.zeros((max(height, pixels.shape[0]), max(width, pixels.shape[1]), pixels.shape[2]), pixels.dtype)
    pad_top, pad_left = (padded.shape[0] - pixels.shape[0]) // 2, (padded.shape[1] - pixels.shape[1]) // 2
    padded[pad_top:pad_top + pixels.shape[0], pad_left:pad_left + pixels.shape[1]] = pixels
    top, left = (padded.shape[0] - height) // 2, (padded.shape[1] - width) // 2
    return padded[top:top + height, left:left + width]


def make_preprocessor(processor, max_pixels: int, fast: bool, jpeg_draft: bool):
    """The fast path when the processor's steps are standard (and it is wanted), else the processor itself."""
    recipe = recipe_of(processor) if fast else None
    if recipe is None:
        if fast:
            log.warning("%s has non-standard steps: using it as is (slower preprocessing)", type(processor).__name__)
        return ReferencePreprocessor(processor, max_pixels)
    return FastPreprocessor(recipe, max_pixels, jpeg_draft)
