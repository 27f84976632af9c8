"""How low-precision error in the head's output reaches the sample: MMAR's stability argument.

In bfloat16 the network output carries an error delta of the order of its own magnitude. What
that error does downstream depends only on the parameterisation (shared/MMAR.md):
- the x0 estimate gets coefficient sqrt((1 - a)/a) for eps (unbounded as a -> 0), 1 for x0,
  and sqrt(1 - a) <= 1 for v;
- one DDIM step from t to t-1 gets |sqrt(1 - a_prev) - sqrt(a_prev) sqrt(1 - a)/sqrt(a)| for eps
  and |sqrt(1 - a_prev) sqrt(a) - sqrt(a_prev) sqrt(1 - a)| <= 1 for v (the paper's bound).
`measure_x0_error` runs a head in float32 and in bfloat16 on the same inputs and reports the
error that bfloat16 adds to the implied x0, beside what the coefficients predict.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mmar_jax.diffusion.losses import noisy, x0_and_eps
from mmar_jax.diffusion.schedule import NoiseSchedule
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig


def x0_error_coefficient(prediction: str, a):
  """|d x0_hat / d output| at alpha_bar = a."""
  a = jnp.asarray(a, jnp.float32)
  return {"eps": jnp.sqrt((1 - a) / a), "x0": jnp.ones_like(a), "v": jnp.sqrt(1 - a)}[prediction]


def ddim_step_error_coefficient(prediction: str, a, a_prev):
  """|d x_{t-1} / d output| of one deterministic DDIM step (the paper's theorem)."""
  a, a_prev = jnp.asarray(a, jnp.float32), jnp.asarray(a_prev, jnp.float32)
  if prediction == "eps":
    return jnp.abs(jnp.sqrt(1 - a_prev) - jnp.sqrt(a_prev) * jnp.sqrt(1 - a) / jnp.sqrt(a))
  if prediction == "v":
    return jnp.abs(jnp.sqrt(1 - a_prev) * jnp.sqrt(a) - jnp.sqrt(a_prev) * jnp.sqrt(1 - a))
  if prediction == "x0":
    return jnp.abs(jnp.sqrt(a_prev) - jnp.sqrt(1 - a_prev) * jnp.sqrt(a) / jnp.sqrt(1 - a))
  raise ValueError(f"prediction={prediction!r}")


@dataclasses.dataclass(frozen=True)
class BucketError:
  steps: tuple[int, int]  # [first, last] training step of the bucket.
  alpha_bar: float  # Its smallest alpha_bar (the noisiest end).
  output_error: float  # Mean |output_bf16 - output_f32|.
  x0_error: float  # Mean |x0_bf16 - x0_f32|.
  predicted: float  # Mean of coefficient(a) x |output error| per element, the bound's prediction.


def measure_x0_error(cfg: HeadConfig, params, prediction: str, schedule: NoiseSchedule, x0, z, rng,
                     buckets: int = 10) -> list[BucketError]:
  """Per bucket of training steps, the x0 error that computing the head in bfloat16 adds."""
  heads = {d: DiffusionHead(dataclasses.replace(cfg, dtype=d)) for d in ("float32", "bfloat16")}
  bounds = np.linspace(0, schedule.num_steps, buckets + 1).astype(int)
  results = []
  for first, end in zip(bounds[:-1], bounds[1:]):
    step_rng, noise_rng, rng = jax.random.split(rng, 3)
    steps = jax.random.randint(step_rng, (x0.shape[0],), first, end).at[0].set(end - 1)
    a = schedule.alphas_cumprod[steps]
    x_t = noisy(x0, jax.random.normal(noise_rng, x0.shape), a)
    t = schedule.model_timesteps[steps].astype(jnp.float32)
    outputs = {d: head.apply(params, x_t, t, z).astype(jnp.float32) for d, head in heads.items()}
    x0_hat = {d: x0_and_eps(prediction, out, x_t, a)[0] for d, out in outputs.items()}
    output_error = jnp.abs(outputs["bfloat16"] - outputs["float32"])
    predicted = x0_error_coefficient(prediction, a)[:, None] * output_error
    results.append(BucketError(steps=(int(first), int(end - 1)), alpha_bar=float(a.min()),
                               output_error=float(output_error.mean()),
                               x0_error=float(jnp.abs(x0_hat["bfloat16"] - x0_hat["float32"]).mean()),
                               predicted=float(predicted.mean())))
  return results
