"""A class-conditional 2-D mixture of Gaussians, and a short training loop of the head on it.

The smallest problem on which a diffusion head shows that it learned p(x | z): each class owns
two modes with unequal weights, so a sampler must place the right share of mass near each mode,
and guidance must pull samples towards the class's modes. Study code, not the package's: the
precision study (benchmarks/precision_study.py) and the sampler tests train on it.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from mmar_jax.diffusion import losses
from mmar_jax.diffusion.schedule import Schedule
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig


@dataclasses.dataclass(frozen=True)
class ToyMixture:
  """`num_classes` classes; class c owns modes 2c (weight `major`) and 2c+1 on a circle."""

  num_classes: int = 4
  radius: float = 2.0
  std: float = 0.15
  major: float = 0.75  # Weight of a class's first mode; the second has 1 - major.

  @property
  def centres(self) -> np.ndarray:
    angles = 2 * np.pi * np.arange(2 * self.num_classes) / (2 * self.num_classes)
    return (self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)).astype(np.float32)

  @property
  def cond_dim(self) -> int:
    return self.num_classes

  def condition(self, classes: Int[Array, " n"]) -> Float[Array, "n k"]:
    """One-hot class vectors; class -1 gives the zero vector, the unconditional ("null") z."""
    return jax.nn.one_hot(classes, self.num_classes, dtype=jnp.float32)

  def sample(self, rng: PRNGKeyArray, classes: Int[Array, " n"]) -> Float[Array, "n 2"]:
    mode_rng, noise_rng = jax.random.split(rng)
    minor = jax.random.uniform(mode_rng, classes.shape) >= self.major
    modes = 2 * classes + minor.astype(classes.dtype)
    centres = jnp.asarray(self.centres)[modes]
    return centres + self.std * jax.random.normal(noise_rng, centres.shape)

  def mode_shares(self, x: np.ndarray, cls: int, near: float) -> tuple[float, float, float]:
    """Shares of samples within `near` of the class's major mode, its minor mode, and of neither."""
    d = np.linalg.norm(np.asarray(x)[:, None, :] - self.centres[None, 2 * cls:2 * cls + 2], axis=-1)
    major, minor = float(np.mean(d[:, 0] < near)), float(np.mean(d[:, 1] < near))
    return major, minor, 1.0 - major - minor

  def rms_to_own_modes(self, x: np.ndarray, cls: int) -> float:
    """RMS distance from each sample to the nearer of its class's two modes."""
    d = np.linalg.norm(np.asarray(x)[:, None, :] - self.centres[None, 2 * cls:2 * cls + 2], axis=-1)
    return float(np.sqrt(np.mean(np.min(d, axis=-1) ** 2)))


def train_head(head_cfg: HeadConfig, data: ToyMixture, rng: PRNGKeyArray, *, prediction: str = "v",
               steps: int = 1500, batch: int = 256, batch_mul: int = 4, lr: float = 2e-3,
               cond_dropout: float = 0.1, schedule: Schedule | None = None):
  """Adam on the diffusion loss; returns (params, final loss). Drops the class for CFG like MAR.

  `steps` must be a multiple of min(steps, 250).
  """
  schedule = schedule or Schedule.create("cosine", 1000)
  head = DiffusionHead(head_cfg)
  init_rng, rng = jax.random.split(rng)
  params = nn.meta.unbox(head.init(init_rng, jnp.zeros((1, 2)), jnp.zeros((1,)), jnp.zeros((1, data.cond_dim))))
  opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.1))
  opt_state = opt.init(params)

  def step(params, opt_state, rng):
    cls_rng, drop_rng, x_rng, loss_rng = jax.random.split(rng, 4)
    classes = jax.random.randint(cls_rng, (batch,), 0, data.num_classes)
    x0 = data.sample(x_rng, classes)
    dropped = jax.random.uniform(drop_rng, (batch,)) < cond_dropout
    z = data.condition(jnp.where(dropped, -1, classes))

    def loss_fn(p):
      return losses.diffusion_loss(lambda *a: head.apply(p, *a), x0, z, None, loss_rng, schedule=schedule,
                                   prediction=prediction, batch_mul=batch_mul)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # Steps run in jitted scans of `chunk`: per-step dispatch would cost more than the tiny head.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def run(params, opt_state, rngs):
    def body(carry, step_rng):
      params, opt_state, loss = step(*carry, step_rng)
      return (params, opt_state), loss
    (params, opt_state), loss = jax.lax.scan(body, (params, opt_state), rngs)
    return params, opt_state, loss[-1]

  chunk = min(steps, 250)
  loss = jnp.zeros(())
  for rngs in jax.random.split(rng, steps).reshape(-1, chunk):
    params, opt_state, loss = run(params, opt_state, rngs)
  return params, float(loss)
