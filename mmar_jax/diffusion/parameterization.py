"""What the head predicts (v, eps or x0): the training target and the way back to (x0, eps).

With x_t = sqrt(a) x0 + sqrt(1 - a) eps and a = alpha_bar_t (the paper's notation):
  v   = sqrt(a) eps - sqrt(1 - a) x0
  x0  = sqrt(a) x_t - sqrt(1 - a) v          eps = sqrt(1 - a) x_t + sqrt(a) v
  x0  = (x_t - sqrt(1 - a) eps) / sqrt(a)    (eps-prediction: 1 / sqrt(a) is unbounded as a -> 0)
Everything here runs in float32: the head's output is cast before any of it.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from mmar_jax.configs import PREDICTIONS



def _check(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction={prediction!r} must be one of {PREDICTIONS}")


def target(prediction: str, x0: Float[ArrayLike, "b c"], eps: Float[ArrayLike, "b c"],
           alpha_bar: Float[ArrayLike, " b"]) -> Float[Array, "b c"]:
  """The regression target of `prediction` for clean x0, noise eps and alpha_bar_t."""
  _check(prediction)
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  sa, s1a = jnp.sqrt(alpha_bar)[:, None], jnp.sqrt(1 - alpha_bar)[:, None]
  return sa * eps - s1a * x0


def to_x0_eps(prediction: str, out: Float[ArrayLike, "b c"], x_t: Float[ArrayLike, "b c"],
              alpha_bar: Float[ArrayLike, " b"]) -> tuple[Float[Array, "b c"], Float[Array, "b c"]]:
  """(x0, eps) implied by the head's output `out` at x_t, all float32."""
  _check(prediction)
  # float32: the conversions divide by sqrt(alpha_bar), down to ~3e-5 on the cosine schedule.
  out, x_t, alpha_bar = out.astype(jnp.float32), x_t.astype(jnp.float32), alpha_bar.astype(jnp.float32)
  sa, s1a = jnp.sqrt(alpha_bar)[:, None], jnp.sqrt(1 - alpha_bar)[:, None]
  if prediction == "v":
    return sa * x_t - s1a * out, s1a * x_t + sa * out
  if prediction == "eps":
    return (x_t - s1a * out) / sa, out
  # x0-prediction: eps divides by sqrt(1 - a), which is 0 only at a = 1, never reached (t >= 0 has a < 1).
  return out, (x_t - sa * out) / s1a
