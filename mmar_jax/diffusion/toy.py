"""A 2-D class-conditional Gaussian mixture, and a trainer for the diffusion head on it.

The head in isolation, with a known answer: class k puts 3/4 of its mass on mode 2k and 1/4 on
mode 2k+1 of eight modes on the unit circle. Tests and `benchmarks/precision_study.py` train on
it; a sampler is right when its samples land on the class's modes in those shares.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from mmar_jax.diffusion.losses import diffusion_loss
from mmar_jax.diffusion.schedule import NoiseSchedule
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig

NUM_CLASSES = 4
HEAVY_SHARE = 0.75
MODE_STD = 0.05
_ANGLES = np.arange(2 * NUM_CLASSES) * np.pi / NUM_CLASSES
MODES = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1).astype(np.float32)


def condition(classes: Int[Array, "b"]) -> Float[Array, "b k"]:
  """One-hot class conditions; class NUM_CLASSES is the unconditional (dropped) condition."""
  return jax.nn.one_hot(classes, NUM_CLASSES + 1)


def draw(rng: jax.Array, n: int) -> tuple[Float[Array, "n 2"], Int[Array, "n"]]:
  class_rng, mode_rng, noise_rng = jax.random.split(rng, 3)
  classes = jax.random.randint(class_rng, (n,), 0, NUM_CLASSES)
  heavy = jax.random.uniform(mode_rng, (n,)) < HEAVY_SHARE
  modes = jnp.asarray(MODES)[2 * classes + jnp.where(heavy, 0, 1)]
  return modes + MODE_STD * jax.random.normal(noise_rng, (n, 2)), classes


def head_config(depth: int = 2, width: int = 128, dtype: str = "float32") -> HeadConfig:
  return HeadConfig(token_dim=2, cond_dim=NUM_CLASSES + 1, depth=depth, width=width, dtype=dtype)


def train_head(cfg: HeadConfig, schedule: NoiseSchedule, *, prediction: str = "v", steps: int = 1500,
               batch: int = 256, learning_rate: float = 2e-3, cond_dropout: float = 0.1, seed: int = 0):
  """Trains the head on the mixture (conditions dropped at `cond_dropout` for guidance); returns params."""
  head = DiffusionHead(cfg)
  params = nn.meta.unbox(head.init(jax.random.key(seed), jnp.zeros((1, 2)), jnp.zeros((1,)),
                                   jnp.zeros((1, NUM_CLASSES + 1))))
  optimizer = optax.adam(learning_rate)

  def train_step(carry, rng):
    params, opt_state = carry
    data_rng, loss_rng, drop_rng = jax.random.split(rng, 3)
    x0, classes = draw(data_rng, batch)
    dropped = jax.random.uniform(drop_rng, (batch,)) < cond_dropout
    z = condition(jnp.where(dropped, NUM_CLASSES, classes))
    loss_fn = lambda p: diffusion_loss(lambda x, t, c: head.apply(p, x, t, c), x0, z,  # noqa: E731
                                       jnp.ones((batch,)), loss_rng, schedule, prediction)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), loss

  run = jax.jit(lambda p, s, rngs: jax.lax.scan(train_step, (p, s), rngs))
  (params, _), losses = run(params, optimizer.init(params), jax.random.split(jax.random.key(seed + 1), steps))
  return params, losses


def mode_statistics(samples: Float[Array, "n 2"], classes: Int[Array, "n"], radius: float = 0.25):
  """(share of samples within `radius` of one of their class's two modes, the heavy mode's share
  among those, mean distance to the nearer class mode)."""
  distance = jnp.linalg.norm(samples[:, None, :] - jnp.asarray(MODES)[None], axis=-1)
  rows = jnp.arange(samples.shape[0])
  heavy, light = distance[rows, 2 * classes], distance[rows, 2 * classes + 1]
  near = jnp.minimum(heavy, light) < radius
  return float(near.mean()), float((heavy < radius).sum() / jnp.maximum(near.sum(), 1)), \
      float(jnp.minimum(heavy, light).mean())
