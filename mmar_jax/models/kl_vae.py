"""The LDM KL autoencoder (MAR's KL-16 tokenizer) as Flax linen modules, NHWC.

Module and parameter names mirror the LDM/MAR torch keys (`encoder.down.0.block.1.conv1.weight`
is `encoder/down_0/block_1/conv1/kernel` here), so `convert/vae_ckpt.py` maps them mechanically.
Convolution kernels are left unnamed for sharding (replicated): the VAE is small (~80M
parameters at KL-16) and frozen, while activations are large, so only the batch dimension of
activations is sharded, by the logical axis 'batch'.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

# MAR clips the posterior's log-variance to this range before exponentiating.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
IN_CHANNELS = 3  # RGB in and out.


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture of the KL autoencoder (config.tokenizer.vae_*; the schema's defaults are MAR's KL-16)."""
  channels: int
  channel_mult: tuple[int, ...]
  num_res_blocks: int
  z_channels: int
  norm_groups: int
  encoder_attn_levels: tuple[int, ...]  # MAR's attn_resolutions=(16,) at 256x256 is level 4.
  dtype: str  # Compute dtype of convolutions; parameters are float32.

  @classmethod
  def from_config(cls, config) -> VAEConfig:
    t = config.tokenizer
    return cls(channels=t.vae_channels, channel_mult=tuple(t.vae_channel_mult), num_res_blocks=t.vae_num_res_blocks,
               z_channels=t.vae_z_channels, norm_groups=t.vae_norm_groups,
               encoder_attn_levels=tuple(t.vae_encoder_attn_levels), dtype=t.dtype)

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)


