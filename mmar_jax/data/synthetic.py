"""Synthetic shapes: the embedded default dataset, drawn on the fly, deterministic by (seed, index).

Each record is a small RGB image of one or two coloured shapes on a plain or noisy grey
background, a caption from a small grammar ("a small red circle at the top left"), question /
answer pairs about it, and the labels that drew it. Nothing downloads. Two shapes in one image
always differ in shape, colour and grid cell, so every question has exactly one answer and a
judge (`synthetic_judge.py`) can read each shape back from its colour.

Held-out combinations: with `held_out_modulus` m > 0, the (colour, shape, position) triples whose
index sum is a multiple of m (18 of the 162 for m = 9) never appear in a training record; an
evaluation set drawn with `held_out=True` holds only those triples, so none of its captions (or
shape placements) was ever trained on [ours].
"""

from __future__ import annotations

import dataclasses
from typing import SupportsIndex

import numpy as np
from jaxtyping import UInt8

import grain

# Colours far apart in RGB (every pair differs by >= 120 in some channel) so that a colour
# mask is unambiguous even on a noisy background, which stays in [0, 100] per channel.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (30, 60, 230),
    "yellow": (235, 225, 40),
    "purple": (160, 40, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
# Row-major 3x3 grid; cell (row, col) has the name at index 3 * row + col.
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
             "bottom right")
COUNTS = ("zero", "one", "two")
# Side of a shape's bounding box as a fraction of a grid cell.
SIZE_FRACTION = {"small": 0.5, "large": 0.85}


@dataclasses.dataclass(frozen=True)
class ShapeLabel:
  """What was drawn: one shape's name, colour, size and grid cell name."""
  shape: str
  colour: str
  size: str
  position: str


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """The synthetic dataset's knobs (from config.data)."""
  num_records: int
  image_size: int  # 32 or 64 (anything >= 24 that the 3x3 grid can hold)
  seed: int = 0
  noisy_backgrounds: bool = True  # Half the backgrounds get pixel noise; False keeps them all plain.
  held_out_modulus: int = 0  # Triples with index sum = 0 mod this are held out (is_held_out); 0: none.
  # False: records avoid the held-out triples (training, the seen set); True: every shape of a
  # record is a held-out triple (the unseen set).
  held_out: bool = False

  def __post_init__(self):
    m = self.held_out_modulus
    # 2..9: every (colour, shape) pair then keeps at least one seen and one held-out position
    # of the 9, so both sides of the split can always be drawn.
    if not (m == 0 or 2 <= m <= len(POSITIONS)) or (self.held_out and not m):
      raise ValueError(f"config.data.synthetic_held_out_modulus={m} must be 0 (nothing held out) or in "
                       f"[2, {len(POSITIONS)}]" + (", not 0, to draw the held-out combinations" if self.held_out else ""))


def is_held_out(label: ShapeLabel, modulus: int) -> bool:
  """Whether `label`'s (colour, shape, position) is a held-out triple: index sum = 0 mod `modulus`."""
  if not modulus:
    return False
  indices = list(COLOURS).index(label.colour) + SHAPES.index(label.shape) + POSITIONS.index(label.position)
  return indices % modulus == 0


def shape_box(image_size: int, label: ShapeLabel) -> tuple[int, int, int]:
  """(top, left, side) in pixels of the shape's bounding box, centred in its grid cell."""
  cell = image_size / 3
  side = max(3, int(round(SIZE_FRACTION[label.size] * cell)))
  row, col = divmod(POSITIONS.index(label.position), 3)
  top = int(round((row + 0.5) * cell - side / 2))
  left = int(round((col + 0.5) * cell - side / 2))
  return top, left, side


