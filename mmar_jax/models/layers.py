"""Dense and LayerNorm layers with logical axis names, shared by the diffusion head and the adapter.

`cfg` is any config with `dtype` and `param_dtype` (and `norm_eps` for LayerNorm) fields.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

XAVIER = nn.initializers.xavier_uniform()  # MAR, DiT and ViT initialise their linear layers so.
ZEROS = nn.initializers.zeros


def dense(cfg, features: int, axes: tuple[str | None, str | None], name: str, kernel_init=XAVIER) -> nn.Dense:
  """nn.Dense whose kernel is named `axes` and whose bias is named after the output axis."""
  return nn.Dense(
      features, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(ZEROS, (axes[1],)))


def layer_norm(cfg, name: str, affine: bool = True) -> nn.LayerNorm:
  # Statistics in float32: bfloat16 variances of small activations lose their low bits.
  return nn.LayerNorm(epsilon=cfg.norm_eps, use_scale=affine, use_bias=affine, dtype=jnp.dtype(cfg.dtype),
                      param_dtype=jnp.dtype(cfg.param_dtype), force_float32_reductions=True, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(ZEROS, ("norm",)))
