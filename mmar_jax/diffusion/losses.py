"""Diffusion losses: v-prediction (MMAR's choice) and eps/x0 for comparison, all in float32.

With a_t = alpha_bar_t, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps and
v = sqrt(a_t) eps - sqrt(1 - a_t) x0. The head's output is cast to float32 before the loss, and
targets, coefficients and the reduction are float32 whatever the head computes in: MMAR's
stability argument (shared/MMAR.md) is about exactly where the low-precision error enters.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from mmar_jax.diffusion.schedule import NoiseSchedule

PREDICTIONS = ("v", "eps", "x0")


def _coefficients(a: Float[Array, "b"]):
  return jnp.sqrt(a)[:, None], jnp.sqrt(1.0 - a)[:, None]


def noisy(x0: Float[Array, "b c"], eps: Float[Array, "b c"], a: Float[Array, "b"]) -> Float[Array, "b c"]:
  signal, noise = _coefficients(a)
  return signal * x0 + noise * eps


def prediction_target(prediction: str, x0, eps, a) -> Float[Array, "b c"]:
  signal, noise = _coefficients(a)
  if prediction == "v":
    return signal * eps - noise * x0
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  raise ValueError(f"config.diffusion.prediction={prediction!r} must be one of {PREDICTIONS}")


def x0_and_eps(prediction: str, output: Float[Array, "b c"], x_t: Float[Array, "b c"], a: Float[Array, "b"]):
  """The (x0, eps) that a network output implies at x_t, computed in float32."""
  output, x_t = output.astype(jnp.float32), x_t.astype(jnp.float32)
  signal, noise = _coefficients(a)
  if prediction == "v":
    return signal * x_t - noise * output, noise * x_t + signal * output
  if prediction == "eps":
    # Dividing by sqrt(a_t) is what makes eps unstable: it grows without bound as a_t -> 0.
    return (x_t - noise * output) / signal, output
  if prediction == "x0":
    return output, (x_t - signal * output) / noise
  raise ValueError(f"config.diffusion.prediction={prediction!r} must be one of {PREDICTIONS}")


HeadFn = Callable[[Float[Array, "n c"], Float[Array, "n"], Float[Array, "n d"]], Float[Array, "n c"]]


def diffusion_loss(
    head_fn: HeadFn,
    x0: Float[Array, "b c"],
    z: Float[Array, "b d"],
    mask: Float[Array, "b"],
    rng: jax.Array,
    schedule: NoiseSchedule,
    prediction: str = "v",
    batch_mul: int = 4,
) -> Float[Array, ""]:
  """Mean squared error of the head's prediction over tokens where `mask` is 1, in float32.

  Each (token, condition) pair is repeated `batch_mul` times with independent (t, noise) draws
  (MAR's diffusion_batch_mul), folded into one batch so the head runs one large matmul.
  """
  x0 = jnp.repeat(x0.astype(jnp.float32), batch_mul, axis=0)
  z = jnp.repeat(z, batch_mul, axis=0)
  mask = jnp.repeat(mask.astype(jnp.float32), batch_mul, axis=0)
  t_rng, noise_rng = jax.random.split(rng)
  step = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_steps)
  a = schedule.alphas_cumprod[step]
  eps = jax.random.normal(noise_rng, x0.shape, jnp.float32)
  output = head_fn(noisy(x0, eps, a), schedule.model_timesteps[step].astype(jnp.float32), z)
  per_token = jnp.mean((output.astype(jnp.float32) - prediction_target(prediction, x0, eps, a)) ** 2, axis=-1)
  return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)
