"""Image generation: the cached step equals the full forward, MAR's reveal schedule, guidance, determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax.infer import generate_image
from mmar_jax.models.mmar import MMAR
from tests.infer.tiny_model import (C, N, SPECIAL, apply, full_batch, full_forward, model_and_params, random_tokens,
                                    tiny_config)

SAME = 1e-5  # float32: the cached and full paths sum the same terms in different orders.
CAPTIONS = [[10, 11, 12, 13, 14], [20, 21]]  # Different lengths: left padding differs per row.


def settings(**overrides):
  return generate_image.generation_settings(tiny_config(), **overrides)


def test_reveal_schedule_is_mars_cosine():
  # By hand from MAR's sample_tokens: floor(16 cos(pi/2 (k+1)/8)) for k = 0..6, then 0.
  np.testing.assert_array_equal(generate_image.reveal_schedule(16, 8), [16, 15, 14, 13, 11, 8, 6, 3, 0])
  for n, steps in ((256, 64), (16, 16), (16, 40), (4, 1)):
    remaining = generate_image.reveal_schedule(n, steps)
    assert remaining[0] == n and remaining[-1] == 0 and len(remaining) == min(n, steps) + 1
    assert np.all(np.diff(remaining) <= 0)  # Never re-masks.
  # MAR's 64 steps at 256 tokens reveal at most 7 a step (so the head runs on 7 lanes, 4 on average).
  assert np.max(-np.diff(generate_image.reveal_schedule(256, 64))) <= 7


@pytest.mark.parametrize("num_known", [0, 9])
def test_generation_step_on_the_prompt_cache_equals_the_full_forward(num_known):
  model, params = model_and_params()
  ids, mask = generate_image.generation_prompts(CAPTIONS, SPECIAL, guided=False)
  tokens = random_tokens(0, 2)
  known = np.zeros((2, N), bool)
  known[0, np.random.default_rng(0).permutation(N)[:num_known]] = True
  known[1, :num_known] = True
  cache, next_position = apply(model, params, ids, mask, reserve=N, method=MMAR.encode_prompt)
  z = apply(model, params, cache, next_position, tokens, jnp.asarray(known), method=MMAR.generation_step)
  assert z.shape == (2, N, model.cfg.backbone.hidden_size)

  # The full sequence <|im_start|> caption <boi> [N image] <eoi>, same left padding, image masked as `known` says.
  length = ids.shape[1]
  full_ids = np.concatenate([ids, np.full((2, N), SPECIAL.mask), np.full((2, 1), SPECIAL.eoi)], 1).astype(np.int32)
  full_mask = np.concatenate([mask, np.ones((2, N + 1), np.int32)], 1)
  slots = np.broadcast_to(np.arange(length, length + N), (2, N))
  out = full_forward(model, params, full_batch(full_ids, full_mask, slots), tokens[:, None], ~known[:, None])
  np.testing.assert_allclose(np.asarray(z), np.asarray(out.z[:, 0]), atol=SAME, rtol=0)


def test_generate_shapes_determinism_and_conditioning():
  model, params = model_and_params()
  run = lambda captions, seed: np.asarray(generate_image.generate(  # noqa: E731
      model, params, captions, SPECIAL, jax.random.key(seed), **settings()))
  a = run(CAPTIONS, 0)
  assert a.shape == (2, N, C) and a.dtype == np.float32 and np.isfinite(a).all()
  assert np.all(np.abs(a).max(-1) > 0)  # Every token was drawn (they start at 0).
  np.testing.assert_array_equal(run(CAPTIONS, 0), a)  # Same seed, same images.
  assert not np.allclose(run(CAPTIONS, 1), a)  # Another seed, other images.
  other = run([[30, 31, 32], CAPTIONS[1]], 0)
  assert not np.allclose(other[0], a[0])  # The caption (through the prompt cache) conditions the image.


def test_guidance_at_scale_one_equals_the_conditional_model_alone():
  model, params = model_and_params()
  s = settings()
  static = dict(num_tokens=N, num_steps=s["num_steps"], cfg_schedule="linear",
                num_sampling_steps=s["num_sampling_steps"], sampler="ddpm", ddim_eta=0.0)
  rng, one = jax.random.key(3), jnp.float32(1.0)

  def run(guided, scale):
    ids, mask = generate_image.generation_prompts(CAPTIONS, SPECIAL, guided=guided)
    return np.asarray(generate_image._sample_tokens(model.cfg, {"params": params}, ids, mask, rng, scale, one,
                                                    guided=guided, **static))

  plain = run(False, one)
  np.testing.assert_allclose(run(True, one), plain, atol=SAME, rtol=0)  # Both branches, mixed at scale 1.
  np.testing.assert_array_equal(  # `generate` itself skips the unconditional branch at scale 1.
      np.asarray(generate_image.generate(model, params, CAPTIONS, SPECIAL, rng, **settings(cfg_scale=1.0))), plain)
  assert not np.allclose(run(True, jnp.float32(4.0)), plain, atol=1e-3)  # Guidance does something.


def test_loop_compiles_once_across_guidance_and_temperature():
  model, params = model_and_params()
  sizes = []
  for scale, temperature in ((2.0, 1.0), (3.0, 0.9), (5.0, 1.1)):
    generate_image.generate(model, params, CAPTIONS, SPECIAL, jax.random.key(0),
                            **settings(cfg_scale=scale, temperature=temperature))
    sizes.append(generate_image._sample_tokens._cache_size())
  assert sizes[0] == sizes[1] == sizes[2]


def test_captions_with_special_tokens_are_refused():
  with pytest.raises(ValueError, match="special token ids"):
    generate_image.generation_prompts([[SPECIAL.im_start, 10, SPECIAL.boi]], SPECIAL, guided=False)


def test_settings_come_from_the_config():
  s = settings(cfg_scale=1.5)
  assert s["num_tokens"] == N and s["num_steps"] == 4 and s["num_sampling_steps"] == 10 and s["cfg_scale"] == 1.5
  with pytest.raises(TypeError, match="unknown generation settings"):
    settings(cfg=2.0)
