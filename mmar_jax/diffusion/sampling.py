"""DDPM (with MAR's temperature) and DDIM samplers of the head, as one jitted `lax.fori_loop`.

Classifier-free guidance runs the conditional and unconditional halves in one head batch and
mixes the outputs, out = uncond + s * (cond - uncond); since the weights sum to 1 and the
conversions to (x0, eps) are affine in the output at fixed x_t, guiding v, eps or x0 is the same.
The running state x, the schedule and every coefficient stay float32; only the head's matmuls
use its compute dtype. The guidance scale and temperature are traced arguments, so changing them
(as MAR's linear guidance schedule does every AR step) never recompiles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from mmar_jax.configs import SAMPLERS
from mmar_jax.diffusion import parameterization
from mmar_jax.diffusion.schedule import Schedule

# (params, x_t [m, c], t [m], z [m, dz]) -> prediction [m, c]; typically `head.apply`.
ApplyFn = Callable[[Any, Array, Array, Array], Array]


def linear_cfg_scale(cfg_scale: Float[ArrayLike, ""] | float, num_known: Int[ArrayLike, ""] | int, num_tokens: int,
                     schedule: str = "linear") -> Float[ArrayLike, ""] | float:
  """MAR's guidance for an AR step: 1 + (s - 1) * (tokens known after the step) / (all tokens).

  Guidance starts near 1 while few tokens are known and reaches `cfg_scale` at the last step;
  `schedule='constant'` uses `cfg_scale` throughout.
  """
  if schedule == "constant":
    return cfg_scale
  if schedule != "linear":
    raise ValueError(f"cfg schedule {schedule!r} must be 'linear' or 'constant'")
  return 1.0 + (cfg_scale - 1.0) * num_known / num_tokens


def sample(apply_fn: ApplyFn, params: Any, z: Float[ArrayLike, "n dz"], rng: PRNGKeyArray, *, schedule: Schedule,
           prediction: str, token_channels: int, method: str = "ddpm", cfg_scale: Float[ArrayLike, ""] | float = 1.0,
           z_uncond: Float[ArrayLike, "n dz"] | None = None, temperature: Float[ArrayLike, ""] | float = 1.0,
           eta: float = 0.0) -> Float[Array, "n c"]:
  """Draws one token per condition in z by walking `schedule` from pure noise to step 0.

  With `z_uncond` (the conditions without the text), guidance of `cfg_scale` applies.
  `temperature` scales the DDPM noise std as MAR does (not the initial noise); DDIM ignores it
  and adds noise of std eta * sigma_DDIM.
  """
  if method not in SAMPLERS:
    raise ValueError(f"sampler method {method!r} must be one of {SAMPLERS}")
  n = z.shape[0]
  ts = jnp.asarray(schedule.timesteps, jnp.float32)
  ab, ab_prev = jnp.asarray(schedule.alpha_bar), jnp.asarray(schedule.alpha_bar_prev)
  z_both = z if z_uncond is None else jnp.concatenate([z, z_uncond], axis=0)
  cfg_scale = jnp.asarray(cfg_scale, jnp.float32)
  temperature = jnp.asarray(temperature, jnp.float32)

  def predict(x, t):
    if z_uncond is None:
      return apply_fn(params, x, jnp.full((n,), t), z_both).astype(jnp.float32)
    out = apply_fn(params, jnp.concatenate([x, x]), jnp.full((2 * n,), t), z_both).astype(jnp.float32)
    cond, uncond = out[:n], out[n:]
    return uncond + cfg_scale * (cond - uncond)

  def step(i, carry):
    x, rng = carry
    k = schedule.num_steps - 1 - i
    rng, noise_rng = jax.random.split(rng)
    a, a_prev = ab[k], ab_prev[k]
    x0, eps = parameterization.to_x0_eps(prediction, predict(x, ts[k]), x, jnp.full((n,), a))
    noise = jax.random.normal(noise_rng, x.shape, jnp.float32)
    last = (k == 0).astype(jnp.float32)  # No noise is added on the step to x_0.
    if method == "ddpm":
      alpha = a / a_prev
      beta = 1 - alpha
      # Posterior q(x_{k-1} | x_k, x0) with its own ("fixed small") variance. sqrt(alpha), not
      # sqrt(1 - beta): near beta = 0.999 the float32 subtraction cancels most of alpha's digits.
      mean = (beta * jnp.sqrt(a_prev) * x0 + (1 - a_prev) * jnp.sqrt(alpha) * x) / (1 - a)
      std = jnp.sqrt(beta * (1 - a_prev) / (1 - a))
      x = mean + (1 - last) * std * temperature * noise
    else:
      sigma = eta * jnp.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
      x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1 - a_prev - sigma**2, 0.0)) * eps + (1 - last) * sigma * noise
    return x, rng

  rng, init_rng = jax.random.split(rng)
  x = jax.random.normal(init_rng, (n, token_channels), jnp.float32)
  x, _ = jax.lax.fori_loop(0, schedule.num_steps, step, (x, rng))
  return x


def make_sampler(apply_fn: ApplyFn, *, schedule: Schedule, prediction: str, token_channels: int,
                 method: str = "ddpm", eta: float = 0.0):
  """`sample` jitted once: fn(params, z, rng, cfg_scale, temperature, z_uncond=None) -> tokens.

  Guidance scale and temperature are traced; only shapes (and guidance on/off) recompile.
  """
  def fn(params, z, rng, cfg_scale=1.0, temperature=1.0, z_uncond=None):
    return sample(apply_fn, params, z, rng, schedule=schedule, prediction=prediction, token_channels=token_channels,
                  method=method, cfg_scale=cfg_scale, z_uncond=z_uncond, temperature=temperature, eta=eta)
  return jax.jit(fn)

