"""The chunked cross-entropy equals the dense one, loss and gradients, and holds less memory."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax import configs
from mmar_jax.models import chunked_ce
from mmar_jax.train import mesh as mesh_lib
from mmar_jax.train import sharding
from tests.models.test_mmar import forward, make_batch, setup

B, L, D, V = 2, 64, 32, 512
RTOL = 1e-6
# Gradient entries near zero (a kernel row of a token no target names, a reordered sum) carry
# float32 rounding of the largest terms: compare those to the gradient's scale, not to themselves.
ATOL_SHARE = 1e-6


def inputs(tied: bool, seed: int = 0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
  kernel = jnp.asarray(0.3 * rng.normal(size=(V, D) if tied else (D, V)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  weights = jnp.asarray(rng.random((B, L)) < 0.6, jnp.float32)  # About 40% zeros, as prompts are.
  return hidden, kernel, targets, weights


@functools.partial(jax.jit, static_argnames=("tied", "chunk_size"))
def loss_and_grads(hidden, kernel, targets, weights, tied, chunk_size):
  loss = lambda h, k: chunked_ce.nll_sum(h, k, targets, weights, tied=tied, dtype=jnp.float32,  # noqa: E731
                                         chunk_size=chunk_size)
  return jax.value_and_grad(loss, argnums=(0, 1))(hidden, kernel)


def assert_close(actual, expected):
  expected = np.asarray(expected)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=ATOL_SHARE * np.abs(expected).max())


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk_size", [8, 16, 64, 24])  # 24 does not divide 64: padded.
def test_chunked_loss_and_gradients_equal_the_dense_ones(tied, chunk_size):
  args = inputs(tied)
  dense_loss, (dense_dh, dense_dk) = loss_and_grads(*args, tied=tied, chunk_size=0)
  loss, (dh, dk) = loss_and_grads(*args, tied=tied, chunk_size=chunk_size)
  np.testing.assert_allclose(float(loss), float(dense_loss), rtol=RTOL)
  assert_close(dh, dense_dh)
  assert_close(dk, dense_dk)
  assert np.all(np.asarray(dh)[np.asarray(args[3]) == 0] == 0)  # Weight-0 tokens send no gradient.


def test_dense_nll_sum_is_the_log_softmax_cross_entropy():
  hidden, kernel, targets, weights = inputs(tied=False)
  logits = hidden @ kernel
  expected = -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0] * weights)
  got = chunked_ce.nll_sum(hidden, kernel, targets, weights, tied=False, dtype=jnp.float32, chunk_size=0)
  np.testing.assert_allclose(float(got), float(expected), rtol=RTOL)


def temp_bytes(chunk_size: int, length: int = 512, dim: int = 64, vocab: int = 32768) -> int:
  hidden = jax.ShapeDtypeStruct((1, length, dim), jnp.float32)
  kernel = jax.ShapeDtypeStruct((vocab, dim), jnp.float32)
  targets = jax.ShapeDtypeStruct((1, length), jnp.int32)
  weights = jax.ShapeDtypeStruct((1, length), jnp.float32)
  compiled = loss_and_grads.lower(hidden, kernel, targets, weights, tied=True, chunk_size=chunk_size).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_loss_and_gradient_hold_far_less_temporary_memory():
  # One [1, 512, 32768] float32 buffer is 64 MiB; the dense program holds the logits and their
  # gradient, the chunked one a [1, 64, 32768] block of each (8 MiB) and the kernel's gradient.
  dense, chunked = temp_bytes(0), temp_bytes(64)
  logits_bytes = 512 * 32768 * 4
  assert dense >= logits_bytes
  assert chunked < dense / 3, (dense, chunked)


def test_mmar_loss_and_gradients_with_chunking_equal_without():
  cfg, params = setup()
  batch, image_tokens, generate_mask = make_batch()
  chunked_cfg = dataclasses.replace(cfg, ce_chunk_size=8)

  def loss(c, p):
    out = forward(c, p, batch, image_tokens, generate_mask)
    return out.loss, out

  (dense_loss, dense_out), dense_grads = jax.value_and_grad(loss, argnums=1, has_aux=True)(cfg, params)
  (chunked_loss, chunked_out), chunked_grads = jax.value_and_grad(loss, argnums=1, has_aux=True)(chunked_cfg, params)
  assert chunked_out.logits is None and dense_out.logits is not None  # Chunked: never built.
  np.testing.assert_allclose(float(chunked_out.ce), float(dense_out.ce), rtol=RTOL)
  np.testing.assert_allclose(float(chunked_loss), float(dense_loss), rtol=RTOL)
  for path, g in jax.tree_util.tree_leaves_with_path(chunked_grads):
    expected = np.asarray(functools.reduce(lambda t, k: t[k.key], path, dense_grads))
    np.testing.assert_allclose(np.asarray(g), expected, rtol=RTOL, atol=1e-6 * max(np.abs(expected).max(), 1e-30),
                               err_msg=jax.tree_util.keystr(path))


def test_paper_presets_chunk_the_cross_entropy_and_the_demo_stays_dense():
  # The demo's numbers stay bit-identical to before the chunked path existed.
  chunk = {name: configs.load_config(f"configs/{name}.py").model.ce_chunk_size for name in ("demo", "mmar_0p5b",
                                                                                              "mmar_7b")}
  assert chunk == {"demo": 0, "mmar_0p5b": 256, "mmar_7b": 256}


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_under_the_meshs_logical_constraints_equals_the_dense_one(tied):
  # The blocks' logits keep the dense logits' ("batch", "length", "activation_vocab") constraint:
  # the vocabulary split over 'tensor' inside the scan as outside.
  args = inputs(tied)
  dense_loss, (dense_dh, dense_dk) = loss_and_grads(*args, tied=tied, chunk_size=0)
  config = configs.base_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 1, 4
  rules = config.mesh.logical_axis_rules
  with sharding.activate(mesh_lib.make_mesh(config), rules):
    loss, (dh, dk) = jax.jit(loss_and_grads.__wrapped__, static_argnames=("tied", "chunk_size"))(
        *args, tied=tied, chunk_size=16)
  np.testing.assert_allclose(float(loss), float(dense_loss), rtol=RTOL)
  assert_close(dh, dense_dh)
  assert_close(dk, dense_dk)
