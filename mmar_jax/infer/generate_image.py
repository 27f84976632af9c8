"""Image generation with the unified model: MAR's iterative masked generation, one jitted loop.

    settings = generation_settings(config)            # config.diffusion + the tokenizer's N
    tokens = generate(model, params, caption_ids, special_ids, rng, **settings)   # [b, n, c] float32
    pixels = image_tokenizer.decode(tokenizer_params, tokens)

`model` is an `MMAR`; `params` its parameter tree (or the `{'params': ...}` variables);
`caption_ids` one list of caption token ids per image, *without* special tokens (`[]` draws
an unconditional image); `special_ids` from `text_tokenizer.special_ids`. Same seed, same images.

How [MAR, `sample_tokens`]: each image gets its own random order of its N token positions; all
start masked. Over `num_steps` AR steps the number still masked follows the cosine schedule
floor(N cos(pi/2 (k+1)/S)) (at least one token revealed a step, all on the last); at every step
the backbone gives z at each slot and the diffusion sampler draws the newly revealed tokens from
the head. Classifier-free guidance runs each caption's sequence and the empty-caption sequence
(`<|im_start|> <boi>`, the caption-dropout branch of training) in one batch, with MAR's linear
guidance schedule 1 -> cfg_scale over the tokens known after each step; both branches share the
partial image and the diffusion noise, as in MAR. At cfg_scale 1 only the conditional branch runs.

Static shapes [ours]: prompts are left-padded (infer/prompts.py: fewer recompiles across
caption lengths); the prompt's KV cache is computed once and reused by every step; each step
runs the head on the largest number of tokens any step reveals, and drops the surplus lanes.
The guidance scale and temperature are traced: changing them does not recompile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from mmar_jax.data.text_tokenizer import SpecialIds
from mmar_jax.diffusion import sampling
from mmar_jax.diffusion.schedule import Schedule
from mmar_jax.infer import prompts
from mmar_jax import configs
from mmar_jax.models.mmar import MMAR, MMARConfig, as_variables


def generation_settings(config, **overrides) -> dict[str, Any]:
  """`generate`'s keyword arguments from `config` (diffusion section, tokenizer's N), with overrides."""
  d = config.diffusion
  settings = dict(num_tokens=configs.num_image_tokens(config), num_steps=d.num_generation_steps, cfg_scale=d.cfg_scale,
                  cfg_schedule=d.cfg_schedule, temperature=d.temperature, num_sampling_steps=d.num_sampling_steps,
                  sampler=d.sampler, ddim_eta=d.ddim_eta)
  unknown = set(overrides) - set(settings)
  if unknown:
    raise TypeError(f"unknown generation settings {sorted(unknown)}; known: {sorted(settings)}")
  settings.update(overrides)
  return settings


def reveal_schedule(num_tokens: int, num_steps: int) -> np.ndarray:
  """Tokens still masked before each AR step and after the last: [S + 1] from N down to 0 [MAR].

  S = min(num_steps, N): MAR reveals at least one token a step, so further steps reveal nothing.
  """
  steps = min(num_steps, num_tokens)
  remaining = [num_tokens]
  for k in range(steps - 1):
    target = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps))
    # At least one revealed this step (while more than one is left), at least one left for later.
    remaining.append(max(1, min(remaining[-1] - 1, target)))
  remaining.append(0)
  return np.asarray(remaining, np.int32)


def generation_prompts(caption_ids: Sequence[Sequence[int]], special_ids: SpecialIds, *, guided: bool
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Left-padded `<|im_start|> caption <boi>` rows (then as many empty-caption rows if `guided`) and their mask."""
  reserved = {special_ids.im_start, special_ids.boi, special_ids.eoi, special_ids.mask}
  for i, ids in enumerate(caption_ids):
    bad = sorted(set(ids) & reserved)
    if bad:
      raise ValueError(f"caption {i} holds special token ids {bad}: pass the caption's own ids only; "
                       "generate adds <|im_start|> and <boi>")
  rows = [[special_ids.im_start, *ids, special_ids.boi] for ids in caption_ids]
  if guided:
    rows += [[special_ids.im_start, special_ids.boi]] * len(caption_ids)
  ids, mask, _ = prompts.left_pad(rows, special_ids.pad)
  return ids, mask


