"""DDPM and DDIM samplers for the diffusion head, with temperature and classifier-free guidance.

Each sampler is one `lax.scan` over the (respaced) steps, so `jit` compiles it once. The running
state x_t, the schedule and every update coefficient stay float32 whatever the head computes in.
With guidance, the conditional and unconditional halves run as one batch of the head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from mmar_jax.diffusion.losses import HeadFn, x0_and_eps
from mmar_jax.diffusion.schedule import NoiseSchedule

SAMPLERS = ("ddpm", "ddim")
GUIDANCE_SCHEDULES = ("constant", "linear")


def guidance_scale(cfg_scale: float, schedule: str, progress: Float[Array, ""] | float) -> Float[Array, ""]:
  """MAR's guidance schedule over the auto-regressive steps; `progress` in [0, 1] is the share of
  image tokens already generated. 'linear' ramps from 1 (no guidance) to `cfg_scale`."""
  if schedule == "constant":
    return jnp.asarray(cfg_scale, jnp.float32)
  if schedule == "linear":
    return 1.0 + (cfg_scale - 1.0) * jnp.asarray(progress, jnp.float32)
  raise ValueError(f"config.diffusion.cfg_schedule={schedule!r} must be one of {GUIDANCE_SCHEDULES}")


def _guided_output(head_fn: HeadFn, x, t, z, z_uncond, cfg_scale):
  if z_uncond is None:
    return head_fn(x, t, z).astype(jnp.float32)
  both = head_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([z, z_uncond]))
  cond, uncond = jnp.split(both.astype(jnp.float32), 2)
  # Guidance on the output is guidance on eps and x0 too: for fixed x_t they are affine in it.
  return uncond + cfg_scale * (cond - uncond)


def sample(
    head_fn: HeadFn,
    z: Float[Array, "b d"],
    rng: jax.Array,
    schedule: NoiseSchedule,
    token_dim: int,
    *,
    prediction: str = "v",
    sampler: str = "ddpm",
    temperature: float | Float[Array, ""] = 1.0,
    z_uncond: Float[Array, "b d"] | None = None,
    cfg_scale: float | Float[Array, ""] = 1.0,
) -> Float[Array, "b c"]:
  """Draws one token per condition by running `schedule` (usually respaced) backwards.

  DDPM uses the posterior variance (fixed, "small") times `temperature`, MAR's temperature
  knob; DDIM is deterministic (eta = 0) after the initial noise. `z_uncond` (same shape as z)
  turns on classifier-free guidance with `cfg_scale`.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"config.diffusion.sampler={sampler!r} must be one of {SAMPLERS}")
  init_rng, loop_rng = jax.random.split(rng)
  x = jax.random.normal(init_rng, (z.shape[0], token_dim), jnp.float32)
  alphas, alphas_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
  cfg_scale = jnp.asarray(cfg_scale, jnp.float32)

  def step(x, inputs):
    i, step_rng = inputs
    a, a_prev = alphas[i], alphas_prev[i]
    t = jnp.full((x.shape[0],), schedule.model_timesteps[i], jnp.float32)
    x0, eps = x0_and_eps(prediction, _guided_output(head_fn, x, t, z, z_uncond, cfg_scale), x,
                         jnp.broadcast_to(a, (x.shape[0],)))
    if sampler == "ddim":
      return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps, None
    alpha = a / a_prev
    beta = 1.0 - alpha
    mean = (jnp.sqrt(a_prev) * beta * x0 + jnp.sqrt(alpha) * (1.0 - a_prev) * x) / (1.0 - a)
    std = jnp.sqrt(beta * (1.0 - a_prev) / (1.0 - a)) * temperature
    noise = jax.random.normal(step_rng, x.shape, jnp.float32)
    return mean + jnp.where(i > 0, std, 0.0) * noise, None  # No noise on the last step.

  steps = jnp.arange(schedule.num_steps)[::-1]
  x, _ = jax.lax.scan(step, x, (steps, jax.random.split(loop_rng, schedule.num_steps)))
  return x
