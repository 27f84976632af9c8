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
from jaxtyping import Array, ArrayLike, Bool, Float

from mmar_jax import configs
from mmar_jax.models.layers import XAVIER, ZEROS, dense, layer_norm

@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """The adapter's narrow view of `config.model` and `config.tokenizer`."""

  token_dim: int
  depth: int
  width: int
  heads: int
  out_width: int  # The backbone's hidden_size.
  norm_eps: float
  dtype: str
  param_dtype: str
  remat: bool  # Recompute each block's activations in the backward pass.

  @classmethod
  def from_config(cls, config) -> AdapterConfig:
    m = config.model
    return cls(token_dim=configs.image_token_dim(config), depth=m.adapter_depth, width=m.adapter_width,
               heads=m.adapter_heads, out_width=m.hidden_size, norm_eps=m.rms_norm_eps, dtype=m.dtype,
               param_dtype=m.param_dtype, remat=m.adapter_remat)


class _HeadsProjection(nn.Module):
  """[b, n, d] <-> [b, n, h, e] with a kernel named ('embed', 'heads', 'head_dim') and a bias.

  An explicit kernel and einsum, as the backbone's projections: nn.DenseGeneral flattens its
  kernel to 2-D internally and fails under a mesh with three logical axis names.
  """

  cfg: AdapterConfig
  to_heads: bool  # True: [b, n, d] -> [b, n, h, e]; False: [b, n, h, e] -> [b, n, d].

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b n d"] | Float[ArrayLike, "b n h e"]
               ) -> Float[Array, "b n h e"] | Float[Array, "b n d"]:
    cfg = self.cfg
    dtype, shape = jnp.dtype(cfg.dtype), (cfg.width, cfg.heads, cfg.width // cfg.heads)
    kernel = self.param("kernel", nn.with_logical_partitioning(XAVIER, ("embed", "heads", "head_dim")), shape,
                        jnp.dtype(cfg.param_dtype))
    bias_axes = ("heads", "head_dim") if self.to_heads else ("embed",)
    bias_shape = shape[1:] if self.to_heads else shape[:1]
    bias = self.param("bias", nn.with_logical_partitioning(ZEROS, bias_axes), bias_shape, jnp.dtype(cfg.param_dtype))
    equation = "bnd,dhe->bnhe" if self.to_heads else "bnhe,dhe->bnd"
    return jnp.einsum(equation, x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class AdapterBlock(nn.Module):
  """Pre-norm transformer block: bidirectional attention over visible tokens, then a GELU MLP."""

  cfg: AdapterConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b n d"], mask: Bool[ArrayLike, "b n n"]) -> Float[Array, "b n d"]:
    cfg = self.cfg
    h = layer_norm(cfg, "attn_norm")(x)
    q, k, v = (_HeadsProjection(cfg, True, name=name)(h) for name in ("q_proj", "k_proj", "v_proj"))
    attn = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
    x = x + _HeadsProjection(cfg, False, name="o_proj")(attn)
    h = layer_norm(cfg, "mlp_norm")(x)
    h = dense(cfg, 4 * cfg.width, ("embed", "mlp"), "mlp_in")(h)  # ViT's 4x MLP ratio [ours].
    return x + dense(cfg, cfg.width, ("mlp", "embed"), "mlp_out")(nn.gelu(h))


class ImageAdapter(nn.Module):
  """[b, n, token_dim] continuous tokens of one image each -> [b, n, out_width] embeddings."""

  cfg: AdapterConfig

  @nn.compact
  def __call__(self, tokens: Float[ArrayLike, "b n c"], visible: Bool[ArrayLike, "b n"] | None = None
               ) -> Float[Array, "b n d"]:
    cfg = self.cfg
    if visible is None:
      visible = jnp.ones(tokens.shape[:2], bool)
    # Hidden tokens contribute nothing: zero input, and no query attends to them.
    x = jnp.where(visible[..., None], tokens, 0).astype(jnp.dtype(cfg.dtype))
    x = dense(cfg, cfg.width, (None, "embed"), "input_proj")(x)
    n = tokens.shape[1]
    # Each query keeps its own key, so a fully hidden image has no all-False row.
    mask = visible[:, None, :] | jnp.eye(n, dtype=bool)
    block = nn.remat(AdapterBlock) if cfg.remat else AdapterBlock
    for i in range(cfg.depth):
      x = block(cfg, name=f"blocks_{i}")(x, mask)
    if cfg.depth:
      x = layer_norm(cfg, "final_norm")(x)
    # The projector (LLaVA-style Linear-GELU-Linear, the paper's "VisProjector") [ours].
    x = dense(cfg, cfg.out_width, ("embed", "mlp"), "projector_in")(x)
    return dense(cfg, cfg.out_width, ("mlp", "embed"), "projector_out")(nn.gelu(x))
