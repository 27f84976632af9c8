"""The diffusion loss: exact targets give zero loss for every parameterisation, masks, folding, float32."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax.diffusion import losses, parameterization
from mmar_jax.diffusion.schedule import Schedule
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig
from tests.views import view

SCHEDULE = Schedule.create("cosine", 1000)


def oracle(prediction):
  """A head that knows x0 (passed as z) and so returns the exact target from (x_t, t)."""
  def fn(x_t, t, z):
    a = jnp.asarray(SCHEDULE.alpha_bar)[t.astype(jnp.int32)][:, None]
    eps = (x_t - jnp.sqrt(a) * z) / jnp.sqrt(1 - a)
    return parameterization.target(prediction, z, eps, a[:, 0])
  return fn


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_conversions_invert_the_targets(prediction):
  k1, k2 = jax.random.split(jax.random.key(0))
  x0, eps = jax.random.normal(k1, (64, 3)), jax.random.normal(k2, (64, 3))
  a = jnp.asarray(SCHEDULE.alpha_bar[np.linspace(0, 990, 64).astype(int)])  # alpha_bar from 1 down to 2e-4.
  x_t = jnp.sqrt(a)[:, None] * x0 + jnp.sqrt(1 - a)[:, None] * eps
  x0_hat, eps_hat = parameterization.to_x0_eps(prediction, parameterization.target(prediction, x0, eps, a), x_t, a)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-3)  # eps -> x0 divides by sqrt(a) >= 0.014.
  np.testing.assert_allclose(eps_hat, eps, atol=2e-3)


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_exact_target_gives_zero_loss(prediction):
  x0 = jax.random.normal(jax.random.key(1), (2, 8, 4))
  loss = losses.diffusion_loss(oracle(prediction), x0, x0, jnp.ones((2, 8)), jax.random.key(2), schedule=SCHEDULE,
                               prediction=prediction, batch_mul=4)
  assert loss.dtype == jnp.float32
  # eps-prediction's oracle divides by sqrt(1 - a) ~ 0.006 at t = 0, amplifying float32 rounding.
  assert float(loss) < 1e-6


def test_batch_mul_folds_into_one_head_call_with_independent_draws():
  seen = []

  def head_fn(x_t, t, z):
    seen.append(x_t.shape)
    return oracle("v")(x_t, t, z) + 1.0  # Off by one everywhere: the loss is exactly 1.

  x0 = jax.random.normal(jax.random.key(3), (32, 4))
  err, t = losses.per_token_loss(head_fn, x0, x0, jax.random.key(4), schedule=SCHEDULE, prediction="v", batch_mul=4)
  assert seen == [(128, 4)]
  assert err.shape == t.shape == (4, 32)
  np.testing.assert_allclose(err, 1.0, rtol=1e-4)
  assert np.mean(np.asarray(t[0]) != np.asarray(t[1])) > 0.9  # Each copy of a token gets its own t.


def test_mask_excludes_tokens_and_empty_mask_gives_zero():
  x0 = jax.random.normal(jax.random.key(5), (1, 6, 4))
  mask = jnp.array([[1, 1, 1, 0, 0, 0]], jnp.float32)
  head_fn = lambda x_t, t, z: jnp.zeros_like(x_t)  # noqa: E731
  kw = dict(schedule=SCHEDULE, prediction="x0", batch_mul=2)
  a = losses.diffusion_loss(head_fn, x0, x0, mask, jax.random.key(6), **kw)
  b = losses.diffusion_loss(head_fn, x0.at[0, 3:].set(100.0), x0, mask, jax.random.key(6), **kw)
  assert float(a) == float(b)
  np.testing.assert_allclose(float(a), float(jnp.mean(x0[0, :3] ** 2)), rtol=1e-6)  # x0 target, zero output.
  assert float(losses.diffusion_loss(head_fn, x0, x0, jnp.zeros((1, 6)), jax.random.key(6), **kw)) == 0.0


def test_loss_is_float32_when_the_head_computes_in_bfloat16():
  cfg = view(HeadConfig, {"head.depth": 1, "head.width": 32, "head.dtype": "bfloat16"}, token_channels=4)
  head = DiffusionHead(cfg)
  x0, z = jax.random.normal(jax.random.key(7), (8, 4)), jax.random.normal(jax.random.key(8), (8, 5))
  params = nn.meta.unbox(head.init(jax.random.key(9), x0, jnp.zeros(8), z))
  loss, grads = jax.jit(jax.value_and_grad(lambda p: losses.diffusion_loss(
      lambda *a: head.apply(p, *a), x0, z, None, jax.random.key(10), schedule=SCHEDULE, batch_mul=4)))(params)
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
