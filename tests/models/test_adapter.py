"""The image adapter's remat switch: the same gradients, and the backward pass really recomputes."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmar_jax import configs
from mmar_jax.models.adapter import AdapterConfig, ImageAdapter
from mmar_jax.models.diffusion_head import HeadConfig


def test_remat_gives_the_same_gradients_and_recomputes():
  config = configs.load_config("configs/demo.py", ["model.adapter_depth=2", "model.adapter_remat=True",
                                                   "head.remat=True"])
  remat = AdapterConfig.from_config(config)
  assert remat.remat and HeadConfig.from_config(config).remat  # The config switches reach both modules.
  plain = dataclasses.replace(remat, remat=False)
  tokens = jax.random.normal(jax.random.key(0), (2, 16, plain.token_dim))
  visible = jax.random.bernoulli(jax.random.key(1), 0.7, (2, 16))
  params = nn.meta.unbox(ImageAdapter(plain).init(jax.random.key(2), tokens, visible))

  def grads(cfg):
    loss = lambda p: jnp.sum(ImageAdapter(cfg).apply(p, tokens, visible) ** 2)  # noqa: E731
    return jax.jit(jax.grad(loss))(params), jax.make_jaxpr(jax.grad(loss))(params)

  (expected, plain_jaxpr), (got, remat_jaxpr) = grads(plain), grads(remat)
  assert "remat" in str(remat_jaxpr) and "remat" not in str(plain_jaxpr)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
