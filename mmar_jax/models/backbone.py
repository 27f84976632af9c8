"""Qwen2-style decoder: RMSNorm, RoPE, grouped-query attention with q/k/v bias, SwiGLU MLP.

Parameter names mirror Hugging Face's Qwen2 (`embed_tokens`, `layers.self_attn.q_proj`, ...) so
that `convert/hf_qwen2.py` is a table of transposes. Every parameter carries logical axis names
and the main activations carry logical constraints; `train/sharding.py` maps them to the mesh.

The KV cache is an explicit pytree (`KVCache`) passed in and returned, not a mutable flax
collection: the caller decides its length, and the decode step stays a pure function.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from mmar_jax import configs
from mmar_jax.models import chunked_ce, lora, masks

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
  """The backbone's narrow view of `config.model` (every default lives in the schema, configs/schema.py)."""

  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  rms_norm_eps: float
  tie_word_embeddings: bool
  max_seq_len: int
  init_std: float
  dtype: str
  param_dtype: str
  scan_layers: bool
  remat_policy: str
  attention_impl: str
  # LoRA (config.model.lora): rank 0 = none, full fine-tuning.
  lora_rank: int
  lora_alpha: float
  lora_targets: tuple[str, ...]  # Of configs.LORA_TARGETS: q, k, v, o, gate, up, down.

  @classmethod
  def from_config(cls, config) -> BackboneConfig:
    m = config.model
    names = {f.name for f in dataclasses.fields(cls)} - {"head_dim", "lora_rank", "lora_alpha", "lora_targets"}
    return cls(head_dim=configs.head_dim(m), lora_rank=m.lora.rank, lora_alpha=float(m.lora.alpha),
               lora_targets=tuple(m.lora.targets), **{k: m[k] for k in names})

  def lora_rank_of(self, target: str) -> int:
    """The LoRA rank of projection `target` ('q', ..., 'down'): 0 where LoRA is off."""
    return self.lora_rank if target in self.lora_targets else 0

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self):
    return jnp.dtype(self.param_dtype)


# One layer's (keys, values) [b, s, k, e] inside the scan over layers.
LayerCache = tuple[Float[Array, "b s k e"], Float[Array, "b s k e"]]


@flax.struct.dataclass
@typing.no_type_check  # flax rebuilds it through __init__ from ShapeDtypeStructs (eval_shape): unchecked.
class KVCache:
  """Keys and values of every layer for `s` slots, which slots hold real tokens, and the fill."""

  key: Float[Array, "layers b s k e"]
  value: Float[Array, "layers b s k e"]
  valid: Bool[Array, "b s"]
  index: Int[Array, ""]

  AXES = ("layers", "batch", "length", "activation_kv_heads", "activation_head_dim")

  @classmethod
  def zeros(cls, cfg: BackboneConfig, batch: int, length: int) -> KVCache:
    """An empty cache, born sharded as the rule table shards keys and values (batch over the data
    axes, kv heads over tensor) when built under a mesh, so decoding never gathers it (gemma's
    `init_cache(sharding=...)`); outside a mesh the constraint does nothing."""
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    kv = lambda: nn.with_logical_constraint(jnp.zeros(shape, cfg.compute_dtype), cls.AXES)  # noqa: E731
    return cls(key=kv(), value=kv(), valid=nn.with_logical_constraint(jnp.zeros((batch, length), bool),
                                                                      ("batch", "length")),
               index=jnp.zeros((), jnp.int32))


@flax.struct.dataclass
@typing.no_type_check  # flax rebuilds it through __init__ from ShapeDtypeStructs (eval_shape): unchecked.
class BackboneOutput:
  logits: Float[Array, "b l v"] | None
  hidden: Float[Array, "b l d"]  # After the final norm: what the LM head and the diffusion head read.
  kv_cache: KVCache | None


def _normal(cfg: BackboneConfig, axes: tuple[str, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(cfg.init_std), axes)


class RMSNorm(nn.Module):
  cfg: BackboneConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "... d"]) -> Float[Array, "... d"]:
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (x.shape[-1],), self.cfg.weight_dtype)
    # Statistics in float32: a bfloat16 mean of squares loses small activations.
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    return normed.astype(self.cfg.compute_dtype) * scale.astype(self.cfg.compute_dtype)