def generate(model: MMAR, params, caption_ids: Sequence[Sequence[int]], special_ids: SpecialIds,
             rng: PRNGKeyArray, *, num_tokens: int, num_steps: int, cfg_scale: float, cfg_schedule: str,
             temperature: float, num_sampling_steps: int, sampler: str, ddim_eta: float
             ) -> Float[Array, "b n c"]:
  """Image tokens [len(caption_ids), num_tokens, token_channels] float32 for each caption.

  Every keyword comes from `generation_settings(config)`: `num_steps` AR steps (capped at N),
  guidance `cfg_scale` on schedule `cfg_schedule` ('linear' or 'constant'), and the diffusion
  sampler (`sampler` 'ddpm' with `temperature` or 'ddim' with `ddim_eta`, `num_sampling_steps`).
  """
  if not caption_ids:
    raise ValueError("caption_ids is empty: give one list of token ids per image")
  guided = float(cfg_scale) != 1.0
  ids, mask = generation_prompts(caption_ids, special_ids, guided=guided)
  return _sample_tokens(model.cfg, as_variables(params), ids, mask, rng, jnp.float32(cfg_scale),
                        jnp.float32(temperature), num_tokens=num_tokens,
                        num_steps=min(num_steps, num_tokens), guided=guided, cfg_schedule=cfg_schedule,
                        num_sampling_steps=num_sampling_steps, sampler=sampler, ddim_eta=float(ddim_eta))


@functools.partial(jax.jit, static_argnames=("cfg", "num_tokens", "num_steps", "guided", "cfg_schedule",
                                             "num_sampling_steps", "sampler", "ddim_eta"))
def _sample_tokens(cfg: MMARConfig, variables, ids: Int[ArrayLike, "r l"], mask: Int[ArrayLike, "r l"],
                   rng: PRNGKeyArray, cfg_scale: Float[ArrayLike, ""], temperature: Float[ArrayLike, ""], *,
                   num_tokens: int, num_steps: int, guided: bool, cfg_schedule: str, num_sampling_steps: int,
                   sampler: str, ddim_eta: float
                   ) -> Float[Array, "b n c"]:
  """The whole generation of a batch: prompt prefill, then a `fori_loop` over the AR steps.

  `ids` holds b caption rows, then (if `guided`) b empty-caption rows.
  """
  model = MMAR(cfg)
  batch = ids.shape[0] // 2 if guided else ids.shape[0]
  n, channels = num_tokens, cfg.head.token_channels
  remaining_np = reveal_schedule(n, num_steps)
  width = int(np.max(remaining_np[:-1] - remaining_np[1:]))  # Most tokens any step reveals.
  remaining = jnp.asarray(remaining_np)
  schedule = Schedule.create(cfg.schedule, cfg.num_train_steps, num_sampling_steps)

  cache, next_position = model.apply(variables, ids, mask, reserve=n, method=MMAR.encode_prompt)
  order_rng, step_rng = jax.random.split(rng)
  # order[b, r]: the token with rank r; ranks below the masked count stay masked [MAR mask_by_order].
  order = jnp.argsort(jax.random.uniform(order_rng, (batch, n)), axis=-1).astype(jnp.int32)
  rank = jnp.argsort(order, axis=-1)
  rows = jnp.arange(batch)[:, None]
  lanes = jnp.arange(width, dtype=jnp.int32)
  both = (lambda a: jnp.concatenate([a, a])) if guided else (lambda a: a)  # noqa: E731
  head_fn = lambda v, x_t, t, z: model.apply(v, x_t, t, z, method=MMAR.head_prediction)  # noqa: E731

  def step(i, tokens):
    before, after = remaining[i], remaining[i + 1]
    z = model.apply(variables, cache, next_position, both(tokens), both(rank >= before),
                    method=MMAR.generation_step)
    # This step reveals ranks [after, before); lanes past that are computed and dropped.
    lane_rank = after + lanes
    live = lane_rank < before
    slot = jnp.take_along_axis(order, jnp.broadcast_to(jnp.minimum(lane_rank, n - 1), (batch, width)), axis=1)
    z_new = z[:batch][rows, slot].reshape(batch * width, -1)
    z_uncond = z[batch:][rows, slot].reshape(batch * width, -1) if guided else None
    scale = sampling.linear_cfg_scale(cfg_scale, n - after, n, cfg_schedule)
    new = sampling.sample(head_fn, variables, z_new, jax.random.fold_in(step_rng, i), schedule=schedule,
                          prediction=cfg.prediction, token_channels=channels, method=sampler, cfg_scale=scale,
                          z_uncond=z_uncond, temperature=temperature, eta=ddim_eta)
    dest = jnp.where(live, slot, n)  # Out of range: dropped.
    return tokens.at[rows, dest].set(new.reshape(batch, width, channels), mode="drop")

  return jax.lax.fori_loop(0, num_steps, step, jnp.zeros((batch, n, channels), jnp.float32))
