"""Analytic FLOPs of the backbone, the image adapter and the diffusion head: what MFU is computed from.

Convention (PaLM, Chowdhery et al. 2022, appendix B): a multiply-add is 2 FLOPs; matmul FLOPs
per token are 2 x (parameters used in matmuls, the LM head included, the embedding lookup
excluded); attention adds 2 x 2 x layers x seq_len x (heads x head_dim) per token for QK^T and
AV over the *full* seq_len x seq_len score matrix. A causal mask could halve the attention term,
but the dense attention kernels compute it whole, so the full count is what the hardware does;
`causal_halved=True` gives the other common convention. Training = 3 x forward (backward
is twice the forward). Norms, softmax and RoPE are not counted.

The adapter and the head follow the same convention: 2 x matmul parameters per image token for
the adapter (plus its bidirectional attention over one image's n tokens), and 2 x matmul
parameters per head row for the head, which runs `diffusion_batch_mul` rows for *every* image
token of the row, masked or not (MAR computes the head so too and masks the loss afterwards).
Biases, LayerNorms, AdaLN's modulate and the sinusoidal features are not counted.
"""

from __future__ import annotations

import dataclasses

from mmar_jax.models.adapter import AdapterConfig
from mmar_jax.models.backbone import BackboneConfig
from mmar_jax.models.diffusion_head import HeadConfig


@dataclasses.dataclass(frozen=True)
class FlopsPerToken:
  matmul: float
  attention: float

  @property
  def forward(self) -> float:
    return self.matmul + self.attention

  @property
  def training(self) -> float:
    return 3 * self.forward


def matmul_params(cfg: BackboneConfig) -> int:
  """Parameters that take part in a matmul for every token (the LM head counts even when tied)."""
  d, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  attention = d * q + 2 * d * kv + q * d
  mlp = 3 * d * cfg.intermediate_size
  return cfg.num_layers * (attention + mlp) + d * cfg.vocab_size


def backbone_flops_per_token(cfg: BackboneConfig, seq_len: int, *, causal_halved: bool = False) -> FlopsPerToken:
  attention = 4 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  return FlopsPerToken(matmul=2 * matmul_params(cfg), attention=attention / 2 if causal_halved else attention)


def lm_head_params(cfg: BackboneConfig) -> int:
  """The LM head's share of `matmul_params` (d x vocab, counted even when tied)."""
  return cfg.hidden_size * cfg.vocab_size


def adapter_matmul_params(cfg: AdapterConfig) -> int:
  """Input map, `depth` blocks (q, k, v, o and a 4x GELU MLP), the two-layer projector."""
  w, d = cfg.width, cfg.out_width
  return cfg.token_dim * w + cfg.depth * (4 * w * w + 2 * 4 * w * w) + w * d + d * d


def adapter_flops_per_token(cfg: AdapterConfig, num_tokens: int) -> FlopsPerToken:
  """Per image token; attention over the image's `num_tokens` tokens, the full n x n scores."""
  return FlopsPerToken(matmul=2 * adapter_matmul_params(cfg), attention=4 * cfg.depth * num_tokens * cfg.width)


def head_matmul_params(cfg: HeadConfig, z_dim: int) -> int:
  """Per head row: input map, timestep MLP, z's map, `depth` AdaLN blocks, the final layer."""
  w, c = cfg.width, cfg.token_channels
  return (c * w + cfg.frequency_dim * w + w * w + z_dim * w + cfg.depth * (3 * w * w + 2 * w * w)
          + 2 * w * w + w * c)


def head_flops_per_token(cfg: HeadConfig, z_dim: int, batch_mul: int) -> FlopsPerToken:
  """Per image token: `batch_mul` head rows of 2 x matmul parameters each; no attention."""
  return FlopsPerToken(matmul=2 * batch_mul * head_matmul_params(cfg, z_dim), attention=0.0)