def rotary_embedding(x: Float[ArrayLike, "b l h e"], positions: Int[ArrayLike, "b l"], theta: float
                     ) -> Float[Array, "b l h e"]:
  """Rotates channel pairs (i, i + e/2) by position * theta^(-2i/e), as Qwen2/Llama do (`h`: the
  query heads or the key / value heads, whichever `x` holds; `e`: the per-head width)."""
  half = x.shape[-1] // 2
  # float32: positions up to 32k times frequencies need more than bfloat16's 8 mantissa bits.
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
  angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _with_lora(module: nn.Module, cfg: BackboneConfig, target: str, x, y, in_axes, out_axes):
  """y plus the LoRA update of projection `target` when config.model.lora adapts it."""
  rank = cfg.lora_rank_of(target)
  if not rank:
    return y
  return y + lora.lora_delta(module, x, rank=rank, alpha=cfg.lora_alpha, in_axes=in_axes,
                             out_shape=y.shape[x.ndim - len(in_axes):], out_axes=out_axes,
                             dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)


class HeadProjection(nn.Module):
  """[b, l, d] -> [b, l, h, e]: a kernel [d, h, e] so heads shard on their own logical axis."""

  cfg: BackboneConfig
  num_heads: int
  heads_axis: str
  target: str  # Its name in config.model.lora.targets: 'q', 'k' or 'v'.

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b l d"]) -> Float[Array, "b l h e"]:
    cfg = self.cfg
    kernel = self.param("kernel", _normal(cfg, ("embed", self.heads_axis, "head_dim")),
                        (x.shape[-1], self.num_heads, cfg.head_dim), cfg.weight_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.heads_axis, "head_dim")),
                      (self.num_heads, cfg.head_dim), cfg.weight_dtype)
    y = jnp.einsum("bld,dhe->blhe", x.astype(cfg.compute_dtype), kernel.astype(cfg.compute_dtype))
    y = _with_lora(self, cfg, self.target, x, y, ("embed",), (self.heads_axis, "head_dim"))
    return y + bias.astype(cfg.compute_dtype)


class OutputProjection(nn.Module):
  """[b, l, h, e] -> [b, l, d], no bias (Qwen2's o_proj)."""

  cfg: BackboneConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b l h e"]) -> Float[Array, "b l d"]:
    cfg = self.cfg
    kernel = self.param("kernel", _normal(cfg, ("heads", "head_dim", "embed")),
                        (cfg.num_heads, cfg.head_dim, cfg.hidden_size), cfg.weight_dtype)
    y = jnp.einsum("blhe,hed->bld", x, kernel.astype(cfg.compute_dtype))
    return _with_lora(self, cfg, "o", x, y, ("heads", "head_dim"), ("embed",))


class Linear(nn.Module):
  """[..., in] -> [..., out] without bias (the MLP's projections), with optional LoRA.

  An explicit kernel (named like nn.Dense's, so checkpoints and the HF conversion are unchanged)
  so that the LoRA factors can sit beside it.
  """

  cfg: BackboneConfig
  features: int
  axes: tuple[str, str]
  target: str  # Its name in config.model.lora.targets: 'gate', 'up' or 'down'.

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "... i"]) -> Float[Array, "... o"]:
    cfg = self.cfg
    kernel = self.param("kernel", _normal(cfg, self.axes), (x.shape[-1], self.features), cfg.weight_dtype)
    x = x.astype(cfg.compute_dtype)
    y = jnp.einsum("...i,io->...o", x, kernel.astype(cfg.compute_dtype))
    return _with_lora(self, cfg, self.target, x, y, self.axes[:1], self.axes[1:])


def attention_implementation(cfg: BackboneConfig, decoding: bool) -> str:
  """The fused cuDNN kernel on GPUs for 16-bit full-sequence attention, XLA's otherwise.

  jax's own default (None) is always XLA. One-token decode steps stay on XLA: there is no
  score matrix worth fusing.
  """
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  fused = jax.default_backend() == "gpu" and cfg.compute_dtype in (jnp.bfloat16, jnp.float16) and not decoding
  return "cudnn" if fused else "xla"


