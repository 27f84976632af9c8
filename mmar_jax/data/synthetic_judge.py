"""A judge that reads synthetic-shapes labels back from pixels, to score generated images.

Per palette colour: a colour mask, its centroid's 3x3 grid cell (position), its bounding box's
side against a grid cell (size) and the mask's fill of that box (shape: a square fills it, a
triangle fills its bottom row but barely its top row, a circle neither). It knows nothing of
how an image was made, so it scores generated images and drawn ones alike.

`features` reads the same masks as numbers (per colour: area, centroid, box, fill, top-bottom
fill): a feature space for a Fréchet distance between generated and drawn sets that needs no
downloaded network and spans exactly the factors the dataset varies (colour, shape, position,
size, count), in few enough dimensions (42) that 64 images estimate its covariance.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, UInt8

from mmar_jax.data.synthetic import COLOURS, POSITIONS, SIZE_FRACTION, ShapeLabel

# A pixel belongs to a colour when every channel is within this of it. Palette colours differ
# by >= 120 in some channel and backgrounds stay <= 100, so 60 separates them with margin.
COLOUR_TOLERANCE = 60
MIN_PIXELS = 4  # Fewer pixels of a colour are specks, not a shape.


def _shape_from_mask(box: np.ndarray) -> str:
  fill = box.mean()
  top, bottom = box[0].mean(), box[-1].mean()
  if fill >= 0.95:
    return "square"
  if bottom - top >= 0.3:
    return "triangle"
  return "circle"


def _colour_masks(image: UInt8[np.ndarray, "h w 3"]) -> dict[str, np.ndarray]:
  """Each palette colour's pixel mask, for the colours with at least MIN_PIXELS pixels."""
  pixels = image.astype(np.int16)
  masks = {}
  for name, rgb in COLOURS.items():
    mask = np.all(np.abs(pixels - np.array(rgb, np.int16)) <= COLOUR_TOLERANCE, axis=-1)
    if mask.sum() >= MIN_PIXELS:
      masks[name] = mask
  return masks


FEATURES_PER_COLOUR = 7


def features(image: UInt8[np.ndarray, "h w 3"]) -> Float[np.ndarray, " f"]:
  """Per palette colour (zeros where absent): pixel share, centroid row and column, box height
  and width (all over the image side), box fill, and box top-row minus bottom-row fill."""
  size = image.shape[0]
  out = np.zeros((len(COLOURS), FEATURES_PER_COLOUR), np.float64)
  masks = _colour_masks(image)
  for i, name in enumerate(COLOURS):
    if name not in masks:
      continue
    mask = masks[name]
    rows, cols = np.nonzero(mask)
    box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    out[i] = (mask.mean(), rows.mean() / size, cols.mean() / size, box.shape[0] / size, box.shape[1] / size,
              box.mean(), box[0].mean() - box[-1].mean())
  return out.reshape(-1)


def detect(image: UInt8[np.ndarray, "h w 3"]) -> list[ShapeLabel]:
  """Every palette-coloured shape found in `image`, one per colour present."""
  size = image.shape[0]
  cell = size / 3
  # Between the small and large box sides, so a size is read from the measured side.
  size_split = (SIZE_FRACTION["small"] + SIZE_FRACTION["large"]) / 2 * cell
  found = []
  for name, mask in _colour_masks(image).items():
    rows, cols = np.nonzero(mask)
    box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    row = min(2, int((rows.mean() + 0.5) // cell))
    col = min(2, int((cols.mean() + 0.5) // cell))
    side = max(box.shape)
    found.append(ShapeLabel(shape=_shape_from_mask(box), colour=name,
                            size="small" if side < size_split else "large",
                            position=POSITIONS[3 * row + col]))
  return found


def score(image: UInt8[np.ndarray, "h w 3"], labels: list[dict] | tuple[ShapeLabel, ...]) -> dict[str, float]:
  """Fraction of the labelled shapes whose colour is present and whose shape / position / size
  match what was read at that colour; 'all' needs every attribute right, 'count' the count."""
  labels = [l if isinstance(l, ShapeLabel) else ShapeLabel(**l) for l in labels]
  found = {f.colour: f for f in detect(image)}
  result = {"colour": 0.0, "shape": 0.0, "position": 0.0, "size": 0.0, "all": 0.0}
  for l in labels:
    f = found.get(l.colour)
    if f is None:
      continue
    hits = {"colour": True, "shape": f.shape == l.shape, "position": f.position == l.position,
            "size": f.size == l.size}
    hits["all"] = all(hits.values())
    for k, v in hits.items():
      result[k] += v / len(labels)
  result["count"] = float(len(found) == len(labels))
  return result
