"""The patch image tokenizer (mmar_jax/models/tokenizers.py), PIL images in and out.

Pixels are NHWC in [-1, 1]; token n covers grid cell (n // g, n % g) and holds its p x p x 3
patch row-major, channels innermost, times a power-of-2 scale (so the round trip is exact).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class PatchTokenizer:
  def __init__(self, image_size: int, patch_size: int, patch_scale: float = 1.0, **_):
    self.image_size, self.patch_size, self.scale = image_size, patch_size, patch_scale
    self.grid = image_size // patch_size

  def encode(self, pixels: torch.Tensor) -> torch.Tensor:
    """[b, h, w, 3] in [-1, 1] -> tokens [b, n, p*p*3]."""
    b, p, g = pixels.shape[0], self.patch_size, self.grid
    x = pixels.reshape(b, g, p, g, p, 3).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, p * p * 3) * self.scale

  def decode(self, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [b, n, p*p*3] -> [b, h, w, 3] (not clipped)."""
    b, p, g = tokens.shape[0], self.patch_size, self.grid
    x = (tokens / self.scale).reshape(b, g, g, p, p, 3).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * p, g * p, 3)


def pixels_from_images(images, image_size: int) -> torch.Tensor:
  """PIL images (resized to image_size) -> [b, h, w, 3] float32 in [-1, 1] (MAR: x / 127.5 - 1)."""
  arrays = [np.asarray(im.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
                       if im.size != (image_size, image_size) else im.convert("RGB"), np.float32) for im in images]
  return torch.from_numpy(np.stack(arrays)) / 127.5 - 1.0


def images_from_pixels(pixels: torch.Tensor) -> list[Image.Image]:
  """[b, h, w, 3] in [-1, 1] -> PIL images (round to nearest, clipped)."""
  u8 = torch.clamp(torch.round((pixels.float().cpu() + 1.0) * 127.5), 0, 255).to(torch.uint8).numpy()
  return [Image.fromarray(a) for a in u8]
