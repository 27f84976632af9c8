"""MAR's MLP diffusion head: residual blocks with adaptive LayerNorm conditioned on (t, z).

Follows MAR's SimpleMLPAdaLN (Li et al. 2024, arXiv 2406.11838): the noisy token x_t is
projected to the head's width, the timestep's sinusoidal embedding goes through an MLP, the
backbone's hidden state z is projected, and t + z modulate every block (shift, scale, gate) and
the final layer (shift, scale). Modulations and the output layer start at zero (as in MAR and
DiT), so each block starts as the identity and the head's first output is 0.

MAR predicts eps and learns a variance (output 2 x channels); MMAR predicts v, with a fixed
variance in sampling, so the output has the token's channels only.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

_XAVIER = nn.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """The head's narrow view of `config.head`."""

  token_dim: int  # Channels of one continuous image token.
  cond_dim: int  # Width of the condition z (the backbone's hidden size).
  depth: int
  width: int
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  frequency_dim: int = 256  # Sinusoidal timestep features before the MLP (MAR, DiT).

  @classmethod
  def from_config(cls, config, token_dim: int) -> HeadConfig:
    """`token_dim` comes from the image tokenizer, the one place that knows it."""
    return cls(token_dim=token_dim, cond_dim=config.model.hidden_size, depth=config.head.depth,
               width=config.head.width, dtype=config.head.dtype, param_dtype=config.model.param_dtype,
               remat=config.head.remat)


def timestep_features(t: Float[Array, "b"], dim: int, max_period: float = 10_000.0) -> Float[Array, "b f"]:
  """Sinusoidal features of t, in float32: bfloat16 would round t=999 and t=996 together."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class _Dense(nn.Module):
  """Linear layer with logical axis names on its kernel and bias."""

  features: int
  axes: tuple[str | None, str | None]  # The same logical names as the backbone's; None = replicated.
  cfg: HeadConfig
  zero_init: bool = False
  kernel_init: nn.initializers.Initializer = _XAVIER

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.zero_init else self.kernel_init
    return nn.Dense(self.features, dtype=jnp.dtype(self.cfg.dtype), param_dtype=jnp.dtype(self.cfg.param_dtype),
                    kernel_init=nn.with_logical_partitioning(init, self.axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (self.axes[1],)))(x)


def _layer_norm(x, cfg: HeadConfig):
  # LayerNorm statistics in float32 (no affine: AdaLN provides shift and scale).
  return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=jnp.float32)(x).astype(cfg.dtype)


class AdaLNBlock(nn.Module):
  cfg: HeadConfig

  @nn.compact
  def __call__(self, x: Float[Array, "b w"], y: Float[Array, "b w"]) -> Float[Array, "b w"]:
    cfg = self.cfg
    shift, scale, gate = jnp.split(
        _Dense(3 * cfg.width, ("embed", "mlp"), cfg, zero_init=True, name="adaLN_modulation")(nn.silu(y)),
        3, axis=-1)
    h = _layer_norm(x, cfg) * (1 + scale) + shift
    h = _Dense(cfg.width, ("embed", "mlp"), cfg, name="mlp_in")(h)
    h = _Dense(cfg.width, ("mlp", "embed"), cfg, name="mlp_out")(nn.silu(h))
    return x + gate * h


class FinalLayer(nn.Module):
  cfg: HeadConfig

  @nn.compact
  def __call__(self, x: Float[Array, "b w"], y: Float[Array, "b w"]) -> Float[Array, "b c"]:
    cfg = self.cfg
    shift, scale = jnp.split(
        _Dense(2 * cfg.width, ("embed", "mlp"), cfg, zero_init=True, name="adaLN_modulation")(nn.silu(y)),
        2, axis=-1)
    x = _layer_norm(x, cfg) * (1 + scale) + shift
    return _Dense(cfg.token_dim, ("embed", None), cfg, zero_init=True, name="linear")(x)


class DiffusionHead(nn.Module):
  """(x_t [b, c], t [b], z [b, d]) -> the network output [b, c] (v, eps or x0 per the loss)."""

  cfg: HeadConfig

  @nn.compact
  def __call__(self, x_t: Float[Array, "b c"], t: Float[Array, "b"], z: Float[Array, "b d"]) -> Float[Array, "b c"]:
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    time_init = nn.initializers.normal(0.02)  # MAR/DiT initialise the timestep MLP this way.
    t_emb = _Dense(cfg.width, (None, "embed"), cfg, kernel_init=time_init, name="time_mlp_in")(
        timestep_features(t, cfg.frequency_dim).astype(dtype))
    t_emb = _Dense(cfg.width, ("embed", "mlp"), cfg, kernel_init=time_init,
                   name="time_mlp_out")(nn.silu(t_emb))
    y = t_emb + _Dense(cfg.width, ("embed", "mlp"), cfg, name="cond_proj")(z.astype(dtype))
    x = _Dense(cfg.width, (None, "embed"), cfg, name="input_proj")(x_t.astype(dtype))
    block = nn.remat(AdaLNBlock) if cfg.remat else AdaLNBlock
    for i in range(cfg.depth):
      x = block(cfg, name=f"blocks_{i}")(x, y)
    return FinalLayer(cfg, name="final_layer")(x, y)
