"""MAR's diffusion head: an MLP of AdaLN residual blocks that predicts from (x_t, t, z).

Layout as in MAR's `SimpleMLPAdaLN` (itself DiT's AdaLN without attention): the noisy token is
projected to the head's width, the timestep goes through sinusoidal features and a 2-layer MLP,
the backbone's hidden state `z` through one linear layer; their sum `y` modulates every residual
block (shift, scale, gate) and the final layer (shift, scale). Modulations and the output layer
start at zero, so the untrained head predicts 0 and every block starts as the identity.

MAR's head also outputs a variance (learned-range sigma with a VLB term); this head outputs the
prediction only and the samplers use fixed variances, since the paper trains with a plain
v-prediction MSE.

Parameters carry logical axis names: the residual stream's width is 'embed' and the inner
(hidden and modulation) width is 'mlp', as in the backbone, so one rule table shards both.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from mmar_jax import configs
from mmar_jax.models.layers import ZEROS, dense, layer_norm

# MAR/DiT initialisers: xavier-uniform weights and zero biases (layers.dense), N(0, 0.02) for the
# timestep MLP.
_TIME_INIT = nn.initializers.normal(0.02)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """The head's narrow view of `config.head`."""

  depth: int
  width: int
  token_channels: int
  frequency_dim: int
  norm_eps: float
  dtype: str
  param_dtype: str
  remat: bool

  @classmethod
  def from_config(cls, config) -> HeadConfig:
    """From `config.head`, with the token width D that `config.tokenizer` implies."""
    names = {f.name for f in dataclasses.fields(cls)} - {"token_channels"}
    return cls(token_channels=configs.image_token_dim(config), **{k: config.head[k] for k in names})

  def replace(self, **changes) -> HeadConfig:
    return dataclasses.replace(self, **changes)


def timestep_features(t: Float[ArrayLike, " b"], dim: int, max_period: float = 10_000.0) -> Float[Array, "b f"]:
  """Sinusoidal features [cos, sin] of (possibly fractional) timesteps, always float32.

  float32 because bfloat16 values in [512, 1024) are 4 apart: timesteps 998 and 999 both become 1000.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _modulate(x: Float[ArrayLike, "b d"], shift: Float[ArrayLike, "b d"], scale: Float[ArrayLike, "b d"]):
  return x * (1 + scale) + shift


class ResBlock(nn.Module):
  """x + gate * MLP(modulate(LN(x), shift, scale)), with (shift, scale, gate) from y."""

  cfg: HeadConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b d"], y: Float[ArrayLike, "b d"]) -> Float[Array, "b d"]:
    cfg = self.cfg
    mod = dense(cfg, 3 * cfg.width, ("embed", "mlp"), "adaLN_modulation", ZEROS)(nn.silu(y))
    shift, scale, gate = jnp.split(mod, 3, axis=-1)
    h = _modulate(layer_norm(cfg, "in_ln")(x), shift, scale)
    h = dense(cfg, cfg.width, ("embed", "mlp"), "mlp_in")(h)
    h = dense(cfg, cfg.width, ("mlp", "embed"), "mlp_out")(nn.silu(h))
    # The branch in the residual stream's layout before the gate. Without it, XLA (jax 0.10.2, both
    # partitioners) miscompiles `x + gate * h` on a mesh with data, fsdp and tensor all > 1 (a
    # wrong forward, not a slow one; tests/models/test_diffusion_head.py compares it unsharded).
    h = nn.with_logical_constraint(h, ("batch", "activation_embed"))
    return x + gate * h


class FinalLayer(nn.Module):
  """DiT's final layer: modulate(LN(x)) then a linear map to the token's channels."""

  cfg: HeadConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b d"], y: Float[ArrayLike, "b d"]) -> Float[Array, "b c"]:
    cfg = self.cfg
    mod = dense(cfg, 2 * cfg.width, ("embed", "mlp"), "adaLN_modulation", ZEROS)(nn.silu(y))
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = _modulate(layer_norm(cfg, "norm_final", affine=False)(x), shift, scale)
    return dense(cfg, cfg.token_channels, ("embed", None), "linear", ZEROS)(h)


class DiffusionHead(nn.Module):
  """Predicts v (or eps, or x0) for noisy tokens x_t at timesteps t given conditions z.

  The output is in the compute dtype; the loss and the samplers cast it to float32.
  """

  cfg: HeadConfig

  @nn.compact
  def __call__(self, x_t: Float[ArrayLike, "b c"], t: Float[ArrayLike, " b"], z: Float[ArrayLike, "b dz"]
               ) -> Float[Array, "b c"]:
    cfg = self.cfg
    x = dense(cfg, cfg.width, (None, "embed"), "input_proj")(x_t)
    x = nn.with_logical_constraint(x, ("batch", "activation_embed"))
    temb = dense(cfg, cfg.width, (None, "mlp"), "time_mlp_in", _TIME_INIT)(timestep_features(t, cfg.frequency_dim))
    temb = dense(cfg, cfg.width, ("mlp", "embed"), "time_mlp_out", _TIME_INIT)(nn.silu(temb))
    y = temb + dense(cfg, cfg.width, ("embed", "mlp"), "cond_embed")(z)
    y = nn.with_logical_constraint(y, ("batch", "activation_embed"))
    block = nn.remat(ResBlock) if cfg.remat else ResBlock
    for i in range(cfg.depth):
      x = block(cfg, name=f"res_blocks_{i}")(x, y)
    return FinalLayer(cfg, name="final_layer")(x, y)
