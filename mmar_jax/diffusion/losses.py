"""The diffusion loss of the head: MSE to the v (or eps, or x0) target, in float32, per-token mask.

`diffusion_batch_mul` (MAR's 4): every token is paired with that many independent (t, noise)
draws, and all of them go through the head in one batch, so the head runs one large matmul per
layer instead of a Python loop of small ones.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from mmar_jax.diffusion import parameterization
from mmar_jax.diffusion.schedule import Schedule

# (x_t [m, c], t [m], z [m, dz]) -> prediction [m, c]; typically `lambda *a: head.apply(params, *a)`.
HeadFn = Callable[[Array, Array, Array], Array]


def per_token_loss(head_fn: HeadFn, x0: Float[ArrayLike, "n c"], z: Float[ArrayLike, "n dz"], rng: PRNGKeyArray, *,
                   schedule: Schedule, prediction: str, batch_mul: int = 1
                   ) -> tuple[Float[Array, "m n"], Float[Array, "m n"]]:
  """Squared error averaged over channels for `batch_mul` draws per token, and each draw's t.

  Returns ([batch_mul, n] losses, [batch_mul, n] float32 timesteps).
  """
  n = x0.shape[0]
  # float32: the target v = sqrt(a) eps - sqrt(1 - a) x0 and the noising are built from the schedule.
  x0 = einops.repeat(x0.astype(jnp.float32), "n c -> (m n) c", m=batch_mul)
  z = einops.repeat(z, "n d -> (m n) d", m=batch_mul)
  k_rng, eps_rng = jax.random.split(rng)
  k = jax.random.randint(k_rng, (batch_mul * n,), 0, schedule.num_steps)
  alpha_bar = jnp.asarray(schedule.alpha_bar)[k]
  t = jnp.asarray(schedule.timesteps, jnp.float32)[k]
  eps = jax.random.normal(eps_rng, x0.shape, jnp.float32)
  x_t = jnp.sqrt(alpha_bar)[:, None] * x0 + jnp.sqrt(1 - alpha_bar)[:, None] * eps
  out = head_fn(x_t, t, z).astype(jnp.float32)  # float32 before the loss, whatever the head computed in.
  err = jnp.mean(jnp.square(out - parameterization.target(prediction, x0, eps, alpha_bar)), axis=-1)
  return err.reshape(batch_mul, n), t.reshape(batch_mul, n)


def diffusion_loss(head_fn: HeadFn, x0: Float[ArrayLike, "*b c"], z: Float[ArrayLike, "*b dz"],
                   mask: Bool[ArrayLike, "*b"] | Float[ArrayLike, "*b"] | None, rng: PRNGKeyArray, *,
                   schedule: Schedule,
                   prediction: str = "v", batch_mul: int = 1
                   ) -> Float[Array, ""]:
  """Mean over masked tokens (and their `batch_mul` draws) of the per-token MSE, float32.

  `x0`, `z` and `mask` share leading dims (e.g. [b, n]); mask 1 (or True) marks tokens that count.
  """
  x0 = x0.reshape(-1, x0.shape[-1])
  z = z.reshape(-1, z.shape[-1])
  err, _ = per_token_loss(head_fn, x0, z, rng, schedule=schedule, prediction=prediction, batch_mul=batch_mul)
  if mask is None:
    return jnp.mean(err)
  w = jnp.broadcast_to(mask.reshape(1, -1).astype(jnp.float32), err.shape)
  # At least 1 in the denominator: a batch may have no masked image token (mask ratio near 0).
  return jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)
