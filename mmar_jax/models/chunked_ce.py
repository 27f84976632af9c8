"""The LM head's logits and the text cross-entropy, dense or a block of positions at a time [ours].

For Qwen2's vocabulary (V = 151936) the float32 logits of one 1024-token row take 0.6 GiB, and
their gradient as much again. `nll_sum` with `chunk_size` > 0 scans over blocks of positions and
rematerializes each block's logits in the backward pass (`jax.checkpoint`), so only one block's
[b, chunk, V] logits are live at a time; per token it computes exactly what the dense path does.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

LOGITS_AXES = ("batch", "length", "activation_vocab")


def head_logits(hidden: Float[ArrayLike, "b l d"], kernel: Float[ArrayLike, "..."], *, tied: bool, dtype
                ) -> Float[Array, "b l v"]:
  """Float32 logits: the log-softmax of the loss needs them there. `kernel` is the embedding
  table [V, d] when `tied`, else the LM head [d, V]."""
  spec = "bld,vd->blv" if tied else "bld,dv->blv"
  logits = jnp.einsum(spec, hidden.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
  return nn.with_logical_constraint(logits, LOGITS_AXES)


def token_nll(logits: Float[ArrayLike, "b l v"], targets: Int[ArrayLike, "b l"]) -> Float[Array, "b l"]:
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def nll_sum(hidden: Float[ArrayLike, "b l d"], kernel: Float[ArrayLike, "..."], targets: Int[ArrayLike, "b l"],
            weights: Float[ArrayLike, "b l"], *, tied: bool, dtype, chunk_size: int) -> Float[Array, ""]:
  """sum(nll * weights) over every token, float32; `chunk_size` 0 = dense (all logits at once).

  A length that `chunk_size` does not divide is padded to a multiple of it with weight-0 tokens
  (their logits are computed and discarded): any sequence length works.
  """
  weights = jnp.asarray(weights, jnp.float32)
  if chunk_size <= 0:
    return jnp.sum(token_nll(head_logits(hidden, kernel, tied=tied, dtype=dtype), targets) * weights)
  batch, length = hidden.shape[:2]
  pad = -length % chunk_size
  if pad:
    widths = lambda a: [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)  # noqa: E731
    hidden, targets, weights = (jnp.pad(a, widths(a)) for a in (hidden, targets, weights))
  num_chunks = (length + pad) // chunk_size
  # [b, l, ...] -> [l / chunk, b, chunk, ...]: the scan runs over the leading axis.
  blocks = lambda a: jnp.moveaxis(a.reshape((batch, num_chunks, chunk_size) + a.shape[2:]), 1, 0)  # noqa: E731

  # Remat: the backward pass recomputes a block's logits from its hidden states instead of
  # saving them, so neither the logits nor their gradient outlive one step of the scan.
  # The kernel enters each block in its stored dtype (cast inside): the scan then sums its
  # gradient over blocks in that dtype, not in a bfloat16 compute dtype.
  @jax.checkpoint
  def block_sum(kernel, h, t, w):
    return jnp.sum(token_nll(head_logits(h, kernel, tied=tied, dtype=dtype), t) * w)

  def step(total, xs):
    return total + block_sum(kernel, *xs), None

  total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), (blocks(hidden), blocks(targets), blocks(weights)))
  return total
