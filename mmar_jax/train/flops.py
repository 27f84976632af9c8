"""Analytic FLOPs of the backbone, the numbers that MFU is computed from.

Convention (PaLM, Chowdhery et al. 2022, appendix B): a multiply-add is 2 FLOPs; matmul FLOPs
per token are 2 x (parameters used in matmuls, the LM head included, the embedding lookup
excluded); attention adds 2 x 2 x layers x seq_len x (heads x head_dim) per token for QK^T and
AV over the *full* seq_len x seq_len score matrix. A causal mask could halve the attention term,
but the dense attention kernels compute it whole, so the full count is what the hardware does;
`causal_halved=True` gives the other common convention. Training = 3 x forward (backward
is twice the forward). Norms, softmax and RoPE are not counted.
"""

from __future__ import annotations

import dataclasses

from mmar_jax.models.backbone import BackboneConfig


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
