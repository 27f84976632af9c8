"""Noise schedules: MAR's cosine schedule over 1000 training steps, and respacing for sampling.

Every array here is float32, whatever the model's compute dtype: alpha_bar spans ~1e-8 to ~1 at
the ends of the cosine schedule, which bfloat16's 8-bit mantissa cannot resolve.
"""

from __future__ import annotations

import math

import flax.struct
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


@flax.struct.dataclass
class NoiseSchedule:
  """alpha_bar at each step, and the training-step index each step stands for."""

  alphas_cumprod: Float[Array, "t"]
  model_timesteps: Int[Array, "t"]  # What the head is told t is (the original index after respacing).

  @property
  def num_steps(self) -> int:
    return self.alphas_cumprod.shape[0]

  @property
  def alphas_cumprod_prev(self) -> Float[Array, "t"]:
    return jnp.concatenate([jnp.ones((1,), jnp.float32), self.alphas_cumprod[:-1]])

  @property
  def alphas(self) -> Float[Array, "t"]:
    """Per-step a_t / a_{t-1}; use it rather than 1 - beta, which cancels near beta = 1."""
    return self.alphas_cumprod / self.alphas_cumprod_prev

  @property
  def betas(self) -> Float[Array, "t"]:
    return 1.0 - self.alphas


def cosine_schedule(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
  """Nichol & Dhariwal's cosine schedule, as MAR uses it (betas clipped at 0.999)."""
  # float64 while building, as the reference implementations do, then float32 for use.
  f = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
  betas = np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)], np.float64)
  alphas_cumprod = np.cumprod(1.0 - betas)
  return NoiseSchedule(alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
                       model_timesteps=jnp.arange(num_steps, dtype=jnp.int32))


def respace(schedule: NoiseSchedule, num_steps: int) -> NoiseSchedule:
  """Keeps `num_steps` evenly spaced steps (first and last included) of a training schedule.

  The kept steps' alpha_bar are unchanged, so the implied betas of the shorter chain are
  1 - alpha_bar[t_i] / alpha_bar[t_{i-1}], as in improved DDPM's respacing.
  """
  total = schedule.num_steps
  if not 1 <= num_steps <= total:
    raise ValueError(f"num_sampling_steps={num_steps} must be in [1, {total}] (the training steps)")
  kept = np.unique(np.round(np.linspace(0, total - 1, num_steps)).astype(np.int32))
  return NoiseSchedule(alphas_cumprod=schedule.alphas_cumprod[kept], model_timesteps=schedule.model_timesteps[kept])
