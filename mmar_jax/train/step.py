"""The jitted train step: tokenize images, the joint loss, gradients (accumulated), the update, metrics.

`make_train_step` closes over the static pieces (model, tokenizer, optimizer, settings) and
returns a pure `train_step(state, batch, tokenizer_params) -> (state, metrics)`; the loop jits it
once with the state donated. Micro-batches for gradient accumulation run in a `lax.scan`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from mmar_jax.batch import Batch
from mmar_jax.models import lora
from mmar_jax.models.mmar import MMAR, MaskRatioConfig, draw_generation_mask
from mmar_jax.models.tokenizers import ImageTokenizer
from mmar_jax.train import ema as ema_lib
from mmar_jax.train import optimizer
from mmar_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The step's settings (from config.model, config.train)."""
  mask_ratio: MaskRatioConfig
  grad_accum_steps: int
  sample_posterior: bool
  ema_decay: float  # The state's EMA (train/ema.py) moves only when the state holds one.

  @classmethod
  def from_config(cls, config) -> StepConfig:
    return cls(mask_ratio=MaskRatioConfig.from_config(config), grad_accum_steps=config.train.grad_accum_steps,
               sample_posterior=config.tokenizer.sample_posterior, ema_decay=config.train.ema_decay)


def image_tokens(tokenizer: ImageTokenizer, tokenizer_params: Any, batch: Batch, rng: PRNGKeyArray | None
                 ) -> Float[ArrayLike, "b m n c"]:  # numpy pixels in (tests): numpy out
  """The batch's images as continuous tokens: precomputed `image_tokens` (tests feed non-finite
  ones), tokens of the latent cache's `image_moments` (sampled, scaled and grouped exactly as the
  KL-16 tokenizer does pixels), or the tokenizer's encoding of the uint8 `images` mapped to
  [-1, 1]. `rng` None takes the posterior mean."""
  if batch.image_tokens is not None:
    return batch.image_tokens.astype(jnp.float32)
  if batch.image_moments is not None:
    moments = batch.image_moments
    b, m = moments.shape[:2]
    tokens = tokenizer.tokens_from_moments(moments.reshape((b * m,) + moments.shape[2:]), rng)
  else:
    images = batch.images
    b, m = images.shape[:2]
    pixels = images.reshape((b * m,) + images.shape[2:]).astype(jnp.float32) / 127.5 - 1.0
    tokens = tokenizer.encode(tokenizer_params, pixels, rng)
  return jax.lax.stop_gradient(tokens.reshape((b, m) + tokens.shape[1:]).astype(jnp.float32))


def _micro_batches(batch: Batch, num: int) -> Batch:
  """[B, ...] -> [num, B / num, ...], micro-batch i = rows i, i + num, ... so that each device's
  contiguous block of rows feeds every micro-batch and no rows move between devices."""
  def split(x):
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def _loss_fn(model: MMAR, tokenizer: ImageTokenizer, cfg: StepConfig):
  def loss_fn(params, batch, tokenizer_params, rng):
    token_rng, mask_rng, loss_rng = jax.random.split(rng, 3)
    tokens = image_tokens(tokenizer, tokenizer_params, batch, token_rng if cfg.sample_posterior else None)
    generate_mask = draw_generation_mask(mask_rng, batch.image_task, tokens.shape[2], cfg.mask_ratio)
    # Frozen base weights (LoRA on) get no weight gradients: XLA then skips those matmuls, and
    # grad_norm covers the trainable leaves only, as the clipping inside the optimizer does.
    params = lora.stop_frozen_gradients(params, model.cfg.backbone.lora_rank)
    out = model.apply({"params": params}, batch, tokens, generate_mask, loss_rng)
    return out.loss, {"loss": out.loss, "ce": out.ce, "v_loss": out.v_loss, "head_overflow": out.head_overflow}
  return loss_fn


def make_validation_step(model: MMAR, tokenizer: ImageTokenizer, cfg: StepConfig):
  """`validation_step(params, batch, tokenizer_params, rng) -> {'loss', 'ce', 'v_loss'}`: the
  training loss of a batch without a gradient; the caller fixes `rng` so every evaluation
  draws the same masks, timesteps and noise."""
  loss_fn = _loss_fn(model, tokenizer, cfg)

  def validation_step(params, batch: Batch, tokenizer_params: Any, rng: PRNGKeyArray) -> dict[str, Array]:
    _, parts = loss_fn(params, batch, tokenizer_params, rng)
    return {key: parts[key] for key in ("loss", "ce", "v_loss")}

  return validation_step


def make_train_step(model: MMAR, tokenizer: ImageTokenizer, tx: optax.GradientTransformation,
                    learning_rate: optax.Schedule, cfg: StepConfig):
  """The pure step function for `jax.jit`; call it under `sharding.activate(mesh, rules)`.

  `learning_rate` is the schedule inside `tx`, evaluated here only to log its value.
  """

  grad_fn = jax.value_and_grad(_loss_fn(model, tokenizer, cfg), has_aux=True)

  def train_step(state: TrainState, batch: Batch, tokenizer_params: Any
                 ) -> tuple[TrainState, dict[str, Array]]:
    rng = state.step_key()
    if cfg.grad_accum_steps == 1:
      (_, parts), grads = grad_fn(state.params, batch, tokenizer_params, rng)
    else:
      def accumulate(carry, xs):
        i, micro = xs
        (_, parts), grads = grad_fn(state.params, micro, tokenizer_params, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (parts, grads)), None

      zeros = jax.tree.map(jnp.zeros_like, ({"loss": 0.0, "ce": 0.0, "v_loss": 0.0, "head_overflow": 0.0},
                                            state.params))
      num = cfg.grad_accum_steps
      (parts, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(num), _micro_batches(batch, num)))
      # Each micro-batch's losses are means over its own tokens; the step's is their mean [ours].
      parts, grads = jax.tree.map(lambda x: x / num, (parts, grads))
    # A non-finite loss poisons every gradient, so apply_if_finite (which looks at the
    # gradients) skips the update; the parameters and moments stay exactly as they were.
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(parts["loss"]), g, jnp.nan), grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    consecutive, total = optimizer.skip_counts(opt_state)
    ema = state.ema
    if ema is not None:  # A skipped update leaves the EMA as it was, like the params.
      ema = ema_lib.update(ema, params, cfg.ema_decay, keep=consecutive == 0)
    metrics = dict(parts, grad_norm=optax.tree.norm(grads), learning_rate=learning_rate(state.step),
                   skipped=(consecutive > 0).astype(jnp.int32),
                   consecutive_skips=consecutive, total_skips=total,
                   tokens=jnp.sum(batch.segment_ids > 0), images=jnp.sum(batch.image_valid))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng, ema=ema), metrics

  return train_step