def _constrain(x):
  """Shards an activation's batch dimension over the mesh (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, ("batch", None, None, None))


def _norm(groups: int, name: str):
  # Statistics in float32 whatever the compute dtype (flax reduces in float32); the two-pass
  # variance avoids E[x^2] - E[x]^2 cancellation.
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, use_fast_variance=False, name=name)


def _conv(features: int, kernel: int, dtype, name: str, stride: int = 1, padding="SAME"):
  # torch's padding=1 for a 3x3 stride-1 conv equals SAME; written out for stride-2 cases.
  if padding == "SAME":
    padding = ((kernel // 2, kernel // 2),) * 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class ResnetBlock(nn.Module):
  """Pre-norm residual block: GN-swish-conv twice, 1x1 conv shortcut when the width changes."""
  out_channels: int
  norm_groups: int
  dtype: str

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b height width c"]) -> Float[Array, "b height width o"]:
    h = nn.swish(_norm(self.norm_groups, "norm1")(x))
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
    h = nn.swish(_norm(self.norm_groups, "norm2")(h))
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
    return _constrain(x + h)


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions, with 1x1-conv projections and a residual."""
  norm_groups: int
  dtype: str

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b height width c"]) -> Float[Array, "b height width c"]:
    b, hh, ww, c = x.shape
    h = _norm(self.norm_groups, "norm")(x)
    q, k, v = (_conv(c, 1, self.dtype, n)(h).reshape(b, hh * ww, c) for n in ("q", "k", "v"))
    logits = jnp.einsum("bic,bjc->bij", q, k) * (c ** -0.5)
    # Softmax in float32: bfloat16 logits over 256+ positions lose the small weights.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bij,bjc->bic", weights, v).reshape(b, hh, ww, c)
    return _constrain(x + _conv(c, 1, self.dtype, "proj_out")(out))


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding one zero row/column at the bottom/right only (as LDM)."""
  dtype: str

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b height width c"]) -> Float[Array, "b height2 width2 c"]:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _constrain(_conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding="VALID")(x))


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""
  dtype: str

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b height width c"]) -> Float[Array, "b height2 width2 c"]:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _constrain(_conv(x.shape[-1], 3, self.dtype, "conv")(x))


class _Mid(nn.Module):
  """The middle block: res block, attention, res block."""
  norm_groups: int
  dtype: str

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ResnetBlock(c, self.norm_groups, self.dtype, name="block_1")(x)
    x = AttnBlock(self.norm_groups, self.dtype, name="attn_1")(x)
    return ResnetBlock(c, self.norm_groups, self.dtype, name="block_2")(x)


class _Level(nn.Module):
  """One resolution level: `num_blocks` res blocks (each optionally followed by attention), then a resampler."""
  out_channels: int
  num_blocks: int
  attention: bool
  resample: str  # "downsample", "upsample" or "" (none).
  norm_groups: int
  dtype: str

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.norm_groups, self.dtype, name=f"block_{i}")(x)
      if self.attention:
        x = AttnBlock(self.norm_groups, self.dtype, name=f"attn_{i}")(x)
    if self.resample == "downsample":
      x = Downsample(self.dtype, name="downsample")(x)
    elif self.resample == "upsample":
      x = Upsample(self.dtype, name="upsample")(x)
    return x


class Encoder(nn.Module):
  """Pixels -> 2 * z_channels pre-quant_conv moments at 1/downsample resolution."""
  config: VAEConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b height width 3"]) -> Float[Array, "b hz wz moments"]:
    cfg = self.config
    levels = len(cfg.channel_mult)
    h = _constrain(_conv(cfg.channels, 3, cfg.dtype, "conv_in")(x))
    for i, mult in enumerate(cfg.channel_mult):
      h = _Level(cfg.channels * mult, cfg.num_res_blocks, i in cfg.encoder_attn_levels,
                 "downsample" if i != levels - 1 else "", cfg.norm_groups, cfg.dtype, name=f"down_{i}")(h)
    h = _Mid(cfg.norm_groups, cfg.dtype, name="mid")(h)
    h = nn.swish(_norm(cfg.norm_groups, "norm_out")(h))
    return _constrain(_conv(2 * cfg.z_channels, 3, cfg.dtype, "conv_out")(h))


class Decoder(nn.Module):
  """z_channels latents -> pixels; levels in reverse with num_res_blocks + 1 blocks each, no level attention."""
  config: VAEConfig

  @nn.compact
  def __call__(self, z: Float[ArrayLike, "b hz wz z"]) -> Float[Array, "b height width 3"]:
    cfg = self.config
    h = _constrain(_conv(cfg.channels * cfg.channel_mult[-1], 3, cfg.dtype, "conv_in")(z))
    h = _Mid(cfg.norm_groups, cfg.dtype, name="mid")(h)
    # Names keep LDM's indices: up_{i} is the level at resolution 1/2**i, run from deepest to shallowest.
    for i in reversed(range(len(cfg.channel_mult))):
      h = _Level(cfg.channels * cfg.channel_mult[i], cfg.num_res_blocks + 1, False,
                 "upsample" if i != 0 else "", cfg.norm_groups, cfg.dtype, name=f"up_{i}")(h)
    h = nn.swish(_norm(cfg.norm_groups, "norm_out")(h))
    return _constrain(_conv(IN_CHANNELS, 3, cfg.dtype, "conv_out")(h))


class AutoencoderKL(nn.Module):
  """Encoder + quant_conv -> moments; post_quant_conv + decoder -> pixels. Latents are unscaled here."""
  config: VAEConfig

  def setup(self):
    z = self.config.z_channels
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)
    # The posterior's statistics come out of quant_conv in float32 (issue: float32 posterior).
    self.quant_conv = nn.Conv(2 * z, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32)
    self.post_quant_conv = nn.Conv(z, (1, 1), dtype=self.config.dtype, param_dtype=jnp.float32)

  def encode(self, pixels: Float[ArrayLike, "b height width 3"]) -> Float[Array, "b hz wz moments"]:
    """Moments [mean | logvar] (unclipped, float32) of the diagonal Gaussian posterior."""
    # float32 moments: the posterior's log-variance and the latents the diffusion loss targets.
    return self.quant_conv(self.encoder(pixels.astype(self.config.dtype)).astype(jnp.float32))

  def decode(self, latents: Float[ArrayLike, "b hz wz z"]) -> Float[Array, "b height width 3"]:
    """Pixels from unscaled latents; the output is float32."""
    return self.decoder(self.post_quant_conv(latents.astype(self.config.dtype))).astype(jnp.float32)

  def __call__(self, pixels):
    """Used only to create every parameter at init: the posterior mean through the decoder."""
    mean, _ = split_moments(self.encode(pixels))
    return self.decode(mean)


def split_moments(moments: Float[ArrayLike, "b hz wz moments"]) -> tuple[Array, Array]:
  """(mean, logvar) with logvar clipped to [-30, 20] as in LDM's DiagonalGaussianDistribution."""
  mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
  return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


def sample_posterior(moments: Float[ArrayLike, "b hz wz moments"], rng: jax.Array | None) -> Float[Array, "b hz wz z"]:
  """A latent from the posterior: mean + std * noise, or the mean (mode) when `rng` is None."""
  mean, logvar = split_moments(moments)
  if rng is None:
    return mean
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, jnp.float32)


def abstract_params(config: VAEConfig):
  """Shapes and dtypes of the autoencoder's parameters, computed without allocating them."""
  pixels = jax.ShapeDtypeStruct((1, 8 * config.downsample, 8 * config.downsample, IN_CHANNELS), jnp.float32)
  return jax.eval_shape(lambda x: AutoencoderKL(config).init(jax.random.key(0), x)["params"], pixels)
