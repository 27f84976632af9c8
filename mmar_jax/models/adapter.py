"""The image input adapter: continuous image tokens -> backbone-width embeddings.

The paper names its parts (an "EmbeddingViT" then a "VisProjector") but not their sizes [paper];
here: a linear map from the token width, `depth` pre-norm transformer blocks attending
bidirectionally over one image's tokens, then a two-layer GELU MLP to the backbone width [ours].
`depth` 0 leaves just the linear map and the projector.

Tokens that are masked for generation must not leak into the visible ones through the adapter's
attention, so the adapter takes a `visible` mask: keys that are not visible are never attended
to, and their inputs are zeroed (their outputs are replaced by the `<mask>` embedding anyway).

No positional embedding is added here: the paper adds none to image tokens beyond the sequence's
own (the backbone's RoPE) [paper]; the adapter is therefore permutation-equivariant [ours].
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

_XAVIER = nn.initializers.xavier_uniform()  # ViT's initialiser [ours].
_ZEROS = nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """The adapter's narrow view of `config.model` and `config.tokenizer`."""

  token_dim: int
  depth: int
  width: int
  heads: int
  out_width: int  # The backbone's hidden_size.
  norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, config) -> AdapterConfig:
    from mmar_jax.models.tokenizers import image_token_dim  # Not at import: tokenizers pull in the VAE.
    m = config.model
    return cls(token_dim=image_token_dim(config), depth=m.adapter_depth, width=m.adapter_width,
               heads=m.adapter_heads, out_width=m.hidden_size, norm_eps=m.rms_norm_eps, dtype=m.dtype,
               param_dtype=m.param_dtype)


def _dense(cfg: AdapterConfig, features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
  return nn.Dense(features, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), name=name,
                  kernel_init=nn.with_logical_partitioning(_XAVIER, axes),
                  bias_init=nn.with_logical_partitioning(_ZEROS, (axes[1],)))


def _layer_norm(cfg: AdapterConfig, name: str) -> nn.LayerNorm:
  # Statistics in float32: bfloat16 variances of small activations lose their low bits.
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                      force_float32_reductions=True, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                      bias_init=nn.with_logical_partitioning(_ZEROS, ("norm",)))


class _HeadsProjection(nn.Module):
  """[b, n, d] -> [b, n, h, hd] with a kernel named ('embed', 'heads', 'head_dim')."""

  cfg: AdapterConfig

  @nn.compact
  def __call__(self, x: Float[Array, "b n d"]) -> Float[Array, "b n h e"]:
    cfg = self.cfg
    head_dim = cfg.width // cfg.heads
    return nn.DenseGeneral(
        (cfg.heads, head_dim), dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=nn.with_logical_partitioning(_XAVIER, ("embed", "heads", "head_dim")),
        bias_init=nn.with_logical_partitioning(_ZEROS, ("heads", "head_dim")), name="proj")(x)


class AdapterBlock(nn.Module):
  """Pre-norm transformer block: bidirectional attention over visible tokens, then a GELU MLP."""

  cfg: AdapterConfig

  @nn.compact
  def __call__(self, x: Float[Array, "b n d"], mask: Bool[Array, "b n n"]) -> Float[Array, "b n d"]:
    cfg = self.cfg
    h = _layer_norm(cfg, "attn_norm")(x)
    q, k, v = (_HeadsProjection(cfg, name=name)(h) for name in ("q_proj", "k_proj", "v_proj"))
    attn = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
    out = nn.DenseGeneral(
        cfg.width, axis=(-2, -1), dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=nn.with_logical_partitioning(_XAVIER, ("heads", "head_dim", "embed")),
        bias_init=nn.with_logical_partitioning(_ZEROS, ("embed",)), name="o_proj")(attn)
    x = x + out
    h = _layer_norm(cfg, "mlp_norm")(x)
    h = _dense(cfg, 4 * cfg.width, ("embed", "mlp"), "mlp_in")(h)  # ViT's 4x MLP ratio [ours].
    return x + _dense(cfg, cfg.width, ("mlp", "embed"), "mlp_out")(nn.gelu(h))


class ImageAdapter(nn.Module):
  """[b, n, token_dim] continuous tokens of one image each -> [b, n, out_width] embeddings."""

  cfg: AdapterConfig

  @nn.compact
  def __call__(self, tokens: Float[Array, "b n c"], visible: Bool[Array, "b n"] | None = None
               ) -> Float[Array, "b n d"]:
    cfg = self.cfg
    if visible is None:
      visible = jnp.ones(tokens.shape[:2], bool)
    # Hidden tokens contribute nothing: zero input, and no query attends to them.
    x = jnp.where(visible[..., None], tokens, 0).astype(jnp.dtype(cfg.dtype))
    x = _dense(cfg, cfg.width, (None, "embed"), "input_proj")(x)
    n = tokens.shape[1]
    # Each query keeps its own key, so a fully hidden image has no all-False row.
    mask = visible[:, None, :] | jnp.eye(n, dtype=bool)
    for i in range(cfg.depth):
      x = AdapterBlock(cfg, name=f"blocks_{i}")(x, mask)
    if cfg.depth:
      x = _layer_norm(cfg, "final_norm")(x)
    # The projector (LLaVA-style Linear-GELU-Linear, the paper's "VisProjector") [ours].
    x = _dense(cfg, cfg.out_width, ("embed", "mlp"), "projector_in")(x)
    return _dense(cfg, cfg.out_width, ("mlp", "embed"), "projector_out")(nn.gelu(x))
