"""Analytic FLOPs of the backbone, the image adapter and the diffusion head: what MFU is computed from.

The count is of the matmuls the train step runs, so that it agrees with XLA's count of the
compiled step (benchmarks/flops.py, tests/train/test_flops.py):
- A matmul [m, k] x [k, n] is 2 m n k FLOPs (a multiply-add is 2; PaLM, Chowdhery et al. 2022,
  appendix B). Per token, a projection of P weights is 2 P; the LM head counts (even when tied),
  the embedding lookup does not.
- LoRA (models/lora.py) adds its two small matmuls per adapted projection, x A and (x A) B:
  2 r (in + out) per token.
- Attention adds QK^T and AV over the *full* seq_len x seq_len score matrix, 2 x 2 x layers x
  seq_len x (heads x head_dim) per token: the dense kernels compute it whole, so that is what the
  hardware does; `causal_halved=True` gives the other common convention.
- Backward: every matmul's activation gradient (as many FLOPs as its forward) and, only for
  *trainable* weights, its weight gradient (as many again). Full fine-tuning is so 3 x forward;
  with LoRA on the backbone's base kernels are frozen (models/lora.py's `trainable_mask`; the
  step stops their gradients) and skip their weight gradients, the LoRA factors, the embedding
  (so the tied LM head), the adapter and the head do not. The scores have no weights: 3 x.
- Not counted: norms, softmax, RoPE, activations, biases, AdaLN's modulate, the sinusoidal
  features, the optimizer update. They are a few per cent at the demo's tiny widths, well under
  one at 0.5B and 7B.

The adapter: 2 x matmul parameters per image token (plus its bidirectional attention over one
image's n tokens). The head: 2 x matmul parameters per head row, `diffusion_batch_mul` rows for
every image token the head runs on.
"""

from __future__ import annotations

import dataclasses

from mmar_jax.models.adapter import AdapterConfig
from mmar_jax.models.backbone import BackboneConfig
from mmar_jax.models.diffusion_head import HeadConfig


@dataclasses.dataclass(frozen=True)
class FlopsPerToken:
  matmul: float  # Forward matmuls with weights, LoRA's included.
  attention: float  # Forward score matmuls (QK^T and AV).
  frozen_matmul: float = 0.0  # The part of `matmul` whose weights are frozen: no weight gradient.

  @property
  def forward(self) -> float:
    return self.matmul + self.attention

  @property
  def training(self) -> float:
    """Forward + activation gradients (1 x forward) + weight gradients of trainable weights."""
    return 3 * self.forward - self.frozen_matmul


def _projections(cfg: BackboneConfig) -> dict[str, tuple[int, int]]:
  """(in, out) of each of a layer's projections, by LoRA target name."""
  d, q, kv, i = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
  return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, i), "up": (d, i), "down": (i, d)}


def layer_kernel_params(cfg: BackboneConfig) -> int:
  """The base kernels of every layer (frozen with LoRA on)."""
  return cfg.num_layers * sum(i * o for i, o in _projections(cfg).values())


def lora_params(cfg: BackboneConfig) -> int:
  """LoRA's factors A [in, r] and B [r, out] on every adapted projection of every layer."""
  return cfg.num_layers * sum(cfg.lora_rank_of(t) * (i + o) for t, (i, o) in _projections(cfg).items())


def matmul_params(cfg: BackboneConfig) -> int:
  """Parameters that take part in a matmul for every token (the LM head counts even when tied)."""
  return layer_kernel_params(cfg) + lora_params(cfg) + lm_head_params(cfg)


def backbone_flops_per_token(cfg: BackboneConfig, seq_len: int, *, causal_halved: bool = False) -> FlopsPerToken:
  attention = 4 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
  frozen = 2 * layer_kernel_params(cfg) if cfg.lora_rank else 0
  return FlopsPerToken(matmul=2 * matmul_params(cfg), attention=attention / 2 if causal_halved else attention,
                       frozen_matmul=frozen)


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
