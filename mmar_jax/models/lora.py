"""LoRA on the backbone's projections: the low-rank update, which weights train, folding it back in.

The paper calls its stages "Image Expert Pretraining/Fine-tuning" and reviewers report LoRA on
the LLM; we read this as the LLM's base weights frozen while the image path trains: LoRA on the
LLM, the adapter, the head and the new token rows (shared/MMAR.md) [ours, inferred]. A projection
y = x W becomes y = x W + (alpha / rank) * (x A) B with A [in, r] and B [r, out], each side of a
multi-axis kernel flattened (Hu et al., "LoRA", 2021). B starts at zero, so a fresh LoRA model computes exactly the base model.

    tx = lora.partition_optimizer(optax.adamw(1e-4), params, rank, train_rows=special_ids)
    ...
    export_params = lora.merge(params, cfg)   # LoRA folded in: a rank-0 model's tree

`trainable_mask` is True where a parameter trains. With LoRA on, the backbone's base weights are
frozen and the LoRA factors, the adapter and the head train. The embedding table trains too,
because the special tokens' rows must: by default the whole table (simple, but it updates every
text row and costs optimizer state for it); with `train_rows` (the special tokens' ids) only those
rows change and the original text rows stay bit-exact, the LLM's text knowledge untouched [ours].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float

LORA_A, LORA_B = "lora_a", "lora_b"
# PEFT's default init of A: kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(fan_in)) [LoRA/PEFT].
_A_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=0, out_axis=1)


def lora_delta(module: nn.Module, x: Float[ArrayLike, "... i"], *, rank: int, alpha: float,
               in_axes: tuple[str, ...], out_shape: tuple[int, ...], out_axes: tuple[str, ...],
               dtype, param_dtype) -> Float[Array, "... o"]:
  """(alpha / rank) * (x A) B, creating `module`'s params lora_a [in, r] and lora_b [r, out].

  Call from inside a compact projection: the factors sit beside its `kernel`, so nn.scan stacks
  them over layers like every other weight. x's trailing len(in_axes) dims are contracted.
  The factors are 2-D whatever the kernel's layout: a side with several dims (heads x head_dim)
  is flattened, so that one dimension can be split over the FSDP axes at every scale (head_dim
  alone does not divide 256 devices). A side that is the model width keeps `embed`; the other
  side is `lora_features` and the rank is `lora` (see the rule table, configs/schema.py).
  """
  num_in = len(in_axes)
  in_shape = x.shape[-num_in:]
  a = module.param(LORA_A, nn.with_logical_partitioning(_A_INIT, (_factor_axis(in_axes), "lora")),
                   (math.prod(in_shape), rank), param_dtype)
  b = module.param(LORA_B, nn.with_logical_partitioning(nn.initializers.zeros, ("lora", _factor_axis(out_axes))),
                   (rank, math.prod(out_shape)), param_dtype)
  x = jnp.reshape(x, x.shape[:x.ndim - num_in] + (-1,))
  xa = jnp.matmul(x.astype(dtype), a.astype(dtype))
  y = jnp.matmul(xa * jnp.asarray(alpha / rank, dtype), b.astype(dtype))
  return jnp.reshape(y, y.shape[:-1] + tuple(out_shape))


def _factor_axis(kernel_axes: tuple[str, ...]) -> str:
  """A factor's logical axis on one side of its projection: `embed` stays the model width."""
  return "embed" if kernel_axes == ("embed",) else "lora_features"


def has_lora(params: Any) -> bool:
  return any(LORA_A in _keys(path) for path, _ in jax.tree_util.tree_leaves_with_path(params))


