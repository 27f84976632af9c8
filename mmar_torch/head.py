"""MAR's diffusion head (mmar_jax/models/diffusion_head.py): AdaLN residual MLP blocks on (x_t, t, z)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
  """Sinusoidal [cos, sin] features of timesteps, float32 (bfloat16 cannot tell 998 from 999)."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
  args = t.float()[:, None] * freqs[None]
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
  def __init__(self, width: int, eps: float):
    super().__init__()
    self.adaLN_modulation = nn.Linear(width, 3 * width)
    self.in_ln = nn.LayerNorm(width, eps=eps)
    self.mlp_in, self.mlp_out = nn.Linear(width, width), nn.Linear(width, width)

  def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shift, scale, gate = self.adaLN_modulation(F.silu(y)).chunk(3, dim=-1)
    h = self.in_ln(x) * (1 + scale) + shift
    return x + gate * self.mlp_out(F.silu(self.mlp_in(h)))


class FinalLayer(nn.Module):
  def __init__(self, width: int, channels: int, eps: float):
    super().__init__()
    self.adaLN_modulation = nn.Linear(width, 2 * width)
    self.norm_final = nn.LayerNorm(width, eps=eps, elementwise_affine=False)
    self.linear = nn.Linear(width, channels)

  def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    shift, scale = self.adaLN_modulation(F.silu(y)).chunk(2, dim=-1)
    return self.linear(self.norm_final(x) * (1 + scale) + shift)


class DiffusionHead(nn.Module):
  """Predicts v (or eps, or x0, per mmar_config.json) for x_t [m, c] at timesteps t [m] given z [m, d]."""

  def __init__(self, depth: int, width: int, token_channels: int, frequency_dim: int, norm_eps: float,
               cond_width: int):
    super().__init__()
    self.frequency_dim = frequency_dim
    self.input_proj = nn.Linear(token_channels, width)
    self.time_mlp_in, self.time_mlp_out = nn.Linear(frequency_dim, width), nn.Linear(width, width)
    self.cond_embed = nn.Linear(cond_width, width)
    self.res_blocks = nn.ModuleList(ResBlock(width, norm_eps) for _ in range(depth))
    self.final_layer = FinalLayer(width, token_channels, norm_eps)

  def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    dtype = self.input_proj.weight.dtype
    x = self.input_proj(x_t.to(dtype))
    temb = self.time_mlp_out(F.silu(self.time_mlp_in(timestep_features(t, self.frequency_dim).to(dtype))))
    y = temb + self.cond_embed(z.to(dtype))
    for block in self.res_blocks:
      x = block(x, y)
    return self.final_layer(x, y)