class Attention(nn.Module):
  cfg: BackboneConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b l d"], positions: Int[ArrayLike, "b l"], mask: Bool[ArrayLike, "b l s"],
               layer_cache: LayerCache | None, cache_index: Int[ArrayLike, ""] | int
               ) -> tuple[Float[Array, "b l d"], LayerCache | None]:
    """Self-attention of `x` (over the cache's `s` slots, `x` written at `cache_index`, when decoding)."""
    cfg = self.cfg
    q = HeadProjection(cfg, cfg.num_heads, "heads", "q", name="q_proj")(x)
    k = HeadProjection(cfg, cfg.num_kv_heads, "kv_heads", "k", name="k_proj")(x)
    v = HeadProjection(cfg, cfg.num_kv_heads, "kv_heads", "v", name="v_proj")(x)
    q = nn.with_logical_constraint(rotary_embedding(q, positions, cfg.rope_theta),
                                   ("batch", "length", "activation_heads", "activation_head_dim"))
    k = nn.with_logical_constraint(rotary_embedding(k, positions, cfg.rope_theta),
                                   ("batch", "length", "activation_kv_heads", "activation_head_dim"))
    v = nn.with_logical_constraint(v, ("batch", "length", "activation_kv_heads", "activation_head_dim"))
    if layer_cache is not None:
      cached_k, cached_v = layer_cache
      k = jax.lax.dynamic_update_slice(cached_k, k.astype(cached_k.dtype), (0, cache_index, 0, 0))
      v = jax.lax.dynamic_update_slice(cached_v, v.astype(cached_v.dtype), (0, cache_index, 0, 0))
      layer_cache = (k, v)
    # GQA is native here: query heads h attend to key heads k = h / group.
    out = jax.nn.dot_product_attention(
        q, k.astype(q.dtype), v.astype(q.dtype), mask=mask[:, None],
        implementation=attention_implementation(cfg, decoding=layer_cache is not None))
    out = nn.with_logical_constraint(out, ("batch", "length", "activation_heads", "activation_head_dim"))
    return OutputProjection(cfg, name="o_proj")(out), layer_cache


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  cfg: BackboneConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b l d"]) -> Float[Array, "b l d"]:
    cfg = self.cfg
    gate = Linear(cfg, cfg.intermediate_size, ("embed", "mlp"), "gate", name="gate_proj")(x)
    up = Linear(cfg, cfg.intermediate_size, ("embed", "mlp"), "up", name="up_proj")(x)
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "activation_mlp"))
    return Linear(cfg, cfg.hidden_size, ("mlp", "embed"), "down", name="down_proj")(hidden)


class DecoderLayer(nn.Module):
  """Pre-norm block; returns (carry, per-layer output) so nn.scan can stack it."""

  cfg: BackboneConfig

  @nn.compact
  def __call__(self, x: Float[ArrayLike, "b l d"], layer_cache: LayerCache | None, positions: Int[ArrayLike, "b l"],
               mask: Bool[ArrayLike, "b l s"], cache_index: Int[ArrayLike, ""] | int
               ) -> tuple[Float[Array, "b l d"], LayerCache | None]:
    cfg = self.cfg
    attn_out, layer_cache = Attention(cfg, name="self_attn")(
        RMSNorm(cfg, name="input_layernorm")(x), positions, mask, layer_cache, cache_index)
    x = x + attn_out
    x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, name="post_attention_layernorm")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "activation_embed")), layer_cache


