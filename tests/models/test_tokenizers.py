"""Image tokenizers: exact patch round trips, KLVAE parity with PyTorch, sharding, the KL-16 shape."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mmar_jax import configs
from mmar_jax.convert import vae_ckpt
from mmar_jax.models import kl_vae, tokenizers
from mmar_torch import vae as torch_vae
from tests.views import view

# A small VAE with every feature of KL-16: 3 levels (/4), 2 res blocks a level, width changes
# (nin_shortcut), encoder attention at the deepest level (as MAR's 16x16 level), mid attention.
SMALL = view(kl_vae.VAEConfig, {"tokenizer.vae_channels": 16, "tokenizer.vae_channel_mult": (1, 2, 2),
                                "tokenizer.vae_num_res_blocks": 2, "tokenizer.vae_z_channels": 4,
                                "tokenizer.vae_norm_groups": 8, "tokenizer.vae_encoder_attn_levels": (2,),
                                "tokenizer.dtype": "float32"})
SMALL_SIZE = 16


def _small_torch(seed=0, attn_levels=SMALL.encoder_attn_levels):
  # The PyTorch side's VAE (mmar_torch.vae, MAR's keys), written apart from our Flax module;
  # diffusers' AutoencoderKL is the second reference.
  model = torch_vae.AutoencoderKL(channels=SMALL.channels, channel_mult=SMALL.channel_mult,
                                  num_res_blocks=SMALL.num_res_blocks, z_channels=SMALL.z_channels,
                                  norm_groups=SMALL.norm_groups, encoder_attn_levels=attn_levels)
  return randomize_(model, seed).eval()


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Fills every parameter with N(0, 1) / sqrt(fan-in)-ish values, GroupNorm affine near (1, 0)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      fan_in = p[0].numel() if p.ndim > 1 else 1
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim > 1:
        p.copy_(noise / fan_in ** 0.5)
      elif "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * noise)
      else:
        p.copy_(0.1 * noise)
  return model


def _pixels(b, size, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (b, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("image_size,patch_size,scale", [(32, 4, 1.0), (64, 8, 1.0), (48, 16, 0.25), (32, 1, 4.0),
                                                         (64, 32, 1.0)])
def test_patch_round_trip_is_bit_exact(image_size, patch_size, scale):
  tok = tokenizers.PatchTokenizer(image_size, patch_size, scale)
  # Arbitrary float32 values, not only multiples of 1/255, so exactness is not an accident of the data.
  x = jnp.asarray(_pixels(3, image_size))
  tokens = tok.encode({}, x)
  assert tokens.shape == (3, tok.num_tokens, tok.token_dim)
  assert tok.num_tokens == (image_size // patch_size) ** 2 and tok.token_dim == patch_size ** 2 * 3
  np.testing.assert_array_equal(np.asarray(tok.decode({}, tokens)), np.asarray(x))


def test_patch_token_layout_is_row_major_patches():
  tok = tokenizers.PatchTokenizer(8, 4)
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  tokens = tok.encode({}, x)
  # Token 1 is the top-right 4x4 patch, flattened row by row with channels innermost.
  np.testing.assert_array_equal(tokens[0, 1], x[0, :4, 4:, :].reshape(-1))


def test_patch_size_that_does_not_divide_the_image_is_a_clear_error():
  with pytest.raises(ValueError, match=r"patch_size=5 must divide image_size=32"):
    tokenizers.PatchTokenizer(32, 5)
  config = configs.base_config()
  config.tokenizer.kind, config.tokenizer.image_size, config.tokenizer.patch_size = "patch", 32, 5
  with pytest.raises(configs.ConfigError, match=r"config\.tokenizer\.patch_size=5 .*image_size=32"):
    configs.validate(config)
  with pytest.raises(ValueError, match="patch size 3 does not divide the 16x16 grid"):
    tokenizers.patchify(jnp.zeros((1, 16, 16, 4)), 3)


def test_config_validation_names_bad_tokenizer_fields():
  config = configs.base_config()
  config.tokenizer.latent_patch = 3  # 256 / 16 = 16 latent positions a side.
  with pytest.raises(configs.ConfigError, match=r"config\.tokenizer\.latent_patch=3 .*16x16 latent grid"):
    configs.validate(config)
  config = configs.base_config()
  config.tokenizer.kind = "vqgan"
  with pytest.raises(configs.ConfigError, match=r"config\.tokenizer\.kind='vqgan'"):
    configs.validate(config)


def test_factory_builds_the_configured_tokenizers():
  from configs import demo, mmar_0p5b
  demo_tok = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(demo.get_config()))
  assert isinstance(demo_tok, tokenizers.PatchTokenizer) and demo_tok.grid == (3, 3) and demo_tok.token_dim == 192
  paper = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(mmar_0p5b.get_config()))
  # MAR's KL-16 at 256x256: 256 tokens of 16 channels.
  assert isinstance(paper, tokenizers.KLVAE)
  assert (paper.grid, paper.num_tokens, paper.token_dim) == ((16, 16), 256, 16)
  # MAR's KL-16 (its vae.py: ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks, embed_dim 16, attention at 16x16).
  assert paper.config.vae == kl_vae.VAEConfig(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                                              z_channels=16, norm_groups=32, encoder_attn_levels=(4,),
                                              dtype="bfloat16")


def test_latent_patch_groups_positions_invertibly():
  cfg = view(tokenizers.TokenizerConfig, {"tokenizer.kind": "kl16", "tokenizer.image_size": SMALL_SIZE * 2,
                                           "tokenizer.latent_patch": 2}, vae=SMALL)
  tok = tokenizers.KLVAE(cfg)
  assert tok.grid == (4, 4) and tok.token_dim == 4 * SMALL.z_channels
  latents = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, SMALL.z_channels)).astype(np.float32))
  tokens = tok.latents_to_tokens(latents)
  # The grouping alone is exact; the scale factor is the only (rounding) arithmetic.
  np.testing.assert_array_equal(tokenizers.unpatchify(tokenizers.patchify(latents, 2), 2, (4, 4)), latents)
  np.testing.assert_allclose(tokens[0, 0], latents[0, :2, :2].reshape(-1) * 0.2325, rtol=1e-7)
  np.testing.assert_allclose(tok.tokens_to_latents(tokens), latents, rtol=1e-6)


def _diffusers_model(sd, attn_levels):
  """diffusers' AutoencoderKL configured like SMALL, weights from the MAR-layout `sd` via diffusers' converter."""
  from diffusers import AutoencoderKL
  from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
  levels = len(SMALL.channel_mult)
  config = dict(in_channels=3, out_channels=3, latent_channels=SMALL.z_channels, layers_per_block=SMALL.num_res_blocks,
                norm_num_groups=SMALL.norm_groups, sample_size=SMALL_SIZE,
                block_out_channels=tuple(SMALL.channels * m for m in SMALL.channel_mult),
                down_block_types=tuple("AttnDownEncoderBlock2D" if i in attn_levels else "DownEncoderBlock2D"
                                       for i in range(levels)),
                up_block_types=("UpDecoderBlock2D",) * levels)
  model = AutoencoderKL(**config).eval()
  converted = convert_ldm_vae_checkpoint(dict(sd), config)
  # It passes level-attention keys through under their LDM names; drop those, they are mapped below.
  converted = {k: v for k, v in converted.items() if ".down." not in k}
  # diffusers' converter knows attention only in the mid block; map the level attention the same way
  # (1x1 convs -> linear layers, norm -> group_norm).
  for i in attn_levels:
    for j in range(SMALL.num_res_blocks):
      old, new = f"encoder.down.{i}.attn.{j}", f"encoder.down_blocks.{i}.attentions.{j}"
      for o, n in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        for leaf in ("weight", "bias"):
          t = sd[f"{old}.{o}.{leaf}"]
          converted[f"{new}.{n}.{leaf}"] = t.reshape(t.shape[:2]) if t.ndim == 4 else t
  model.load_state_dict(converted, strict=True)
  return model


@pytest.mark.parametrize("attn_levels", [(), (2,)], ids=["mid-attention-only", "attention-at-deepest-level"])
def test_klvae_matches_diffusers_in_float32(attn_levels):
  vae_config = dataclasses.replace(SMALL, encoder_attn_levels=attn_levels)
  sd = _small_torch(seed=3, attn_levels=attn_levels).state_dict()
  theirs = _diffusers_model(sd, attn_levels)
  params = vae_ckpt.params_from_state_dict({k: v.numpy() for k, v in sd.items()}, vae_config)
  module = kl_vae.AutoencoderKL(vae_config)
  x = _pixels(2, SMALL_SIZE, seed=4)
  z = np.random.default_rng(5).normal(size=(2, 4, 4, SMALL.z_channels)).astype(np.float32)
  with torch.no_grad():
    x_t = torch.from_numpy(x).permute(0, 3, 1, 2)
    moments_ref = theirs.quant_conv(theirs.encoder(x_t)).permute(0, 2, 3, 1).numpy()
    decoded_ref = theirs.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()
  moments = module.apply({"params": params}, x, method=kl_vae.AutoencoderKL.encode)
  decoded = module.apply({"params": params}, z, method=kl_vae.AutoencoderKL.decode)
  assert moments.dtype == jnp.float32 and moments.shape == (2, 4, 4, 2 * SMALL.z_channels)
  np.testing.assert_allclose(moments, moments_ref, atol=1e-4, rtol=0)
  np.testing.assert_allclose(decoded, decoded_ref, atol=1e-4, rtol=0)
  # diffusers' posterior (clip to [-30, 20], mean) agrees with ours.
  with torch.no_grad():
    posterior = theirs.encode(x_t).latent_dist
  mean, logvar = kl_vae.split_moments(moments)
  np.testing.assert_allclose(mean, posterior.mean.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(logvar, posterior.logvar.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)


def test_posterior_clips_logvar_and_samples_with_its_std():
  moments = jnp.concatenate([jnp.full((1, 2, 2, 4), 3.0), jnp.array([-100.0, 0.0, 2.0, 100.0]).reshape(1, 1, 1, 4)
                             * jnp.ones((1, 2, 2, 4))], axis=-1)
  mean, logvar = kl_vae.split_moments(moments)
  np.testing.assert_array_equal(logvar[0, 0, 0], [-30.0, 0.0, 2.0, 20.0])
  np.testing.assert_array_equal(kl_vae.sample_posterior(moments, None), mean)
  samples = kl_vae.sample_posterior(jnp.broadcast_to(moments, (4096, 2, 2, 8)), jax.random.key(0))
  # The sample's std is exp(logvar / 2): 1 for logvar 0, e for logvar 2 (4096 x 4 draws each: 2% is > 5 sigma).
  np.testing.assert_allclose(samples[..., 1].std(), 1.0, rtol=0.05)
  np.testing.assert_allclose(samples[..., 2].std(), np.e, rtol=0.05)


def test_klvae_runs_sharded_over_the_batch():
  # Smaller still than SMALL: this test compiles three programs, one of them for 8 devices.
  tiny = dataclasses.replace(SMALL, channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4,
                             encoder_attn_levels=(1,))
  tok = tokenizers.KLVAE(view(tokenizers.TokenizerConfig, {"tokenizer.kind": "kl16", "tokenizer.image_size": SMALL_SIZE},
                              vae=tiny))
  params = tok.init_params(jax.random.key(0))
  x = jnp.asarray(_pixels(8, SMALL_SIZE, seed=6))
  expected = jax.jit(tok.encode)(params, x)
  mesh = jax.make_mesh((8, 1, 1), configs.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nn.logical_axis_rules(configs.DEFAULT_LOGICAL_AXIS_RULES):
    x_sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
    tokens = jax.jit(tok.encode)(params, x_sharded)
    pixels = jax.jit(tok.decode)(params, tokens)
  assert tokens.sharding.shard_shape(tokens.shape) == (1, tok.num_tokens, tok.token_dim)
  assert pixels.sharding.shard_shape(pixels.shape) == (1, SMALL_SIZE, SMALL_SIZE, 3)
  np.testing.assert_allclose(tokens, expected, atol=1e-5, rtol=0)


def test_bfloat16_compute_keeps_float32_posterior_close_to_float32():
  cfg = view(tokenizers.TokenizerConfig, {"tokenizer.kind": "kl16", "tokenizer.image_size": SMALL_SIZE}, vae=SMALL)
  f32 = tokenizers.KLVAE(cfg)
  bf16 = tokenizers.KLVAE(dataclasses.replace(cfg, vae=dataclasses.replace(SMALL, dtype="bfloat16")))
  params = f32.init_params(jax.random.key(1))
  x = jnp.asarray(_pixels(2, SMALL_SIZE, seed=7))
  ref_moments, moments = jax.jit(f32.moments)(params, x), jax.jit(bf16.moments)(params, x)
  round_trip = jax.jit(lambda p, x: bf16.decode(p, bf16.encode(p, x)))
  assert moments.dtype == jnp.float32 and round_trip(params, x).dtype == jnp.float32
  # bfloat16 keeps 8 significant bits: a rounding errs by at most 2^-8 relative, rms about
  # 2^-8 / sqrt(3) = 0.23%. The encoder rounds some 50 times on the way (about 20 convolutions, the group
  # norms and SiLUs between them); independent, they add in quadrature: sqrt(50) * 0.23% = 1.6%.
  # Measured: max 1.04% of the moments' scale, rms 1.1% (0.97-1.06% max over three seeds). One
  # extra rounding to float8_e4m3 (4 significant bits) before quant_conv gives 3.2% and fails.
  scale = float(jnp.abs(ref_moments).max())
  assert float(jnp.abs(moments - ref_moments).max()) < 0.025 * scale


@pytest.mark.slow
def test_full_kl16_at_256_has_mar_shapes_and_is_finite():
  tok = tokenizers.KLVAE(view(tokenizers.TokenizerConfig, {"tokenizer.kind": "kl16", "tokenizer.image_size": 256}))
  abstract = kl_vae.abstract_params(tok.config.vae)
  # The same parameter count as the LDM/MAR torch module of this architecture (~83.7M).
  torch_count = sum(p.numel() for p in torch_vae.AutoencoderKL(
      channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=16, norm_groups=32,
      encoder_attn_levels=(4,)).parameters())  # MAR's KL-16
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract)) == torch_count
  params = tok.init_params(jax.random.key(0))
  x = jnp.asarray(_pixels(1, 256, seed=8))
  tokens = jax.jit(tok.encode)(params, x, jax.random.key(1))
  assert tokens.shape == (1, 256, 16) and bool(jnp.isfinite(tokens).all())
  pixels = jax.jit(tok.decode)(params, tokens)
  assert pixels.shape == (1, 256, 256, 3) and bool(jnp.isfinite(pixels).all())
