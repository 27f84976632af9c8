"""The optimizer: AdamW with warmup + cosine decay, global-norm clipping, and non-finite skipping.

Everything is optax: `optax.warmup_cosine_decay_schedule`, `optax.clip_by_global_norm`,
`optax.adamw` with a weight-decay mask, `optax.multi_transform` freezing the base weights under
LoRA, and `optax.apply_if_finite`, whose counters the loop reads to stop a run after too many
consecutive skipped steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax

from mmar_jax.models import lora

# apply_if_finite "gives up" and applies a non-finite update after this many in a row. The loop
# stops the run long before (config.train.max_consecutive_skips), so it must never give up.
_NEVER_GIVE_UP = 2**30


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to the peak, cosine decay to end_lr_fraction x peak at num_steps.

  Shifted by one so that the first step already learns (peak / warmup_steps, not 0).
  """
  t = train_config
  base = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=min(t.warmup_steps, t.num_steps - 1),
      decay_steps=t.num_steps, end_value=t.learning_rate * t.end_lr_fraction)
  return lambda count: base(count + 1)


# What a parameter is decides whether it decays, by its name in the tree, never by its rank: under
# nn.scan a norm scale is [layers, d] and a q/k/v bias [layers, heads, head_dim].
DECAYED = frozenset({"kernel", "embed_tokens", "lm_head", "lora_a", "lora_b", "image_position_embedding"})
NOT_DECAYED = frozenset({"scale", "bias"})  # Norm scales (and LayerNorm's shift) and biases.


def weight_decay_mask(params: Any) -> Any:
  """True where weight decay applies: projection kernels, LoRA factors and embedding tables; False
  on norm scales and biases, whatever their rank. A parameter of another name is an error, so a
  new kind of weight is classified here rather than decayed by accident."""

  def decays(path, leaf) -> bool:
    del leaf
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    if name in DECAYED:
      return True
    if name in NOT_DECAYED:
      return False
    raise ValueError(f"train/optimizer.py: parameter {jax.tree_util.keystr(path)} is neither a weight "
                     f"{sorted(DECAYED)} nor a norm scale or bias {sorted(NOT_DECAYED)}; add its name to one")

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train_config: ml_collections.ConfigDict, params: Any = None, *, lora_rank: int = 0,
                   train_rows: Sequence[int] | None = None) -> optax.GradientTransformation:
  """The full update rule. With `lora_rank` > 0 the backbone's base weights are frozen (zero
  updates, no moments; `params`, abstract or concrete, gives the tree) and only `train_rows` of
  the embedding table move (models/lora.py)."""
  t = train_config
  inner = optax.chain(
      optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(t), b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                  weight_decay=t.weight_decay, mask=weight_decay_mask),
  )
  if lora_rank:
    inner = lora.partition_optimizer(inner, params, lora_rank, train_rows=train_rows)
  return optax.apply_if_finite(inner, _NEVER_GIVE_UP)


def skip_counts(opt_state: Any) -> tuple[jax.Array, jax.Array]:
  """(consecutive, total) updates skipped for non-finite gradients, from apply_if_finite's state."""
  return opt_state.notfinite_count, opt_state.total_notfinite
