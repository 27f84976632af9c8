"""The head learns a class-conditional mixture, and both samplers recover it; guidance sharpens it.

Tolerances: the true heavy-mode share is 0.75; with 2,000 samples its standard error is 0.01, and
the head is trained for 1,500 steps only, so 0.06 is allowed. 95% of samples must land within
0.25 of one of their class's modes (mode std 0.05, neighbouring modes 0.77 apart).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mmar_jax.diffusion import toy
from mmar_jax.diffusion.sampling import guidance_scale, sample
from mmar_jax.diffusion.schedule import cosine_schedule, respace
from mmar_jax.models.diffusion_head import DiffusionHead

CLASSES = jnp.repeat(jnp.arange(toy.NUM_CLASSES), 500)


def draw_samples(params, sampler, cfg_scale=1.0, steps=100, seed=5, guided=None):
  head = DiffusionHead(toy.head_config())
  guided = cfg_scale != 1.0 if guided is None else guided
  z_uncond = toy.condition(jnp.full_like(CLASSES, toy.NUM_CLASSES)) if guided else None
  run = jax.jit(lambda rng: sample(lambda x, t, z: head.apply(params, x, t, z), toy.condition(CLASSES), rng,
                                   respace(cosine_schedule(1000), steps), 2, sampler=sampler,
                                   z_uncond=z_uncond, cfg_scale=cfg_scale))
  return run(jax.random.key(seed))


@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 50)])
def test_samplers_recover_the_conditional_mixture(trained_head, sampler, steps):
  params, losses = trained_head("v")
  assert float(losses[-100:].mean()) < 0.5 * float(losses[:10].mean())
  near, heavy_share, _ = toy.mode_statistics(draw_samples(params, sampler, steps=steps), CLASSES)
  assert near >= 0.95
  assert abs(heavy_share - toy.HEAVY_SHARE) <= 0.06


def test_guidance_sharpens_the_conditional(trained_head):
  params, _ = trained_head("v")
  near_1, heavy_1, _ = toy.mode_statistics(draw_samples(params, "ddpm", cfg_scale=1.0), CLASSES)
  near_4, heavy_4, _ = toy.mode_statistics(draw_samples(params, "ddpm", cfg_scale=4.0), CLASSES)
  assert heavy_4 > heavy_1 + 0.05, "mass moves to the class's dominant mode"
  assert near_4 >= 0.95 and near_1 >= 0.95, "without pushing mass off the modes"


def test_guidance_scale_one_equals_the_conditional_model_and_sampling_is_deterministic(trained_head):
  params, _ = trained_head("v")
  plain = draw_samples(params, "ddpm")
  assert bool(jnp.all(plain == draw_samples(params, "ddpm")))
  guided_at_one = draw_samples(params, "ddpm", cfg_scale=1.0, guided=True)
  assert float(jnp.abs(guided_at_one - plain).max()) < 1e-5
  assert float(jnp.abs(draw_samples(params, "ddpm", seed=6) - plain).max()) > 0.1


def test_linear_guidance_schedule():
  assert float(guidance_scale(4.0, "linear", 0.0)) == 1.0
  assert float(guidance_scale(4.0, "linear", 1.0)) == 4.0
  assert float(guidance_scale(4.0, "constant", 0.3)) == 4.0
