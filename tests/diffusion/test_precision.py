"""The paper's claim, measured: in bfloat16, eps-prediction's x0 error blows up as alpha_bar -> 0, v's does not.

The x0 errors the claims rest on are computed here in float64 from the head's raw float32 and
bfloat16 outputs, with the conversions written out, independently of parameterization.to_x0_eps;
the implementation's measurement (benchmarks/precision_study.bucket_errors, float32) must agree with them.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks import diffusion_toy as toy
from benchmarks import precision_study as precision
from mmar_jax.models.diffusion_head import HeadConfig
from tests.views import view

HEAD = view(HeadConfig, {"head.depth": 2, "head.width": 64, "head.dtype": "float32"}, token_channels=2)
DATA = toy.ToyMixture()


def rms(x) -> float:
  return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def x0_float64(prediction: str, out, x_t, a):
  """x0 implied by the head's output, in float64 (x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0)."""
  out, x_t, a = np.float64(out), np.float64(x_t), np.float64(a)[:, None]
  if prediction == "eps":
    return (x_t - np.sqrt(1 - a) * out) / np.sqrt(a)
  return np.sqrt(a) * x_t - np.sqrt(1 - a) * out


@pytest.fixture(scope="module")
def measured():
  out = {}
  for prediction in ("eps", "v"):
    # A briefly trained head: its outputs have the target's scale, which is all the bound needs.
    params, _ = toy.train_head(HEAD, DATA, jax.random.key(1), prediction=prediction, steps=250, batch=128)
    samples = precision.bucket_samples(HEAD, params, prediction, DATA, jax.random.key(2), per_bucket=1024)
    errors = precision.bucket_errors(HEAD, params, prediction, DATA, jax.random.key(2), per_bucket=1024)
    rows = []
    for s in samples:
      out_err = rms(np.float64(s.out_lo) - np.float64(s.out_hi))
      x0_err = rms(x0_float64(prediction, s.out_lo, s.x_t, s.alpha_bar) - x0_float64(prediction, s.out_hi, s.x_t,
                                                                                      s.alpha_bar))
      rows.append(dict(t_lo=int(s.t.min()), out_err=out_err, x0_err=x0_err, out_scale=rms(s.out_hi)))
    out[prediction] = rows, errors
  return out


def test_the_perturbation_is_bfloat16_sized(measured):
  for rows, _ in measured.values():
    for r in rows:
      # bfloat16 keeps 8 significant bits: relative rounding 2^-9 = 2e-3 per operation; through the
      # head's layers its output error measures 0.3-2% of the output's scale. float16 (11 bits)
      # would give 8x less, below 1e-3, and float32 ~1e-7.
      assert 1e-3 * r["out_scale"] < r["out_err"] < 5e-2 * r["out_scale"], r


def test_eps_x0_error_grows_without_bound_as_alpha_bar_goes_to_zero(measured):
  rows, errors = measured["eps"]
  # Over the noisy end (t >= 900, alpha_bar 1e-2 -> 2e-9) the float64 x0 error rises at every bucket ...
  tail = [r["x0_err"] for r in rows if r["t_lo"] >= 900]
  assert len(tail) == 4 and all(later > earlier for earlier, later in zip(tail, tail[1:])), tail
  # ... to at least 100x the output error at t = 999 (1 / sqrt(a) is 2e4 there).
  assert rows[-1]["x0_err"] >= 100 * rows[-1]["out_err"]
  # The implementation's float32 measurement is the float64 one (float32 rounding in the
  # division by sqrt(a) ~ 4e-5 stays far below the bfloat16 error).
  for r, b in zip(rows, errors):
    assert b.out_err == pytest.approx(r["out_err"], rel=1e-4)
    assert b.x0_err == pytest.approx(r["x0_err"], rel=1e-3), (r, b)


def test_v_x0_error_stays_below_its_output_error(measured):
  (rows, errors), (eps_rows, _) = measured["v"], measured["eps"]
  for r, b in zip(rows, errors):
    assert r["x0_err"] <= r["out_err"], r  # x0 = sqrt(a) x_t - sqrt(1 - a) v: the factor on v is <= 1.
    assert b.x0_err == pytest.approx(r["x0_err"], rel=1e-3), (r, b)
    assert b.step_err <= 1.01 * b.out_err, b  # The paper's DDIM-step coefficient is <= 1 too.
  assert rows[-1]["x0_err"] * 100 <= eps_rows[-1]["x0_err"]
