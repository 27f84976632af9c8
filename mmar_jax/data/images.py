"""Turning any image into the model's square RGB pixels, alike for training and the latent cache.

`load_image` reads an array, encoded bytes or a file path, then
1. turns it upright by its EXIF orientation (cameras store the sensor's rows and a tag saying how
   to show them);
2. makes it 8-bit RGB: transparency (RGBA, LA, a palette's or a colour's) composited onto the
   background colour, 16-bit greyscale scaled from [0, 65535] and float greyscale from [0, 1]
   (PIL's own conversion clips both at 255), CMYK multiplied out, palettes through their colours;
3. makes it square: 'center_crop' (MAR's, ADM's) or 'pad_to_square' (the whole image, padded with
   the background).
An image whose short side is below `min_size` raises `TooSmall` (the pipeline skips it as a
corrupt record); one smaller than the target is upscaled and the result says so.
"""

from __future__ import annotations

import dataclasses
import io
from typing import NamedTuple

import numpy as np
from jaxtyping import UInt8
from PIL import Image, ImageColor, ImageOps

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """How an image becomes model pixels (config.tokenizer.image_size and config.data's image fields)."""
  size: int  # The square's side in pixels.
  background: str  # A PIL colour: behind transparent pixels and around a padded image.
  resize: str  # One of configs.IMAGE_RESIZES.
  min_size: int  # A short side below this makes the record corrupt.

  @classmethod
  def from_config(cls, config) -> ImageConfig:
    d = config.data
    return cls(size=config.tokenizer.image_size, background=d.image_background, resize=d.image_resize,
               min_size=d.min_image_size)

  @property
  def background_rgb(self) -> tuple[int, int, int]:
    return ImageColor.getrgb(self.background)[:3]


class Loaded(NamedTuple):
  """`load_image`'s result: the pixels, and whether the image was smaller than the target and enlarged."""
  pixels: UInt8[np.ndarray, "s s 3"]
  upscaled: bool


class TooSmall(ValueError):
  """The image's short side is below config.data.min_image_size."""


def load_image(image, cfg: ImageConfig) -> Loaded:
  """The image (an array, encoded bytes or a file path) as cfg.size x cfg.size RGB uint8 pixels."""
  if isinstance(image, np.ndarray) and image.shape == (cfg.size, cfg.size, 3) and image.dtype == np.uint8:
    return Loaded(image, False)  # Already pixels of the right size (the synthetic source).
  if isinstance(image, np.ndarray):
    try:
      pil = Image.fromarray(image)
    except TypeError as e:  # PIL's word for an array it has no mode for.
      raise ValueError(f"an array of shape {image.shape} and dtype {image.dtype} is no image ({e})") from None
  elif isinstance(image, bytes):
    pil = Image.open(io.BytesIO(image))
  else:
    pil = Image.open(image)
  ImageOps.exif_transpose(pil, in_place=True)  # Loads the whole image first, so truncated files fail here.
  pil = to_rgb(pil, cfg.background_rgb)
  if min(pil.size) < cfg.min_size:
    raise TooSmall(f"{pil.width}x{pil.height} is below config.data.min_image_size={cfg.min_size}")
  if cfg.resize == "center_crop":
    return Loaded(center_crop(pil, cfg.size), min(pil.size) < cfg.size)
  if cfg.resize == "pad_to_square":
    return Loaded(pad_to_square(pil, cfg.size, cfg.background_rgb), max(pil.size) < cfg.size)
  raise ValueError(f"config.data.image_resize={cfg.resize!r} is not a known resize")


def to_rgb(pil: Image.Image, background: tuple[int, int, int]) -> Image.Image:
  """8-bit RGB of an image of any mode, its transparency composited onto `background`."""
  if pil.mode.startswith("I;16") or pil.mode == "I":  # 16-bit greyscale (PNG, TIFF): PIL reads I;16 or I.
    grey = np.clip(np.asarray(pil).astype(np.int64), 0, 65535)
    pil = Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8))  # Rounded, 65535 -> 255.
  elif pil.mode == "F":  # Float greyscale, [0, 1] as float images hold it.
    grey = np.nan_to_num(np.asarray(pil, np.float64), nan=0.0)
    pil = Image.fromarray(np.round(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8))
  if pil.mode in _ALPHA_MODES or "transparency" in pil.info:
    # RGBA applies a palette's or a colour's transparency; over an opaque background PIL's composite
    # is round(rgb * a / 255 + background * (1 - a / 255)).
    rgba = pil.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, background + (255,)), rgba).convert("RGB")
  # CMYK by Pillow (pinned, setup.cfg): ink darkens multiplicatively, R = (255 - C)(255 - K) / 255.
  return pil.convert("RGB")


def center_crop(pil: Image.Image, size: int) -> UInt8[np.ndarray, "s s 3"]:
  """MAR's (ADM's) centre crop: halve with a box filter while the short side is at least twice the
  target, resize the short side to the target (bicubic), then crop the centre square."""
  while min(pil.size) >= 2 * size:
    pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
  scale = size / min(pil.size)
  pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
  pixels = np.asarray(pil, np.uint8)
  top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
  return pixels[top:top + size, left:left + size]


def pad_to_square(pil: Image.Image, size: int, background: tuple[int, int, int]) -> UInt8[np.ndarray, "s s 3"]:
  """The whole image: the centre crop's filters on the long side (halve while it is at least twice the
  target, then bicubic to the target), centred on a `background` square."""
  while max(pil.size) >= 2 * size:
    pil = pil.resize(tuple(max(1, s // 2) for s in pil.size), resample=Image.BOX)
  scale = size / max(pil.size)
  pil = pil.resize(tuple(min(size, max(1, round(s * scale))) for s in pil.size), resample=Image.BICUBIC)
  square = Image.new("RGB", (size, size), background)
  square.paste(pil, ((size - pil.width) // 2, (size - pil.height) // 2))
  return np.asarray(square, np.uint8)
