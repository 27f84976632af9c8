"""Text decoding with the backbone's KV cache: one prefill, then a `lax.scan` of one-token steps.

The whole loop is one jitted function: no per-token Python round trip.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Int

from mmar_jax.models import masks
from mmar_jax.models.backbone import Backbone, BackboneConfig, KVCache


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def greedy_decode(
    cfg: BackboneConfig,
    params,
    prompt_ids: Int[ArrayLike, "b l"],
    prompt_mask: Int[ArrayLike, "b l"],
    max_new_tokens: int,
) -> Int[Array, "b n"]:
  """Greedy continuation of left-padded prompts (`prompt_mask` 1 on real tokens, 0 on padding)."""
  model = Backbone(cfg)
  batch, prompt_len = prompt_ids.shape
  cache = KVCache.zeros(cfg, batch, prompt_len + max_new_tokens)
  positions = masks.left_padded_positions(prompt_mask)
  out = model.apply(params, prompt_ids, positions, segment_ids=prompt_mask.astype(jnp.int32), kv_cache=cache)
  first = jnp.argmax(out.logits[:, -1], axis=-1)

  def step(carry, _):
    token, position, cache = carry
    out = model.apply(params, token[:, None], position[:, None], kv_cache=cache)
    next_token = jnp.argmax(out.logits[:, -1], axis=-1)
    return (next_token, position + 1, out.kv_cache), next_token

  # The prefill gave the first token; each step feeds one token and yields the next.
  _, rest = jax.lax.scan(step, (first, positions[:, -1] + 1, out.kv_cache), None, length=max_new_tokens - 1)
  return jnp.concatenate([first[:, None], rest.T], axis=1)
