"""Image tokenizers behind one interface: pixels <-> continuous tokens [B, N, D].

Pixels are NHWC float arrays in [-1, 1] (MAR's normalisation: x / 127.5 - 1) everywhere in this
project. Tokens are row-major over the token grid: token n covers grid position
(n // grid_w, n % grid_w), and its D features are a p x p block of positions, row-major, each
position's channels innermost.

Tokenizers are plain Python objects holding no arrays: `encode(params, pixels)` and
`decode(params, tokens)` are pure functions of the (frozen) parameters, so they jit and shard
like any other function. `PatchTokenizer` has no parameters (`{}`).
"""

from __future__ import annotations

import abc
import dataclasses
import math

import einops
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from mmar_jax import configs
from mmar_jax.models import kl_vae


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """The fields of `config.tokenizer` a tokenizer needs (configs/schema.py documents each)."""
  kind: str
  image_size: int
  patch_size: int
  patch_scale: float
  latent_patch: int
  vae_checkpoint: str
  scale_factor: float
  vae: kl_vae.VAEConfig

  @classmethod
  def from_config(cls, config) -> TokenizerConfig:
    t = config.tokenizer
    return cls(kind=t.kind, image_size=t.image_size, patch_size=t.patch_size, patch_scale=t.patch_scale,
               latent_patch=t.latent_patch, vae_checkpoint=t.vae_checkpoint, scale_factor=t.scale_factor,
               vae=kl_vae.VAEConfig.from_config(config))


def patchify(x: Float[ArrayLike, "b height width ch"], p: int) -> Float[ArrayLike, "b n c"]:
  """Groups p x p spatial positions into one token: [b, (h/p)(w/p), p*p*c], exactly invertible;
  numpy in, numpy out (einops)."""
  b, h, w, c = x.shape
  if h % p or w % p:
    raise ValueError(f"patch size {p} does not divide the {h}x{w} grid; pick a divisor of {math.gcd(h, w)}")
  return einops.rearrange(x, "b (gh p1) (gw p2) c -> b (gh gw) (p1 p2 c)", p1=p, p2=p)


def unpatchify(tokens: Float[ArrayLike, "b n c"], p: int, grid: tuple[int, int]) -> Float[ArrayLike, "b height width ch"]:
  """The inverse of `patchify` for a token grid `grid` = (h/p, w/p)."""
  gh, gw = grid
  if tokens.shape[1] != gh * gw or tokens.shape[2] % (p * p):
    raise ValueError(f"tokens of shape {tokens.shape} do not form a {gh}x{gw} grid of {p}x{p} patches")
  return einops.rearrange(tokens, "b (gh gw) (p1 p2 c) -> b (gh p1) (gw p2) c", gh=gh, gw=gw, p1=p, p2=p)


class ImageTokenizer(abc.ABC):
  """The seam between pixels and the model: `encode` to tokens [B, N, D], `decode` back to pixels."""

  image_size: int

  @property
  @abc.abstractmethod
  def grid(self) -> tuple[int, int]:
    """(rows, columns) of the token grid."""

  @property
  def num_tokens(self) -> int:
    """N, tokens per image."""
    return self.grid[0] * self.grid[1]

  @property
  @abc.abstractmethod
  def token_dim(self) -> int:
    """D, features per token."""

  @abc.abstractmethod
  def init_params(self, rng: jax.Array):
    """Freshly initialised parameters (random; for tests and benchmarks)."""

  @abc.abstractmethod
  def encode(self, params, pixels: Float[ArrayLike, "b height width 3"], rng: jax.Array | None = None
             ) -> Float[Array, "b n c"]:
    """Tokens of NHWC pixels in [-1, 1]; `rng` samples a stochastic encoder, None takes its mode."""

  @abc.abstractmethod
  def decode(self, params, tokens: Float[ArrayLike, "b n c"]) -> Float[ArrayLike, "b height width 3"]:
    """NHWC pixels (nominally in [-1, 1], not clipped) of tokens."""


