"""The float32 diffusion losses: targets, inversions, masking, batch folding, dtypes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax.diffusion import losses
from mmar_jax.diffusion.schedule import cosine_schedule
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig


@pytest.mark.parametrize("prediction", losses.PREDICTIONS)
def test_the_true_target_implies_the_true_x0_and_eps(prediction):
  rng = np.random.default_rng(0)
  x0, eps = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32), jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
  a = jnp.asarray(np.linspace(0.02, 0.98, 64), jnp.float32)  # Away from the ends, where eps/x0 divide by ~0.
  x_t = losses.noisy(x0, eps, a)
  x0_hat, eps_hat = losses.x0_and_eps(prediction, losses.prediction_target(prediction, x0, eps, a), x_t, a)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-5)
  np.testing.assert_allclose(eps_hat, eps, atol=2e-5)


def _bf16_head():
  cfg = HeadConfig(token_dim=4, cond_dim=8, depth=2, width=32, dtype="bfloat16")
  head = DiffusionHead(cfg)
  params = nn.meta.unbox(head.init(jax.random.key(0), jnp.zeros((1, 4)), jnp.zeros((1,)), jnp.zeros((1, 8))))
  # Non-zero output layers, so the output is not trivially exact.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
  return head, params


def test_loss_arithmetic_is_float32_with_a_bfloat16_head():
  head, params = _bf16_head()
  calls = []

  def head_fn(x, t, z):
    out = head.apply(params, x, t, z)
    calls.append((x.shape, out.dtype))
    return out

  x0, z = jnp.ones((6, 4)), jnp.ones((6, 8))
  args = (head_fn, x0, z, jnp.ones((6,)), jax.random.key(2), cosine_schedule(1000), "v", 4)
  jaxpr = jax.make_jaxpr(losses.diffusion_loss, static_argnums=(0, 6, 7))(*args)
  assert calls[-1] == ((24, 4), jnp.bfloat16), "one head call over the folded batch, computing in bfloat16"
  assert jaxpr.out_avals[0].dtype == jnp.float32
  loss_ops = [e for e in jaxpr.eqns if e.primitive.name in ("sub", "integer_pow", "reduce_sum", "div", "square")]
  assert loss_ops and all(v.aval.dtype == jnp.float32 for e in loss_ops for v in e.outvars)


def test_batch_mul_folds_repeats_into_one_call_and_mask_selects_tokens():
  head, params = _bf16_head()
  seen = []
  head_fn = lambda x, t, z: (seen.append(x.shape[0]), head.apply(params, x, t, z))[1]  # noqa: E731
  rng = np.random.default_rng(3)
  x0, z = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32), jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)
  mask = jnp.asarray([1, 1, 0, 1, 0], jnp.float32)
  schedule = cosine_schedule(1000)
  loss = losses.diffusion_loss(head_fn, x0, z, mask, jax.random.key(4), schedule, batch_mul=3)
  assert seen == [15]
  changed = x0.at[2].set(100.0).at[4].set(-100.0)  # Only unmasked tokens change.
  assert float(losses.diffusion_loss(head_fn, changed, z, mask, jax.random.key(4), schedule, batch_mul=3)) == float(loss)
  changed = x0.at[0].set(100.0)
  assert float(losses.diffusion_loss(head_fn, changed, z, mask, jax.random.key(4), schedule, batch_mul=3)) != float(loss)


def test_unknown_prediction_names_the_field():
  with pytest.raises(ValueError, match=r"config\.diffusion\.prediction='score'"):
    losses.prediction_target("score", jnp.ones((1, 2)), jnp.ones((1, 2)), jnp.ones((1,)))
