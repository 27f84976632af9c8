"""Generated images out: decoded pixels as uint8, and a captioned PNG grid of them."""

from __future__ import annotations

import numpy as np
from etils import epath
from PIL import Image, ImageDraw


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """Pixels in [-1, 1] (decoded, not clipped) as uint8 images."""
  return np.clip(np.round((np.asarray(pixels, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid_png(images: np.ndarray, captions: list[str], path: str, *, scale: int = 4, columns: int = 4) -> np.ndarray:
  """Writes a grid of (caption, generated image) cells to `path`; returns it as HWC uint8."""
  size = images.shape[1] * scale
  cell_w, text_h = max(size, 160), 40
  rows = -(-len(images) // columns)
  canvas = Image.new("RGB", (columns * cell_w, rows * (size + text_h)), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (image, caption) in enumerate(zip(images, captions)):
    x, y = (i % columns) * cell_w, (i // columns) * (size + text_h)
    canvas.paste(Image.fromarray(image).resize((size, size), Image.NEAREST), (x + (cell_w - size) // 2, y))
    words, lines = caption.split(), [""]
    for word in words:  # Wrap at roughly the cell width (6 px a character in PIL's default font).
      if len(lines[-1]) + len(word) + 1 > cell_w // 6:
        lines.append("")
      lines[-1] = f"{lines[-1]} {word}".strip()
    draw.multiline_text((x + 2, y + size + 2), "\n".join(lines[:3]), fill="black")
  path = epath.Path(path)  # Any filesystem orbax writes to (gs://, ...), not only local paths.
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    canvas.save(f, format="PNG")
  return np.asarray(canvas)