class PatchTokenizer(ImageTokenizer):
  """Lossless pixel patches: a token is a p x p x 3 patch times a power-of-2 scale."""

  def __init__(self, image_size: int, patch_size: int, scale: float = 1.0):
    if patch_size <= 0 or image_size % patch_size:
      raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
    if scale <= 0 or math.frexp(scale)[0] != 0.5:
      # Multiplying by a power of 2 only changes the exponent, so decode(encode(x)) == x bit for bit.
      raise ValueError(f"scale={scale} must be a positive power of 2 to keep the round trip exact")
    self.image_size, self.patch_size, self.scale = image_size, patch_size, scale

  @property
  def grid(self) -> tuple[int, int]:
    g = self.image_size // self.patch_size
    return g, g

  @property
  def token_dim(self) -> int:
    return self.patch_size * self.patch_size * 3

  def init_params(self, rng):
    del rng
    return {}

  def encode(self, params, pixels, rng=None):
    del params, rng
    self._check_pixels(pixels)
    return patchify(pixels, self.patch_size) * self.scale

  def decode(self, params, tokens):
    del params
    return unpatchify(tokens / self.scale, self.patch_size, self.grid)

  def _check_pixels(self, pixels):
    if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"pixels of shape {pixels.shape}: expected NHWC [b, {self.image_size}, "
                       f"{self.image_size}, 3]")


class KLVAE(ImageTokenizer):
  """MAR's KL-16 VAE: a token is latent_patch x latent_patch latent positions, scaled by scale_factor."""

  def __init__(self, config: TokenizerConfig):
    vae = config.vae
    if config.image_size % vae.downsample or (config.image_size // vae.downsample) % config.latent_patch:
      raise ValueError(f"image_size={config.image_size} must be a multiple of the VAE's downsampling "
                       f"{vae.downsample} times latent_patch={config.latent_patch}")
    self.config = config
    self.image_size = config.image_size
    self.latent_size = config.image_size // vae.downsample
    self.module = kl_vae.AutoencoderKL(vae)

  @property
  def grid(self) -> tuple[int, int]:
    g = self.latent_size // self.config.latent_patch
    return g, g

  @property
  def token_dim(self) -> int:
    return self.config.latent_patch ** 2 * self.config.vae.z_channels

  def init_params(self, rng):
    """Random LeCun-normal kernels, unit norm scales, zero biases; made in numpy, not by flax's init.

    The VAE is frozen (never trained here), so random weights only feed tests and benchmarks;
    compiling flax's initialisers for it takes half a minute on a CPU, numpy takes milliseconds.
    """
    gen = np.random.default_rng(np.asarray(jax.random.key_data(rng)).tolist())

    def leaf(path, a):
      if path[-1].key == "kernel":
        return jnp.asarray(gen.standard_normal(a.shape, np.float32) / np.sqrt(np.prod(a.shape[:-1])))
      return jnp.full(a.shape, 1.0 if path[-1].key == "scale" else 0.0, a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, kl_vae.abstract_params(self.config.vae))

  def moments(self, params, pixels: Float[ArrayLike, "b height width 3"]) -> Float[Array, "b hz wz moments"]:
    """Posterior moments [mean | logvar] in float32, the form the latent cache stores."""
    return self.module.apply({"params": params}, pixels, method=kl_vae.AutoencoderKL.encode)

  def tokens_from_moments(self, moments: Float[ArrayLike, "b hz wz moments"], rng: jax.Array | None = None
                          ) -> Float[Array, "b n c"]:
    """Tokens of cached moments: a posterior sample (or the mean), scaled and grouped."""
    return self.latents_to_tokens(kl_vae.sample_posterior(moments, rng))

  def latents_to_tokens(self, latents: Float[ArrayLike, "b hz wz z"]) -> Float[ArrayLike, "b n c"]:
    # The one place the latent scale is applied (MAR: posterior.sample() * 0.2325).
    return patchify(latents * self.config.scale_factor, self.config.latent_patch)

  def tokens_to_latents(self, tokens: Float[ArrayLike, "b n c"]) -> Float[ArrayLike, "b hz wz z"]:
    # ... and the one place it is undone (MAR: vae.decode(tokens / 0.2325)).
    return unpatchify(tokens, self.config.latent_patch, self.grid) / self.config.scale_factor

  def encode(self, params, pixels, rng=None):
    return self.tokens_from_moments(self.moments(params, pixels), rng)

  def decode(self, params, tokens):
    return self.module.apply({"params": params}, self.tokens_to_latents(tokens), method=kl_vae.AutoencoderKL.decode)


def make_tokenizer(config: TokenizerConfig) -> ImageTokenizer:
  """The tokenizer `config.kind` names."""
  if config.kind == "patch":
    return PatchTokenizer(config.image_size, config.patch_size, config.patch_scale)
  if config.kind == "kl16":
    return KLVAE(config)
  raise ValueError(f"config.tokenizer.kind={config.kind!r} must be one of {configs.TOKENIZER_KINDS}")