def shape_mask(shape: str, side: int) -> np.ndarray:
  """[side, side] bool raster of a shape filling its box, sampled at pixel centres."""
  v, u = (np.mgrid[0:side, 0:side] + 0.5) / side  # row, column coordinates in (0, 1)
  if shape == "square":
    return np.ones((side, side), bool)
  if shape == "circle":
    return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
  if shape == "triangle":  # Apex at the top centre, base along the bottom row.
    return np.abs(u - 0.5) <= v / 2
  raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def draw(image_size: int, labels: tuple[ShapeLabel, ...], background: int, noise: bool,
         rng: np.random.Generator) -> UInt8[np.ndarray, "h w 3"]:
  """Renders `labels` on a grey background (plus uniform noise of +-30 when `noise`)."""
  image = np.full((image_size, image_size, 3), background, np.int16)
  if noise:
    image += rng.integers(-30, 31, size=image.shape, dtype=np.int16)
  for label in labels:
    top, left, side = shape_box(image_size, label)
    mask = shape_mask(label.shape, side)
    image[top:top + side, left:left + side][mask] = COLOURS[label.colour]
  return np.clip(image, 0, 255).astype(np.uint8)


def caption(labels: tuple[ShapeLabel, ...]) -> str:
  """The grammar: 'a <size> <colour> <shape> at the <position>' joined by 'and'."""
  return " and ".join(f"a {l.size} {l.colour} {l.shape} at the {l.position}" for l in labels)


def questions(labels: tuple[ShapeLabel, ...]) -> list[tuple[str, str]]:
  """Question / answer pairs with exactly one right answer each (shapes and colours are distinct)."""
  qa = [("how many shapes are there?", COUNTS[len(labels)]), ("describe the image.", caption(labels))]
  for l in labels:
    qa += [(f"what colour is the {l.shape}?", l.colour),
           (f"where is the {l.colour} {l.shape}?", l.position),
           (f"what shape is at the {l.position}?", l.shape),
           (f"how big is the {l.colour} {l.shape}?", l.size)]
  return qa


def vocabulary() -> list[str]:
  """Every word and punctuation token the captions and questions use (for the demo tokenizer)."""
  words = {"a", "at", "the", "and", "how", "many", "shapes", "are", "there", "describe", "image",
           "what", "colour", "is", "where", "shape", "big", "?", "."}
  for group in (COLOURS, SHAPES, SIZES, POSITIONS, COUNTS):
    for phrase in group:
      words.update(phrase.split())
  return sorted(words)


def sample(config: SyntheticConfig, index: int) -> dict:
  """Record `index`: labels drawn from a generator seeded by (seed, index) alone."""
  rng = np.random.default_rng([config.seed, index])
  count = int(rng.integers(1, 3))
  names = list(COLOURS)
  # Redrawn (the count kept, so one- and two-shape records stay even) until every shape is on
  # the record's side of the split; the first draw is the record as it was before the split
  # existed, so records that pass it are unchanged.
  while True:
    shapes = rng.choice(len(SHAPES), count, replace=False)
    colours = rng.choice(len(COLOURS), count, replace=False)
    cells = rng.choice(len(POSITIONS), count, replace=False)
    labels = tuple(ShapeLabel(SHAPES[s], names[c], SIZES[int(rng.integers(2))], POSITIONS[p])
                   for s, c, p in zip(shapes, colours, cells))
    if not config.held_out_modulus or all(
        is_held_out(l, config.held_out_modulus) == config.held_out for l in labels):
      break
  background = int(rng.integers(20, 71))
  noise = bool(rng.integers(2)) and config.noisy_backgrounds  # Draw first: the stream stays the same.
  image = draw(config.image_size, labels, background, noise, rng)
  return {"image": image, "caption": caption(labels), "qa": questions(labels),
          "labels": [dataclasses.asdict(l) for l in labels], "source": "synthetic", "index": index}


class SyntheticShapesSource(grain.sources.RandomAccessDataSource):
  """A grain data source of `num_records` synthetic shape records; record i never changes."""

  def __init__(self, config: SyntheticConfig):
    if config.image_size < 24:
      raise ValueError(f"config.tokenizer.image_size={config.image_size} is too small for the synthetic "
                       "shapes' 3x3 grid (use 32 or 64)")
    self._config = config

  def __len__(self) -> int:
    return self._config.num_records

  def __getitem__(self, index: SupportsIndex) -> dict:  # grain passes numpy ints too.
    if not 0 <= index < len(self):
      raise IndexError(f"synthetic record {index} out of range [0, {len(self)})")
    return sample(self._config, int(index))

  def __repr__(self) -> str:
    return f"SyntheticShapesSource({self._config})"