def trainable_mask(params: Any, lora_rank: int, *, train_rows: Sequence[int] | None = None) -> Any:
  """A tree like `params`: True where the parameter trains, False where it is frozen.

  `params` is the unified model's tree ({'backbone', 'adapter', 'head'}) or a bare backbone's.
  lora_rank 0 is full fine-tuning: all True. With LoRA on, the backbone's base weights are
  False; `embed_tokens` (and an untied `lm_head`) are True, or with `train_rows` a bool array
  broadcastable to the parameter that is True on those token ids' rows (columns of lm_head).
  """
  if lora_rank == 0:
    return jax.tree.map(lambda _: True, params)
  if not has_lora(params):
    raise ValueError(f"lora_rank={lora_rank} but the params hold no {LORA_A}/{LORA_B}: initialise the model "
                     "with config.model.lora.rank set, or pass lora_rank=0 for full fine-tuning")
  nested = isinstance(params, Mapping) and "backbone" in params

  def leaf_mask(path, leaf):
    keys = _keys(path)
    if nested and keys[0] != "backbone":
      return True  # The adapter and the head: new, always trained.
    if LORA_A in keys or LORA_B in keys:
      return True
    if keys[-1] in ("embed_tokens", "lm_head"):
      if train_rows is None:
        return True
      # embed_tokens is [v, d] (rows), lm_head [d, v] (columns).
      vocab_axis = 0 if keys[-1] == "embed_tokens" else 1
      rows = np.zeros(leaf.shape[vocab_axis], bool)
      rows[np.asarray(train_rows, int)] = True
      return rows[:, None] if vocab_axis == 0 else rows[None, :]
    return False

  return jax.tree_util.tree_map_with_path(leaf_mask, params)


def stop_frozen_gradients(params: Any, lora_rank: int) -> Any:
  """`params` with `jax.lax.stop_gradient` on the frozen leaves (`trainable_mask` all False), so
  that the backward pass skips their weight-gradient matmuls (their gradients are zeros, which
  `partition_optimizer` ignores anyway). Activation gradients still flow through them."""
  if lora_rank == 0:
    return params
  mask = trainable_mask(params, lora_rank)
  return jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)


def partition_optimizer(tx: optax.GradientTransformation, params: Any, lora_rank: int, *,
                        train_rows: Sequence[int] | None = None) -> optax.GradientTransformation:
  """`tx` on the trainable parameters, zero updates (and no optimizer state) on the frozen ones.

  optax.multi_transform keeps `tx`'s state only for the 'train' leaves. With `train_rows`, the
  table's updates are then zeroed outside those rows *after* `tx`, so that neither Adam's moments
  nor weight decay move a frozen row.
  """
  mask = trainable_mask(params, lora_rank, train_rows=train_rows)
  labels = jax.tree.map(lambda m: "train" if np.any(m) else "freeze", mask)
  tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
  if train_rows is None:
    return tx

  def keep_rows(updates, params):
    del params
    return jax.tree.map(lambda u, m: u if np.ndim(m) == 0 else u * jnp.asarray(m, u.dtype), updates, mask)

  return optax.chain(tx, optax.stateless(keep_rows))


def merge(params: Any, cfg) -> Any:
  """`params` with every LoRA update folded into its kernel and the factors removed.

  `cfg` is the BackboneConfig the params were trained with (or an MMARConfig holding one). The
  result is the tree a model with lora_rank 0 reads (for export to Hugging Face). The product
  A B is taken in float32 at full precision whatever the parameters' dtype.
  """
  cfg = getattr(cfg, "backbone", cfg)
  if cfg.lora_rank == 0:
    if has_lora(params):
      raise ValueError("the params hold LoRA factors but the config has lora_rank=0; pass the config they "
                       "were trained with")
    return params
  scale = cfg.lora_alpha / cfg.lora_rank

  def fold(node):
    if not isinstance(node, Mapping):
      return node
    if LORA_A not in node:
      return {k: fold(v) for k, v in node.items()}
    kernel, a, b = node["kernel"], node[LORA_A], node[LORA_B]
    # The factors are [..., in, r] and [..., r, out], `...` the stacked axes (nn.scan's layers).
    delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST).reshape(kernel.shape)
    merged = (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)
    return {k: v for k, v in node.items() if k not in (LORA_A, LORA_B)} | {"kernel": merged}

  return fold(params)


def _keys(path) -> tuple[str, ...]:
  return tuple(getattr(p, "key", getattr(p, "name", str(p))) for p in path)
