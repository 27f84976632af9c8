"""The optimizer: AdamW with warmup + cosine decay, global-norm clipping, and non-finite skipping.

Everything is optax: `optax.warmup_cosine_decay_schedule`, `optax.clip_by_global_norm`,
`optax.adamw` with a weight-decay mask, and `optax.apply_if_finite`, whose counters the loop
reads to stop a run after too many consecutive skipped steps.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

# apply_if_finite "gives up" and applies a non-finite update after this many in a row. The loop
# stops the run long before (config.train.max_consecutive_skips), so it must never give up.
_NEVER_GIVE_UP = 2**30


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to the peak, cosine decay to end_lr_fraction x peak at num_steps."""
  t = train_config
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=min(t.warmup_steps, t.num_steps - 1),
      decay_steps=t.num_steps, end_value=t.learning_rate * t.end_lr_fraction)


def weight_decay_mask(params: Any) -> Any:
  """True where weight decay applies: matrices and tables, not norm scales or biases (1-d)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(train_config: ml_collections.ConfigDict, trainable: Any = None) -> optax.GradientTransformation:
  """The full update rule. `trainable`, a bool pytree like params (see models/lora.py), freezes
  the False leaves: they get zero updates and no optimizer moments."""
  t = train_config
  inner = optax.chain(
      optax.clip_by_global_norm(t.grad_clip_norm) if t.grad_clip_norm > 0 else optax.identity(),
      optax.adamw(learning_rate_schedule(t), b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                  weight_decay=t.weight_decay, mask=weight_decay_mask),
  )
  if trainable is not None:
    labels = jax.tree.map(lambda train: "train" if train else "freeze", trainable)
    inner = optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels)
  return optax.apply_if_finite(inner, _NEVER_GIVE_UP)


def skip_counts(opt_state: Any) -> tuple[jax.Array, jax.Array]:
  """(consecutive, total) updates skipped for non-finite gradients, from apply_if_finite's state."""
  return opt_state.notfinite_count, opt_state.total_notfinite
