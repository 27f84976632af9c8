"""Text logits of our model (LoRA unmerged, as trained) and of a transformers model, same batch."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from mmar_jax.models import masks
from mmar_jax.models.backbone import Backbone, BackboneConfig


def text_batch(rng: np.random.Generator, high: int, batch: int = 3, length: int = 12):
  """Left-padded rows of random ids below `high` (different lengths), and their mask."""
  ids = rng.integers(0, high, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), np.int32)
  for i, pad in enumerate([0, 3, 7][:batch]):
    mask[i, :pad] = 0
  return ids, mask


def our_text_logits(exported, ids, mask) -> np.ndarray:
  cfg = BackboneConfig.from_config(exported.config)
  positions = masks.left_padded_positions(jnp.asarray(mask))
  out = Backbone(cfg).apply({"params": exported.params["backbone"]}, jnp.asarray(ids), positions,
                            segment_ids=jnp.asarray(mask))
  return np.asarray(out.logits, np.float32)


def torch_text_logits(model, ids, mask) -> np.ndarray:
  """A plain transformers forward: its own 2-D padding mask and position ids."""
  positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions, dtype=torch.long))
  return out.logits.float().numpy()