class Backbone(nn.Module):
  """The Qwen2 decoder. Call with token ids or with embeddings (the unified model's path)."""

  cfg: BackboneConfig

  def setup(self):
    cfg = self.cfg
    self.embed_tokens = self.param("embed_tokens", _normal(cfg, ("vocab", "embed")),
                                   (cfg.vocab_size, cfg.hidden_size), cfg.weight_dtype)
    layer = DecoderLayer
    if cfg.remat_policy != "none":
      layer = nn.remat(layer, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      self.layers = nn.scan(
          layer, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="layers")
    else:
      self.layers = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = self.param("lm_head", _normal(cfg, ("embed", "vocab")),
                                (cfg.hidden_size, cfg.vocab_size), cfg.weight_dtype)

  def embed(self, input_ids: Int[ArrayLike, "b l"]) -> Float[Array, "b l d"]:
    # Gather the embed axis first (as FSDP does for every weight): a lookup into a table split
    # along both axes makes XLA replicate the whole table instead.
    table = nn.with_logical_constraint(self.embed_tokens, ("vocab", None))
    x = jnp.take(table, input_ids, axis=0).astype(self.cfg.compute_dtype)
    return nn.with_logical_constraint(x, ("batch", "length", "activation_embed"))

  def head_kernel(self) -> Float[ArrayLike, "..."]:  # numpy params outside jit give numpy
    """The LM head's weight: the embedding table [V, d] when tied, else lm_head [d, V]."""
    return self.embed_tokens if self.cfg.tie_word_embeddings else self.lm_head

  def logits(self, hidden: Float[ArrayLike, "b l d"]) -> Float[Array, "b l v"]:
    """LM-head logits in float32: the log-softmax of the loss needs them there."""
    return chunked_ce.head_logits(hidden, self.head_kernel(), tied=self.cfg.tie_word_embeddings,
                                  dtype=self.cfg.compute_dtype)

  def text_nll_sum(self, hidden: Float[ArrayLike, "b l d"], targets: Int[ArrayLike, "b l"],
                   weights: Float[ArrayLike, "b l"], chunk_size: int) -> Float[Array, ""]:
    """sum(nll * weights) of `targets` under the LM head; `chunk_size` > 0 never holds all logits."""
    return chunked_ce.nll_sum(hidden, self.head_kernel(), targets, weights, tied=self.cfg.tie_word_embeddings,
                              dtype=self.cfg.compute_dtype, chunk_size=chunk_size)

  def __call__(
      self,
      input_ids: Int[ArrayLike, "b l"] | None = None,
      positions: Int[ArrayLike, "b l"] | None = None,
      *,
      inputs_embeds: Float[ArrayLike, "b l d"] | None = None,
      segment_ids: Int[ArrayLike, "b l"] | None = None,
      attention_mask: Bool[ArrayLike, "b l s"] | None = None,
      kv_cache: KVCache | None = None,
      compute_logits: bool = True,
  ) -> BackboneOutput:
    """Runs the decoder over a sequence, or over new tokens appended to `kv_cache`.

    `segment_ids` (0 = padding) give causal attention within packed segments unless
    `attention_mask` [b, l, s] is given (s = l, or the cache length when decoding); True there
    means the query may attend to the key. `positions` default to 0..l-1 (after the cache's fill
    when decoding); pass them explicitly for left padding or packed rows.
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.cfg.compute_dtype)
    batch, length = x.shape[:2]
    if segment_ids is None:
      segment_ids = jnp.ones((batch, length), jnp.int32)
    cache_index = jnp.zeros((), jnp.int32) if kv_cache is None else kv_cache.index
    if positions is None:
      positions = jnp.broadcast_to(cache_index + jnp.arange(length), (batch, length))

    if kv_cache is None:
      mask = masks.causal_segment_mask(segment_ids) if attention_mask is None else attention_mask
      layer_caches = None
    else:
      valid = jax.lax.dynamic_update_slice(kv_cache.valid, segment_ids != 0, (0, cache_index))
      mask = masks.decode_mask(valid, cache_index, length, attention_mask)
      layer_caches = (kv_cache.key, kv_cache.value)

    if self.cfg.scan_layers:
      x, layer_caches = self.layers(x, layer_caches, positions, mask, cache_index)
    else:
      new_caches = []
      for i, layer in enumerate(self.layers):
        layer_cache = None if layer_caches is None else jax.tree.map(lambda c, i=i: c[i], layer_caches)
        x, layer_cache = layer(x, layer_cache, positions, mask, cache_index)
        new_caches.append(layer_cache)
      if layer_caches is not None:
        layer_caches = jax.tree.map(lambda *c: jnp.stack(c), *new_caches)

    hidden = self.norm(x)
    new_cache = None
    if kv_cache is not None:
      new_cache = KVCache(key=layer_caches[0], value=layer_caches[1], valid=valid, index=cache_index + length)
    return BackboneOutput(logits=self.logits(hidden) if compute_logits else None, hidden=hidden,
                          kv_cache=new_cache)


def count_params(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
