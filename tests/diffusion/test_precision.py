"""MMAR's stability claim: under bfloat16, eps's x0 error is unbounded as alpha_bar -> 0, v's is not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax.diffusion import toy
from mmar_jax.diffusion.precision import ddim_step_error_coefficient, measure_x0_error
from mmar_jax.diffusion.schedule import cosine_schedule


def test_the_ddim_step_coefficients_of_the_theorem():
  s = cosine_schedule(1000)
  a, a_prev = np.asarray(s.alphas_cumprod, np.float64), np.asarray(s.alphas_cumprod_prev, np.float64)
  eps = np.asarray(ddim_step_error_coefficient("eps", a, a_prev))
  v = np.asarray(ddim_step_error_coefficient("v", a, a_prev))
  assert np.all(v <= 1.0 + 1e-6), "the v coefficient is bounded by 1 on the whole schedule"
  assert eps[-1] > 10.0 and eps[-1] > 1000 * v.max()
  tail = eps[-20:]
  assert np.all(np.diff(tail) > 0), "and the eps coefficient keeps growing as alpha_bar -> 0"


@pytest.mark.slow  # Trains two heads: about a minute on 2 cores.
def test_measured_bfloat16_x0_error(trained_head):
  schedule = cosine_schedule(1000)
  cfg = toy.head_config()
  x0, classes = toy.draw(jax.random.key(7), 1024)
  z = toy.condition(classes)
  # eps needs no sample quality here, only a head whose output bfloat16 perturbs: 600 steps.
  heads = {"eps": trained_head("eps", steps=600)[0], "v": trained_head("v")[0]}
  errors = {p: measure_x0_error(cfg, heads[p], p, schedule, x0, z, jax.random.key(8), buckets=5) for p in heads}
  for bucket in errors["v"]:
    assert bucket.output_error > 0, "bfloat16 must actually change the output"
    assert bucket.x0_error <= bucket.output_error * (1 + 1e-3), "v: x0 error stays within the output error"
  eps = errors["eps"]
  assert eps[-1].x0_error > 50 * eps[-1].output_error, "eps: amplified far beyond the output error at high noise"
  assert eps[-1].x0_error > 100 * eps[0].x0_error
  assert eps[-1].x0_error > 20 * errors["v"][-1].x0_error
  for bucket in eps + errors["v"]:  # The measurement agrees with the coefficients' prediction.
    np.testing.assert_allclose(bucket.x0_error, bucket.predicted, rtol=1e-3)
