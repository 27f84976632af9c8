"""The image input adapter (mmar_jax/models/adapter.py): tokens -> backbone-width embeddings.

A linear map, `depth` pre-norm transformer blocks attending over one image's visible tokens,
then a Linear-GELU-Linear projector. flax's `nn.gelu` is the tanh approximation, so is ours.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _gelu(x: torch.Tensor) -> torch.Tensor:
  return F.gelu(x, approximate="tanh")


class AdapterBlock(nn.Module):
  def __init__(self, width: int, heads: int, eps: float):
    super().__init__()
    self.heads = heads
    self.attn_norm, self.mlp_norm = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
    self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(width, width) for _ in range(4))
    self.mlp_in, self.mlp_out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [b, n, d]; mask [b, n, n] bool, True where a query may see a key."""
    b, n, d = x.shape
    h = self.attn_norm(x)
    q, k, v = (p(h).view(b, n, self.heads, d // self.heads).transpose(1, 2) for p in (self.q_proj, self.k_proj,
                                                                                     self.v_proj))
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    x = x + self.o_proj(attn.transpose(1, 2).reshape(b, n, d))
    return x + self.mlp_out(_gelu(self.mlp_in(self.mlp_norm(x))))


class ImageAdapter(nn.Module):
  def __init__(self, token_dim: int, depth: int, width: int, heads: int, out_width: int, norm_eps: float, **_):
    super().__init__()
    self.input_proj = nn.Linear(token_dim, width)
    self.blocks = nn.ModuleList(AdapterBlock(width, heads, norm_eps) for _ in range(depth))
    self.final_norm = nn.LayerNorm(width, eps=norm_eps) if depth else None
    self.projector_in, self.projector_out = nn.Linear(width, out_width), nn.Linear(out_width, out_width)

  def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """tokens [b, n, c], visible [b, n] bool -> [b, n, out_width]. Hidden tokens contribute nothing."""
    x = self.input_proj(torch.where(visible[..., None], tokens, 0).to(self.input_proj.weight.dtype))
    n = tokens.shape[1]
    mask = visible[:, None, :] | torch.eye(n, dtype=torch.bool, device=tokens.device)
    for block in self.blocks:
      x = block(x, mask)
    if self.final_norm is not None:
      x = self.final_norm(x)
    return self.projector_out(_gelu(self.projector_in(x)))
