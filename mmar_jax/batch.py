"""The training batch: what the input pipeline yields and the train step and the model read.

One frozen dataclass, a pytree whose leaves are its arrays: host-local numpy from the pipeline,
global jax.Arrays after `pipeline.to_global`, tracers inside jit. Its fields' annotations are the
contract; under jaxtyping's import hook (the tests) constructing a Batch checks every field's
dtype and shape, with each letter bound once across the fields:
  b rows, l = seq_len, m images a row (1 unpacked, seq_len // (N + 4) packed), n = N tokens an
  image, c a token's channels, height x width an image's pixels, latent_height x latent_width its VAE latent grid.

Adding a field (e.g. a source's precomputed per-token statistics): annotate it here with its
shape, `... | None = None` when some sources do not produce it (None is an empty pytree, so
`jax.tree.map`, sharding and the micro-batch split pass over it); have the rows carry the key of
the same name (`Batch(**rows)` in the pipeline takes them as they are); fill it in `zeros` when
asked; read it as an attribute.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jaxtyping import Bool, Float, Int, UInt8

# Host numpy from the pipeline, or jax.Arrays (tracers too) once on the devices.
Arrays = np.ndarray | jax.Array


@dataclasses.dataclass(frozen=True)
class Batch:
  """Rows of task sequences and their images (see `mmar_jax.data.sequences` for the layout)."""

  input_ids: Int[Arrays, "b l"]  # Token ids; image slots hold <mask>, padding <|endoftext|>.
  targets: Int[Arrays, "b l"]  # Next token within the sequence (padding id at a sequence's end).
  # 1 where targets get cross-entropy: answers (+ <|im_end|>) of understanding, captions
  # (+ <boi>) of generation if caption_loss.
  text_loss_mask: Float[Arrays, "b l"]
  diffusion_loss_mask: Float[Arrays, "b l"]  # 1 on the image slots of generation images.
  token_type: Int[Arrays, "b l"]  # 0 text, 1 image slot.
  segment_ids: Int[Arrays, "b l"]  # 1.. per packed sequence, 0 padding (masks.causal_segment_mask).
  positions: Int[Arrays, "b l"]  # Position within its sequence, restarting at 0 per segment.
  image_valid: Bool[Arrays, "b m"]
  image_slots: Int[Arrays, "b m n"]  # Sequence positions of each image's N tokens (0 when invalid).
  image_task: Int[Arrays, "b m"]  # 0 understanding (image in), 1 generation (image out).
  record_index: Int[Arrays, "b m"]  # Source index of each image's record (-1 invalid), to look up labels.
  # The row's images in sequence order (zeros when invalid); the step encodes them unless
  # image_tokens are given.
  images: UInt8[Arrays, "b m height width 3"] | None = None
  # Source 'latents' (data/latent_source.py), instead of images: each image's posterior
  # [mean | logvar] (or its mirror's, drawn per record and epoch), NHWC on the VAE's latent grid,
  # unclipped; the step samples the latent from them.
  image_moments: Float[Arrays, "b m latent_height latent_width moments"] | None = None
  image_tokens: Float[Arrays, "b m n c"] | None = None  # Continuous tokens given as they are (tests).

  @classmethod
  def zeros(cls, rows: int, seq_len: int, max_images: int, num_image_tokens: int, *, image_size: int | None = None,
            token_dim: int | None = None) -> Batch:
    """A batch of zeros in the pipeline's dtypes (init, compiling without data, tests); `images` of
    `image_size` pixels and `image_tokens` of `token_dim` channels only where those are given."""
    b, l, m, n = rows, seq_len, max_images, num_image_tokens
    ints = lambda *shape: np.zeros(shape, np.int32)  # noqa: E731
    return cls(input_ids=ints(b, l), targets=ints(b, l), text_loss_mask=np.zeros((b, l), np.float32),
               diffusion_loss_mask=np.zeros((b, l), np.float32), token_type=ints(b, l), segment_ids=ints(b, l),
               positions=ints(b, l), image_valid=np.zeros((b, m), bool), image_slots=ints(b, m, n),
               image_task=ints(b, m), record_index=ints(b, m),
               images=None if image_size is None else np.zeros((b, m, image_size, image_size, 3), np.uint8),
               image_tokens=None if token_dim is None else np.zeros((b, m, n, token_dim), np.float32))


_FIELDS = tuple(f.name for f in dataclasses.fields(Batch))


def _flatten(batch: Batch):
  return [(jax.tree_util.GetAttrKey(name), getattr(batch, name)) for name in _FIELDS], None


def _unflatten(_, leaves) -> Batch:
  # Not through __init__, the checked constructor: jax rebuilds pytrees from placeholders (jit's
  # in_shardings), shapes and stacked micro-batches that no annotation describes (as equinox does;
  # jax.tree_util.register_dataclass would call __init__).
  batch = object.__new__(Batch)
  for name, leaf in zip(_FIELDS, leaves):
    object.__setattr__(batch, name, leaf)
  return batch


jax.tree_util.register_pytree_with_keys(Batch, _flatten, _unflatten)
