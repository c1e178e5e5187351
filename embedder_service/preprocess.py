"""Decoded picture -> the model's pixel tensor, by one of two presets:

- processor: the checkpoint's own AutoImageProcessor steps (reproduced directly when they are the standard
  ones: tensors equal to the processor's; otherwise the processor itself is called);
- writeup: the write-up's transformation chain, exactly: Resize(int(256 / 224 * H)) on the shortest edge
  (PIL bilinear), CenterCrop(H) (torchvision's rounding), ToTensor (/255 in float32), Normalize(mean, std)
  with the processor's mean and std; H is the processor's size["height"].

Draft decoding (on by default) decodes and reduces large images early, but only while both sides stay at
least DRAFT_MARGIN times the model's input side and at least DRAFT_MIN_SIDE pixels. Measured on photo-like
JPEGs from 640x480 to 4000x3000, that keeps every embedding within cosine 0.9999 of the bit-faithful path, for
the 224x224 ViT and the shipped 32x32 model alike (bench/embedder.py prints the table). Without the floor the
32x32 model fell to 0.997 at 3000x2000: a DCT-scaled decode at 1/8 is not an exact box average.
"""

import logging
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from embedder_service.decoding import decode
from embedder_service.errors import InvalidImage

log = logging.getLogger(__name__)
PRESETS = ("processor", "writeup")
DRAFT_MARGIN = 2
DRAFT_MIN_SIDE = 224
# Processor settings that say which class or version wrote them, not what they do to pixels.
VOLATILE_PROCESSOR_KEYS = {"image_processor_type", "processor_class", "_processor_class", "transformers_version",
                           "backend", "image_processor_backend"}


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_decoded_bytes: int


@dataclass(frozen=True)
class Recipe:
    """Standard preprocessing steps, read off a processor's settings or the write-up's chain."""
    height: int | None  # resize to exactly height x width...
    width: int | None
    shortest_edge: int | None  # ...or the short side to this, keeping the aspect ratio
    resample: int
    crop: tuple[int, int] | None
    crop_rounding: str  # "floor" (transformers) or "round" (torchvision) for an odd margin
    rescale_factor: float | None
    rescale_in_float64: bool  # transformers rescales in float64 then casts; torchvision divides in float32
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def output_side(self) -> int:
        if self.crop:
            return max(self.crop)
        return max(self.height, self.width) if self.height else self.shortest_edge

    def describe(self) -> dict:
        """The canonical form the fingerprint hashes: the same for the same arithmetic, whatever class,
        backend or transformers version produced it."""
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


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
    return Recipe(height=height, width=width, shortest_edge=shortest, resample=int(processor.resample), crop=crop,
                  crop_rounding="floor",
                  rescale_factor=processor.rescale_factor if getattr(processor, "do_rescale", False) else None,
                  rescale_in_float64=True,
                  mean=tuple(float(v) for v in processor.image_mean) if normalize else None,
                  std=tuple(float(v) for v in processor.image_std) if normalize else None)


def writeup_recipe(processor) -> Recipe:
    """The write-up's transformation_chain for this processor's size, mean and std."""
    size = dict(processor.size or {})
    side = int(size.get("height") or size.get("shortest_edge") or 224)
    return Recipe(height=None, width=None, shortest_edge=int((256 / 224) * side), resample=int(Image.BILINEAR),
                  crop=(side, side), crop_rounding="round", rescale_factor=1 / 255, rescale_in_float64=False,
                  mean=tuple(float(v) for v in processor.image_mean), std=tuple(float(v) for v in processor.image_std))


def resized_size(recipe: Recipe, width: int, height: int) -> tuple[int, int]:
    """(width, height) after the resize step, by transformers' and torchvision's shared rule for a shortest
    edge."""
    if recipe.height:
        return recipe.width, recipe.height
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(recipe.shortest_edge * long / short)
    return (recipe.shortest_edge, new_long) if width <= height else (new_long, recipe.shortest_edge)


