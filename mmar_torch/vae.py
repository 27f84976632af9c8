"""The LDM KL autoencoder (MAR's KL-16; mmar_jax/models/kl_vae.py) in PyTorch, NCHW, MAR's state-dict keys.

`KLTokenizer` wraps it as mmar_jax's KLVAE tokenizer does: a token is latent_patch x
latent_patch latent positions (channels innermost) times scale_factor; encoding takes the
posterior's mean (its mode), as describe does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def _norm(channels: int, groups: int) -> nn.GroupNorm:
  return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
  def __init__(self, cin: int, cout: int, groups: int):
    super().__init__()
    self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
    self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
    self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

  def forward(self, x):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all positions, 1x1-conv projections, residual."""

  def __init__(self, c: int, groups: int):
    super().__init__()
    self.norm = _norm(c, groups)
    self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, x):
    b, c, h, w = x.shape
    n = self.norm(x)
    q, k, v = (m(n).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(x.dtype)  # float32 softmax
    return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class _Resample(nn.Module):
  def __init__(self, c: int, down: bool):
    super().__init__()
    self.down = down
    self.conv = nn.Conv2d(c, c, 3, stride=2) if down else nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    if self.down:  # One zero row and column at the bottom / right only, as LDM.
      return self.conv(F.pad(x, (0, 1, 0, 1)))
    return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
  def __init__(self, cin: int, cout: int, blocks: int, attention: bool, resample: str, groups: int):
    super().__init__()
    self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(blocks))
    self.attn = nn.ModuleList(AttnBlock(cout, groups) for _ in range(blocks if attention else 0))
    if resample == "down":
      self.downsample = _Resample(cout, down=True)
    elif resample == "up":
      self.upsample = _Resample(cout, down=False)

  def forward(self, x):
    for i, block in enumerate(self.block):
      x = block(x)
      if len(self.attn):
        x = self.attn[i](x)
    for name in ("downsample", "upsample"):
      if hasattr(self, name):
        x = getattr(self, name)(x)
    return x


class Mid(nn.Module):
  def __init__(self, c: int, groups: int):
    super().__init__()
    self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c, groups), AttnBlock(c, groups), ResnetBlock(c, c, groups)

  def forward(self, x):
    return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
  def __init__(self, channels, channel_mult, num_res_blocks, z_channels, norm_groups, encoder_attn_levels):
    super().__init__()
    widths = [channels] + [channels * m for m in channel_mult]
    last = len(channel_mult) - 1
    self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
    self.down = nn.ModuleList(Level(widths[i], widths[i + 1], num_res_blocks, i in encoder_attn_levels,
                                    "down" if i < last else "", norm_groups) for i in range(len(channel_mult)))
    self.mid = Mid(widths[-1], norm_groups)
    self.norm_out, self.conv_out = _norm(widths[-1], norm_groups), nn.Conv2d(widths[-1], 2 * z_channels, 3, padding=1)

  def forward(self, x):
    h = self.conv_in(x)
    for level in self.down:
      h = level(h)
    return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
  def __init__(self, channels, channel_mult, num_res_blocks, z_channels, norm_groups):
    super().__init__()
    top = channels * channel_mult[-1]
    self.conv_in = nn.Conv2d(z_channels, top, 3, padding=1)
    self.mid = Mid(top, norm_groups)
    ins = [channels * m for m in channel_mult[1:]] + [top]  # Level i reads level i+1's output.
    self.up = nn.ModuleList(Level(ins[i], channels * channel_mult[i], num_res_blocks + 1, False,
                                  "up" if i > 0 else "", norm_groups) for i in range(len(channel_mult)))
    bottom = channels * channel_mult[0]
    self.norm_out, self.conv_out = _norm(bottom, norm_groups), nn.Conv2d(bottom, 3, 3, padding=1)

  def forward(self, z):
    h = self.mid(self.conv_in(z))
    for level in reversed(self.up):  # up[i] is the level at 1/2**i resolution, run deepest first.
      h = level(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
  """encoder + quant_conv -> moments [mean | logvar]; post_quant_conv + decoder -> pixels (NCHW)."""

  def __init__(self, channels, channel_mult, num_res_blocks, z_channels, norm_groups, encoder_attn_levels, **_):
    super().__init__()
    self.encoder = Encoder(channels, channel_mult, num_res_blocks, z_channels, norm_groups, encoder_attn_levels)
    self.decoder = Decoder(channels, channel_mult, num_res_blocks, z_channels, norm_groups)
    self.quant_conv = nn.Conv2d(2 * z_channels, 2 * z_channels, 1)
    self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
    self.downsample = 2 ** (len(channel_mult) - 1)

  @property
  def conv_dtype(self) -> torch.dtype:
    return self.post_quant_conv.weight.dtype

  def moments(self, pixels: torch.Tensor) -> torch.Tensor:
    return self.quant_conv(self.encoder(pixels)).float()

  def decode(self, latents: torch.Tensor) -> torch.Tensor:
    return self.decoder(self.post_quant_conv(latents)).float()


class KLTokenizer:
  """NHWC pixels in [-1, 1] <-> tokens [b, n, latent_patch^2 * z], as mmar_jax's KLVAE."""

  def __init__(self, vae: AutoencoderKL, image_size: int, latent_patch: int, scale_factor: float, **_):
    self.vae, self.latent_patch, self.scale_factor = vae, latent_patch, scale_factor
    self.grid = image_size // vae.downsample // latent_patch

  @torch.no_grad()
  def encode(self, pixels: torch.Tensor) -> torch.Tensor:
    dtype = self.vae.conv_dtype
    pixels = pixels.to(self.vae.post_quant_conv.weight.device, dtype)
    mean, _ = self.vae.moments(pixels.permute(0, 3, 1, 2)).chunk(2, dim=1)
    latents = mean.permute(0, 2, 3, 1) * self.scale_factor  # [b, hz, wz, z]
    b, p, g = latents.shape[0], self.latent_patch, self.grid
    return latents.reshape(b, g, p, g, p, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)

  @torch.no_grad()
  def decode(self, tokens: torch.Tensor) -> torch.Tensor:
    b, p, g = tokens.shape[0], self.latent_patch, self.grid
    latents = (tokens / self.scale_factor).reshape(b, g, g, p, p, -1).permute(0, 1, 3, 2, 4, 5)
    latents = latents.reshape(b, g * p, g * p, -1).permute(0, 3, 1, 2)
    return self.vae.decode(latents.to(self.vae.post_quant_conv.weight.device, self.vae.conv_dtype)).permute(0, 2, 3, 1)

