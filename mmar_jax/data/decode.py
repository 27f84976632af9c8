"""Decoding a source record into pixels and texts, or into a `corrupt` marker saying why not.

Runs in grain's worker processes. A failure never raises here: the record becomes a marker
({'corrupt': reason, 'source', 'index'[, 'line']}) that `SkipCorruptIterator` (corrupt.py) counts and logs in
the training process, where the count can stop the run.
"""

from __future__ import annotations

import io

import numpy as np
from jaxtyping import UInt8
from PIL import Image


def corrupt(record: dict, reason: str) -> dict:
  """The marker that stands in for a record that could not be decoded (with its manifest line, for messages)."""
  marker = {"corrupt": reason, "source": str(record.get("source", "?")), "index": int(record.get("index", -1))}
  return marker | ({"line": int(record["line"])} if "line" in record else {})


def load_image(image, image_size: int) -> UInt8[np.ndarray, "s s 3"]:
  """An RGB uint8 array of image_size x image_size from an array, encoded bytes or a file path.

  MAR's (ADM's) centre crop: halve with a box filter while the short side is at least twice the
  target, resize the short side to the target (bicubic), then crop the centre. The latent cache
  uses this function too, so cached latents and on-the-fly pixels see the same image.
  """
  if isinstance(image, np.ndarray) and image.shape == (image_size, image_size, 3) and image.dtype == np.uint8:
    return image  # Already pixels of the right size (the synthetic source).
  if isinstance(image, np.ndarray):
    pil = Image.fromarray(image)
  elif isinstance(image, bytes):
    pil = Image.open(io.BytesIO(image))
  else:
    pil = Image.open(image)
  pil = pil.convert("RGB")  # Forces the full decode, so truncated files fail here.
  while min(pil.size) >= 2 * image_size:
    pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
  scale = image_size / min(pil.size)
  pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
  pixels = np.asarray(pil, np.uint8)
  top, left = (pixels.shape[0] - image_size) // 2, (pixels.shape[1] - image_size) // 2
  return pixels[top:top + image_size, left:left + image_size]


def clean_texts(record: dict) -> tuple[str, list[tuple[str, str]], str | None]:
  """(caption, question / answer pairs) stripped, and why the record cannot train (None when it can)."""
  caption = (record.get("caption") or "").strip()
  qa = [(q.strip(), a.strip()) for q, a in (record.get("qa") or [])]
  if not caption and not any(a for _, a in qa):
    return caption, qa, "no caption and no answer"
  if any(not a for _, a in qa):
    return caption, qa, "a question without an answer"
  return caption, qa, None


def decode_record(record: dict, image_size: int) -> dict:
  """The record with 'image' as pixels and its texts checked, or a corrupt marker."""
  if "error" in record:  # The source could not even parse it.
    return corrupt(record, record["error"])
  caption, qa, error = clean_texts(record)
  if error:
    return corrupt(record, error)
  try:
    image = load_image(record["image"], image_size)
  except FileNotFoundError as e:
    return corrupt(record, f"image missing: {e.strerror}: {record['image']}")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's ways to fail
    return corrupt(record, f"image unreadable: {type(e).__name__}: {e}")
  return {"image": image, "caption": caption, "qa": qa, "source": record.get("source", "?"),
          "index": int(record["index"])}