def centre_crop(pixels: np.ndarray, height: int, width: int, rounding: str = "floor") -> np.ndarray:
    """Centre crop, padding with zeros where the image is smaller than the crop (as transformers does)."""
    if pixels.shape[0] < height or pixels.shape[1] < width:
        padded = np.zeros((max(height, pixels.shape[0]), max(width, pixels.shape[1]), pixels.shape[2]), pixels.dtype)
        top, left = (padded.shape[0] - pixels.shape[0]) // 2, (padded.shape[1] - pixels.shape[1]) // 2
        padded[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
        pixels = padded
    if rounding == "round":
        top, left = int(round((pixels.shape[0] - height) / 2.0)), int(round((pixels.shape[1] - width) / 2.0))
    else:
        top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
    return pixels[top:top + height, left:left + width]


class FastPreprocessor:
    """A recipe's steps done directly: decode (with draft reduction if asked), one PIL resize, a centre crop,
    then rescale and normalisation in numpy. Without draft decoding the tensors equal the processor's."""

    def __init__(self, recipe: Recipe, limits: Limits, draft: bool):
        self.recipe = recipe
        self.limits = limits
        self.reduce_to = max(DRAFT_MARGIN * recipe.output_side(), DRAFT_MIN_SIDE) if draft else None
        self.mean = np.asarray(recipe.mean, dtype=np.float32) if recipe.mean else None
        self.std = np.asarray(recipe.std, dtype=np.float32) if recipe.std else None

    def __call__(self, data: bytes, label: str) -> np.ndarray:
        picture = decode(data, self.limits.max_pixels, self.limits.max_decoded_bytes, label, self.reduce_to)
        recipe = self.recipe
        width, height = resized_size(recipe, *picture.size)
        if width * height > self.limits.max_pixels:
            # A shortest-edge resize of a 1x10000 strip would make a 224x2240000 image.
            raise InvalidImage(f"{label}: its aspect ratio {picture.size[0]}x{picture.size[1]} would resize to "
                               f"{width}x{height} pixels, over the limit of {self.limits.max_pixels}", "too_large")
        try:
            picture = picture.resize((width, height), resample=recipe.resample)
        except ValueError as err:
            raise InvalidImage(f"{label}: cannot resize image: {err}", "decode_error") from None
        if picture.mode == "L":  # greyscale was resized as one channel: the same numbers as three equal ones
            picture = picture.convert("RGB")
        pixels = np.asarray(picture)
        if recipe.crop:
            pixels = centre_crop(pixels, *recipe.crop, rounding=recipe.crop_rounding)
        if recipe.rescale_factor is None:
            values = pixels.astype(np.float32)
        elif recipe.rescale_in_float64:  # the processor's order and precision
            values = (pixels.astype(np.float64) * recipe.rescale_factor).astype(np.float32)
        else:
            values = pixels.astype(np.float32) / np.float32(1 / recipe.rescale_factor)
        if self.mean is not None:
            values = (values - self.mean) / self.std
        return np.ascontiguousarray(values.transpose(2, 0, 1))

    def describe(self) -> dict:
        return {"steps": self.recipe.describe(),
                "draft": f"reduce while sides >= {self.reduce_to}" if self.reduce_to else "off"}


class ReferencePreprocessor:
    """The checkpoint's own AutoImageProcessor, called on each decoded picture (its steps are not standard)."""

    def __init__(self, processor, limits: Limits):
        self.processor = processor
        self.limits = limits

    def __call__(self, data: bytes, label: str) -> np.ndarray:
        picture = decode(data, self.limits.max_pixels, self.limits.max_decoded_bytes, label)
        if picture.mode != "RGB":
            picture = picture.convert("RGB")
        try:
            return self.processor(images=picture, return_tensors="np")["pixel_values"][0].astype(np.float32)
        except Exception as err:  # the processor is third-party code: any failure is this image's problem
            raise InvalidImage(f"{label}: the image processor refused it: {err}", "decode_error") from None

    def describe(self) -> dict:
        settings = {k: v for k, v in sorted(self.processor.to_dict().items()) if k not in VOLATILE_PROCESSOR_KEYS}
        return {"processor": type(self.processor).__name__.removesuffix("Pil").removesuffix("Fast"),
                "settings": settings, "draft": "off"}


def make_preprocessor(processor, limits: Limits, preset: str = "processor", fast: bool = True,
                      draft: bool = True):
    """The preprocessing a preset names: the fast path when its steps are standard, else the processor."""
    if preset == "writeup":
        return FastPreprocessor(writeup_recipe(processor), limits, draft)
    recipe = recipe_of(processor) if fast else None
    if recipe is None:
        if fast:
            log.warning("%s has non-standard steps: using it as is (slower preprocessing, no draft decoding)",
                        type(processor).__name__)
        return ReferencePreprocessor(processor, limits)
    return FastPreprocessor(recipe, limits, draft)
