"""Samplers: exact with an oracle head, compiled once, and a trained head's samples on a 2-D mixture."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import diffusion_toy as toy
from mmar_jax.diffusion import parameterization, sampling
from mmar_jax.diffusion.schedule import Schedule
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig
from tests.views import view

TRAIN = Schedule.create("cosine", 1000)
SAMPLE = Schedule.create("cosine", 1000, 100)
DATA = toy.ToyMixture()
HEAD = view(HeadConfig, {"head.depth": 2, "head.width": 64, "head.dtype": "float32"}, token_channels=2)
NEAR = 0.5  # "Near a mode": within 3.3 std; a true sample falls outside with probability 0.4%.
SHARE_TOL = 0.08  # |sampled share - true share| per mode, 1000 samples a class (sampling noise ~0.014).
OFF_MODE_MAX = 0.05  # Share of samples near neither of the class's modes.


def oracle_apply(prediction):
  """A head that knows the single clean point x0 (passed as z) and returns the exact target."""
  def apply(params, x_t, t, z):
    a = jnp.asarray(TRAIN.alpha_bar)[t.astype(jnp.int32)]
    eps = (x_t - jnp.sqrt(a)[:, None] * z) / jnp.sqrt(1 - a)[:, None]
    return parameterization.target(prediction, z, eps, a)
  return apply


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_oracle_head_samples_land_on_the_point(method, prediction):
  x0 = jax.random.normal(jax.random.key(0), (64, 3))
  out = sampling.sample(oracle_apply(prediction), None, x0, jax.random.key(1), schedule=SAMPLE,
                        prediction=prediction, token_channels=3, method=method)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, x0, atol=1e-3)


def test_sampler_compiles_once_across_guidance_and_temperature():
  fn = sampling.make_sampler(oracle_apply("v"), schedule=SAMPLE, prediction="v", token_channels=3)
  z = jnp.ones((4, 3))
  for scale, temperature in ((1.0, 1.0), (2.0, 0.9), (3.5, 1.1)):
    fn(None, z, jax.random.key(0), scale, temperature, z)
  assert fn._cache_size() == 1


def test_linear_cfg_schedule_is_mars():
  assert sampling.linear_cfg_scale(3.0, 0, 256) == 1.0
  assert sampling.linear_cfg_scale(3.0, 128, 256) == 2.0
  assert sampling.linear_cfg_scale(3.0, 256, 256) == 3.0
  assert sampling.linear_cfg_scale(3.0, 10, 256, "constant") == 3.0


@pytest.fixture(scope="module")
def trained():
  params, loss = toy.train_head(HEAD, DATA, jax.random.key(0), prediction="v", steps=1000, batch=256)
  assert np.isfinite(loss)
  return params


@functools.cache
def _sampler(method):
  return sampling.make_sampler(DiffusionHead(HEAD).apply, schedule=SAMPLE, prediction="v", token_channels=2,
                               method=method)


def _draw(params, method, cls, cfg_scale, n=1000):
  fn = _sampler(method)
  z, z_null = DATA.condition(jnp.full((n,), cls)), DATA.condition(jnp.full((n,), -1))
  return np.asarray(fn(params, z, jax.random.key(100 + cls), cfg_scale, 1.0, z_null))


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_trained_head_puts_the_right_mass_near_each_mode(trained, method):
  for cls in range(DATA.num_classes):
    major, minor, off = DATA.mode_shares(_draw(trained, method, cls, 1.0), cls, NEAR)
    assert abs(major - DATA.major) <= SHARE_TOL, (method, cls, major)
    assert abs(minor - (1 - DATA.major)) <= SHARE_TOL, (method, cls, minor)
    assert off <= OFF_MODE_MAX, (method, cls, off)


def test_guidance_sharpens_the_conditional(trained):
  # CFG at scale 3 with MAR's sampler (DDPM): samples move closer to their class's modes (RMS
  # distance down by at least 10% on average over classes) and no more of them stray off-mode.
  plain, guided = [], []
  for cls in range(DATA.num_classes):
    x1, x3 = _draw(trained, "ddpm", cls, 1.0), _draw(trained, "ddpm", cls, 3.0)
    plain.append(DATA.rms_to_own_modes(x1, cls))
    guided.append(DATA.rms_to_own_modes(x3, cls))
    assert DATA.mode_shares(x3, cls, NEAR)[2] <= DATA.mode_shares(x1, cls, NEAR)[2] + 0.005
  assert np.mean(guided) <= 0.9 * np.mean(plain), (plain, guided)
