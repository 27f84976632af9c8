"""MAR's cosine schedule and its respacing."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax.diffusion.schedule import cosine_schedule, respace
from mmar_jax.models.diffusion_head import timestep_features


def test_cosine_schedule_is_float32_decreasing_and_spans_noise_levels():
  s = cosine_schedule(1000)
  a = np.asarray(s.alphas_cumprod)
  assert s.alphas_cumprod.dtype == jnp.float32 and a.shape == (1000,)
  assert np.all(np.diff(a) < 0)
  assert a[0] > 0.9999 and a[-1] < 1e-6  # Almost clean at t=0, almost pure noise at t=999.
  assert np.all(np.asarray(s.betas) <= 0.999 + 1e-6)


def test_respacing_keeps_the_end_points_and_the_original_timesteps():
  s = cosine_schedule(1000)
  r = respace(s, 100)
  assert r.num_steps == 100
  assert int(r.model_timesteps[0]) == 0 and int(r.model_timesteps[-1]) == 999
  np.testing.assert_array_equal(np.asarray(r.alphas_cumprod), np.asarray(s.alphas_cumprod)[np.asarray(r.model_timesteps)])
  # The respaced chain's per-step alphas compose to the same alpha_bar.
  np.testing.assert_allclose(np.cumprod(np.asarray(r.alphas, np.float64)), np.asarray(r.alphas_cumprod), rtol=1e-5)
  with pytest.raises(ValueError, match="num_sampling_steps=2000"):
    respace(s, 2000)


def test_timestep_features_tell_every_training_step_apart():
  t = jnp.arange(1000, dtype=jnp.float32)
  features = np.asarray(timestep_features(t, 256))
  assert features.dtype == np.float32
  assert len(np.unique(features.round(6), axis=0)) == 1000
  # The reason they stay float32: bfloat16 cannot hold the step itself (about half collide).
  in_bf16 = np.asarray(t.astype(jnp.bfloat16).astype(jnp.float32))
  assert len(np.unique(in_bf16)) < 600
  assert in_bf16[997] == in_bf16[998] or in_bf16[998] == in_bf16[999]
