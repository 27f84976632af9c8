"""mmar_torch's KL VAE against ours: encode moments and decoded pixels within 1e-4 (float32)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import torch

from mmar_jax.convert import hf_export
from mmar_jax.models import kl_vae, tokenizers
from mmar_torch.vae import AutoencoderKL, KLTokenizer

VAE = kl_vae.VAEConfig(channels=16, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, norm_groups=8,
                       encoder_attn_levels=(1,), dtype="float32")
TOKENIZER = tokenizers.TokenizerConfig(kind="kl16", image_size=16, patch_size=4, patch_scale=1.0, latent_patch=2,
                                       vae_checkpoint="", scale_factor=0.2325, vae=VAE)


def test_kl_vae_encode_and_decode_agree():
  ours = tokenizers.KLVAE(TOKENIZER)
  params = ours.init_params(jax.random.key(0))
  gen = np.random.default_rng(0)  # Norm scales and biases off their (1, 0) init, so a swap would show.
  params = jax.tree.map(lambda a: np.asarray(a) + 0.1 * gen.standard_normal(a.shape).astype(np.float32), params)
  vae = AutoencoderKL(**dataclasses.asdict(VAE)).eval()
  vae.load_state_dict({k: torch.from_numpy(v) for k, v in hf_export.vae_state_dict(params).items()})
  theirs = KLTokenizer(vae, image_size=16, latent_patch=2, scale_factor=0.2325)
  pixels = gen.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  moments = np.asarray(ours.moments(params, pixels))
  with torch.no_grad():
    torch_moments = vae.moments(torch.from_numpy(pixels).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(torch_moments, moments, atol=1e-4, rtol=0)
  tokens = np.asarray(ours.encode(params, pixels))
  np.testing.assert_allclose(theirs.encode(torch.from_numpy(pixels)).numpy(), tokens, atol=1e-4, rtol=0)
  decoded = np.asarray(ours.decode(params, tokens))
  assert np.abs(decoded).max() > 0.1
  np.testing.assert_allclose(theirs.decode(torch.from_numpy(tokens.copy())).numpy(), decoded, atol=1e-4, rtol=0)
