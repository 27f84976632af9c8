"""Sizes that follow from a config by arithmetic alone: one place each, nothing imported to get them.

The image tokenizer's token count N and width D are derived here and only here; the tokenizers,
the model's views, the data pipeline and validation all read them from these functions, so no
module needs to build a tokenizer (or import flax) to know how many tokens an image becomes.
"""

from __future__ import annotations


def head_dim(model_config) -> int:
  """Per-head width: explicit `head_dim`, or hidden_size // num_heads as in Qwen2."""
  return model_config.head_dim or model_config.hidden_size // model_config.num_heads


def vae_downsample(tokenizer_config) -> int:
  """Pixels per latent position along each side: 2 per VAE level after the first."""
  return 2 ** (len(tokenizer_config.vae_channel_mult) - 1)


def image_grid(tokenizer_config) -> tuple[int, int]:
  """(rows, columns) of one image's token grid under `config.tokenizer`."""
  t = tokenizer_config
  if t.kind == "patch":
    g = t.image_size // t.patch_size
  else:
    g = t.image_size // vae_downsample(t) // t.latent_patch
  return g, g


def num_image_tokens(config) -> int:
  """N, the tokens of one image under `config.tokenizer`."""
  rows, columns = image_grid(config.tokenizer)
  return rows * columns


def image_token_dim(config) -> int:
  """D, the features of one image token (what the diffusion head models)."""
  t = config.tokenizer
  if t.kind == "patch":
    return t.patch_size * t.patch_size * 3
  return t.latent_patch ** 2 * t.vae_z_channels
