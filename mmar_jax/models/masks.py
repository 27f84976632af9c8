"""Boolean attention masks built from segment ids: True means "query may attend to key".

Masks are [b, q, k] booleans (1 byte an entry), broadcast over heads inside attention. Every
query row keeps its own position, so a padding row is never all-False (which would make the
softmax degenerate).

Cost (benchmarks/attention_mask_memory.py, RESULTS.md issue 8): on the XLA path the mask is
never a float: jax applies it with a select on the float32 logits, and one [b, l, l] bool costs
(b - 1) l^2 bytes more than is_causal's constant [l, l] mask, far below one layer's logits
(4 h l^2 bytes a row). Building it inside each attention call from [b, l] vectors, or per head,
compiles to the same buffers. The cuDNN path turns any bool mask into a [b, 1, l, l] bias in the
compute dtype (2 bytes an entry), and its backward writes a dbias of that shape.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int


def causal_segment_mask(segment_ids: Int[ArrayLike, "b l"]) -> Bool[Array, "b l l"]:
  """Causal attention inside each packed segment; segment id 0 marks padding."""
  length = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
  key_is_real = (segment_ids != 0)[:, None, :]
  return (causal & same_segment & key_is_real) | jnp.eye(length, dtype=bool)



def mmar_attention_mask(segment_ids: Int[ArrayLike, "b l"], image_span_ids: Int[ArrayLike, "b l"]
                        ) -> Bool[Array, "b l l"]:
  """MMAR's mask: causal within a segment, bidirectional inside each image span [paper].

  `image_span_ids` is 0 on text and a per-row unique id > 0 on each image's tokens, so every
  token of an image sees the whole image (MAR style) and text after it sees it too (causal).
  Never across packed segments; segment id 0 marks padding.
  """
  length = segment_ids.shape[-1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
  key_is_real = (segment_ids != 0)[:, None, :]
  same_image = (image_span_ids[:, :, None] == image_span_ids[:, None, :]) & (image_span_ids > 0)[:, :, None]
  return ((causal | same_image) & same_segment & key_is_real) | jnp.eye(length, dtype=bool)

def decode_mask(
    key_valid: Bool[ArrayLike, "b s"],
    cache_index: Int[ArrayLike, ""],
    query_length: int,
    attention_mask: Bool[ArrayLike, "b l s"] | None = None,
) -> Bool[Array, "b l s"]:
  """Mask of `query_length` new tokens written at `cache_index` against a cache of size s.

  Without `attention_mask` a query sees every valid slot at or before its own (causal); with
  one (a prefill with a non-causal pattern, e.g. an image span) that mask decides, limited to
  valid slots.
  """
  slots = jnp.arange(key_valid.shape[-1])
  query_slots = cache_index + jnp.arange(query_length)
  own_slot = slots[None, :] == query_slots[:, None]
  if attention_mask is None:
    attention_mask = slots[None, :] <= query_slots[:, None]
  return (attention_mask & key_valid[:, None, :]) | own_slot


def left_padded_positions(mask: Int[ArrayLike, "b l"]) -> Int[Array, "b l"]:
  """Positions that start at 0 on each row's first real token of a left-padded batch (as HF does)."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
