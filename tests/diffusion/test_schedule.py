"""MAR's cosine schedule and its respacing: values against the closed form, float32 constants."""

from __future__ import annotations

import numpy as np

from mmar_jax.diffusion.schedule import Schedule, cosine_alpha_bar, respaced_timesteps


def test_cosine_alpha_bar_follows_the_closed_form_until_the_beta_clip():
  s = Schedule.create("cosine", 1000)
  assert s.alpha_bar.dtype == np.float32 and s.num_steps == 1000
  np.testing.assert_array_equal(s.timesteps, np.arange(1000))
  # alpha_bar_t = f((t + 1) / T) / f(0) wherever no beta hit the 0.999 clip (all but the last step).
  t = np.arange(999)
  np.testing.assert_allclose(s.alpha_bar[:999], cosine_alpha_bar((t + 1) / 1000) / cosine_alpha_bar(0.0), rtol=1e-5)
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
