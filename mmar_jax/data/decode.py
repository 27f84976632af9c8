"""Decoding a source record into pixels and texts, or into a `corrupt` marker saying why not.

The pixels are `images.load_image`'s (orientation, transparency, modes, the crop or pad), the same
function the latent cache and describe use.

Runs in grain's worker processes. A failure never raises here: the record becomes a marker
({'corrupt': reason, 'source', 'index'[, 'line']}) that `SkipCorruptIterator` (corrupt.py) counts and logs in
the training process, where the count can stop the run.
"""

from __future__ import annotations

from PIL import Image

from mmar_jax.data import images


def corrupt(record: dict, reason: str) -> dict:
  """The marker that stands in for a record that could not be decoded (with its manifest line, for messages)."""
  marker = {"corrupt": reason, "source": str(record.get("source", "?")), "index": int(record.get("index", -1))}
  return marker | ({"line": int(record["line"])} if "line" in record else {})


def clean_texts(record: dict) -> tuple[str, list[tuple[str, str]], str | None]:
  """(caption, question / answer pairs) stripped, and why the record cannot train (None when it can)."""
  caption = (record.get("caption") or "").strip()
  qa = [(q.strip(), a.strip()) for q, a in (record.get("qa") or [])]
  if not caption and not any(a for _, a in qa):
    return caption, qa, "no caption and no answer"
  if any(not a for _, a in qa):
    return caption, qa, "a question without an answer"
  return caption, qa, None


def decode_record(record: dict, image: images.ImageConfig) -> dict:
  """The record with 'image' as pixels ('upscaled': it was smaller than the target) and its texts checked,
  or a corrupt marker."""
  if "error" in record:  # The source could not even parse it.
    return corrupt(record, record["error"])
  caption, qa, error = clean_texts(record)
  if error:
    return corrupt(record, error)
  try:
    loaded = images.load_image(record["image"], image)
  except images.TooSmall as e:
    return corrupt(record, f"image too small: {e}")
  except FileNotFoundError as e:
    return corrupt(record, f"image missing: {e.strerror}: {record['image']}")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's ways to fail
    return corrupt(record, f"image unreadable: {type(e).__name__}: {e}")
  return {"image": loaded.pixels, "upscaled": loaded.upscaled, "caption": caption, "qa": qa,
          "source": record.get("source", "?"), "index": int(record["index"]),
          **({"line": record["line"]} if "line" in record else {})}
