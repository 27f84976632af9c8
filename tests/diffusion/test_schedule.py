"""MAR's cosine schedule and its respacing: values against MAR's formula written out in float64, float32 constants."""

from __future__ import annotations

import math

import numpy as np

from mmar_jax.diffusion.schedule import Schedule, respaced_timesteps


def mar_cosine_alpha_bar(num_steps: int) -> np.ndarray:
  """MAR's schedule written out independently, float64 (MAR diffusion/gaussian_diffusion.py, from
  guided-diffusion): get_named_beta_schedule('cosine') = betas_for_alpha_bar(T, lambda t:
  cos((t + 0.008) / 1.008 * pi / 2) ** 2) with max_beta 0.999, then alphas_cumprod = cumprod(1 - betas)."""
  alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
  betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999) for i in range(num_steps)]
  return np.cumprod(1.0 - np.array(betas, np.float64))


def test_cosine_alpha_bar_is_mars_formula():
  s = Schedule.create("cosine", 1000)
  assert s.alpha_bar.dtype == np.float32 and s.num_steps == 1000
  np.testing.assert_array_equal(s.timesteps, np.arange(1000))
  reference = mar_cosine_alpha_bar(1000)
  # Every step, the last (where the beta clip acts) included: float32 rounding of the float64 values.
  np.testing.assert_allclose(s.alpha_bar, reference, rtol=2e-7, atol=0)
  np.testing.assert_array_equal(s.alpha_bar_prev, np.concatenate([[1.0], reference[:-1]]).astype(np.float32))
  assert np.all(np.diff(s.alpha_bar) < 0) and 0 < s.alpha_bar[-1] < 1e-8 and s.alpha_bar[0] > 0.9999


def test_respacing_keeps_alpha_bar_at_the_kept_timesteps():
  full, spaced = Schedule.create("cosine", 1000), Schedule.create("cosine", 1000, 100)
  assert spaced.num_steps == 100
  assert spaced.timesteps[0] == 0 and spaced.timesteps[-1] == 999 and np.all(np.diff(spaced.timesteps) > 0)
  np.testing.assert_array_equal(spaced.alpha_bar, full.alpha_bar[spaced.timesteps])
  np.testing.assert_array_equal(spaced.alpha_bar_prev[1:], spaced.alpha_bar[:-1])
  assert spaced.alpha_bar_prev[0] == 1.0
  beta = 1 - spaced.alpha_bar / spaced.alpha_bar_prev
  assert np.all((beta > 0) & (beta < 1))


def test_respaced_timesteps_edge_cases():
  np.testing.assert_array_equal(respaced_timesteps(1000, 1), [0])
  np.testing.assert_array_equal(respaced_timesteps(10, 10), np.arange(10))
  np.testing.assert_array_equal(respaced_timesteps(1000, 4), [0, 333, 666, 999])
