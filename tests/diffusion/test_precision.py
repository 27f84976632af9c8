"""The paper's claim, measured: in bfloat16, eps-prediction's x0 error blows up as alpha_bar -> 0, v's does not."""

from __future__ import annotations

import jax
import pytest

from mmar_jax.diffusion import precision, toy
from mmar_jax.models.diffusion_head import HeadConfig
from tests.views import view

HEAD = view(HeadConfig, {"head.depth": 2, "head.width": 64, "head.dtype": "float32"}, token_channels=2)
DATA = toy.ToyMixture()


@pytest.fixture(scope="module")
def errors():
  out = {}
  for prediction in ("eps", "v"):
    # A briefly trained head: its outputs have the target's scale, which is all the bound needs.
    params, _ = toy.train_head(HEAD, DATA, jax.random.key(1), prediction=prediction, steps=250, batch=128)
    out[prediction] = precision.bucket_errors(HEAD, params, prediction, DATA, jax.random.key(2), per_bucket=1024)
  return out


def test_eps_x0_error_grows_without_bound_as_alpha_bar_goes_to_zero(errors):
  eps = errors["eps"]
  assert all(b.out_err > 0 for b in eps)  # bfloat16 did perturb the output everywhere.
  # Over the noisy end (t >= 900, alpha_bar 1e-2 -> 2e-9) the x0 error rises at every bucket ...
  tail = [b.x0_err for b in eps if b.t_lo >= 900]
  assert all(later > earlier for earlier, later in zip(tail, tail[1:])), tail
  # ... to at least 100x the output error at t = 999 (the coefficient sqrt((1 - a) / a) is 2e4 there).
  assert eps[-1].x0_err >= 100 * eps[-1].out_err
  # Measurement follows the bound (x0 error = coefficient x output error, up to float32 rounding).
  for b in eps:
    assert b.x0_err == pytest.approx(b.x0_bound, rel=0.02)


def test_v_x0_error_stays_below_its_output_error(errors):
  v, eps = errors["v"], errors["eps"]
  for b in v:
    # The coefficient sqrt(1 - a) <= 1: x0 error never exceeds the output error (1% for float32 rounding).
    assert b.x0_err <= 1.01 * b.out_err, b
    assert b.step_err <= 1.01 * b.out_err, b  # The paper's DDIM-step coefficient is <= 1 too.
  assert v[-1].x0_err * 100 <= eps[-1].x0_err
