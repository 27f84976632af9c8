"""Left-padded prompt batches: the one layout every inference loop feeds the model.

Rows end at the right edge, so that each row's next token goes to the same position of a shared KV
cache; lengths round up to `PAD_MULTIPLE` so that one compile serves nearby prompt lengths [ours].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD_MULTIPLE = 8


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids [b, l], mask [b, l] with 1 on real tokens, start [b] of each row's first real token)."""
  length = -(-max(len(r) for r in rows) // PAD_MULTIPLE) * PAD_MULTIPLE
  ids = np.full((len(rows), length), pad, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  starts = np.array([length - len(r) for r in rows], np.int32)
  for i, r in enumerate(rows):
    if len(r):
      ids[i, starts[i]:], mask[i, starts[i]:] = r, 1
  return ids, mask, starts
