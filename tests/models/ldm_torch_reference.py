"""An independent PyTorch LDM KL autoencoder (NCHW) with MAR's state-dict keys, for tests only.

Written from the architecture's description, not from our Flax code: it makes checkpoints in
MAR's key layout and is a second reference beside diffusers' AutoencoderKL.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _gn(c, groups):
  return nn.GroupNorm(groups, c, eps=1e-6)


class Res(nn.Module):
  def __init__(self, cin, cout, groups):
    super().__init__()
    self.norm1, self.conv1 = _gn(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
    self.norm2, self.conv2 = _gn(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
    if cin != cout:
      self.nin_shortcut = nn.Conv2d(cin, cout, 1)

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
  def __init__(self, c, groups):
    super().__init__()
    self.norm = _gn(c, groups)
    self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, x):
    b, c, h, w = x.shape
    n = self.norm(x)
    q, k, v = (m(n).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # b, hw, c
    out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
    return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Level(nn.Module):
  def __init__(self, cin, cout, blocks, attention, resample, groups):
    super().__init__()
    self.block = nn.ModuleList(Res(cin if i == 0 else cout, cout, groups) for i in range(blocks))
    self.attn = nn.ModuleList(Attn(cout, groups) for _ in range(blocks if attention else 0))
    if resample == "down":
      self.downsample = nn.Module()
      self.downsample.conv = nn.Conv2d(cout, cout, 3, stride=2)
    elif resample == "up":
      self.upsample = nn.Module()
      self.upsample.conv = nn.Conv2d(cout, cout, 3, padding=1)

  def forward(self, x):
    for i, block in enumerate(self.block):
      x = block(x)
      if len(self.attn):
        x = self.attn[i](x)
    if hasattr(self, "downsample"):
      x = self.downsample.conv(F.pad(x, (0, 1, 0, 1)))
    if hasattr(self, "upsample"):
      x = self.upsample.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    return x


class Mid(nn.Module):
  def __init__(self, c, groups):
    super().__init__()
    self.block_1, self.attn_1, self.block_2 = Res(c, c, groups), Attn(c, groups), Res(c, c, groups)

  def forward(self, x):
    return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
  def __init__(self, ch, mult, blocks, z, groups, attn_levels):
    super().__init__()
    self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
    chans = [ch] + [ch * m for m in mult]
    self.down = nn.ModuleList(
        Level(chans[i], chans[i + 1], blocks, i in attn_levels, "down" if i < len(mult) - 1 else "", groups)
        for i in range(len(mult)))
    self.mid = Mid(chans[-1], groups)
    self.norm_out, self.conv_out = _gn(chans[-1], groups), nn.Conv2d(chans[-1], 2 * z, 3, padding=1)

  def forward(self, x):
    h = self.conv_in(x)
    for level in self.down:
      h = level(h)
    return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
  def __init__(self, ch, mult, blocks, z, groups):
    super().__init__()
    top = ch * mult[-1]
    self.conv_in = nn.Conv2d(z, top, 3, padding=1)
    self.mid = Mid(top, groups)
    ins = [ch * m for m in mult[1:]] + [top]  # Level i's input width: level i+1's output (or the top).
    self.up = nn.ModuleList(
        Level(ins[i], ch * mult[i], blocks + 1, False, "up" if i > 0 else "", groups) for i in range(len(mult)))
    self.norm_out, self.conv_out = _gn(ch * mult[0], groups), nn.Conv2d(ch * mult[0], 3, 3, padding=1)

  def forward(self, z):
    h = self.mid(self.conv_in(z))
    for level in reversed(self.up):
      h = level(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
  """MAR's key layout: encoder.*, decoder.*, quant_conv.*, post_quant_conv.*."""

  def __init__(self, ch=128, mult=(1, 1, 2, 2, 4), blocks=2, z=16, groups=32, attn_levels=(4,)):
    super().__init__()
    self.encoder = Encoder(ch, mult, blocks, z, groups, attn_levels)
    self.decoder = Decoder(ch, mult, blocks, z, groups)
    self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
    self.post_quant_conv = nn.Conv2d(z, z, 1)

  def moments(self, x):
    return self.quant_conv(self.encoder(x))

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z))


def randomize_(model: nn.Module, seed: int) -> nn.Module:
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
