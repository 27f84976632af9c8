"""The exponential moving average of the trainable parameters (MAR's plain EMA, no warm-up).

After every update `ema <- decay * ema + (1 - decay) * params` (optax.incremental_update), on
the trainable leaves only: the EMA is the params tree pruned to the leaves the optimizer moves
(under LoRA the frozen base weights are left out, as they would average to themselves), so it
costs one copy of what trains and shares the params' shardings. Inference reads `merge(params,
ema)`: the EMA where it has a leaf, the raw parameter elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util


def prune(tree: Any, keep: Callable[[tuple[str, ...]], bool]) -> Any:
  """`tree` (a nested dict like the params) with only the leaves whose path `keep` accepts."""
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if keep(k)})


def trainable_paths(trainable_mask: Any) -> frozenset[tuple[str, ...]]:
  """The paths of the leaves a `models.lora.trainable_mask` tree marks as training (any row of a leaf)."""
  return frozenset(k for k, m in traverse_util.flatten_dict(trainable_mask).items() if np.any(m))


def like(tree: Any, ema: Any) -> Any:
  """`tree` (params-shaped: params, shardings, abstract arrays) pruned to the leaves `ema` holds."""
  held = set(traverse_util.flatten_dict(ema))
  return prune(tree, held.__contains__)


def update(ema: Any, params: Any, decay: float, keep: jax.Array | bool = True) -> Any:
  """One EMA step toward `params`; where `keep` is False (a skipped, non-finite update) the EMA stays."""
  moved = optax.incremental_update(like(params, ema), ema, step_size=1.0 - decay)
  return jax.tree.map(lambda new, old: jnp.where(keep, new, old), moved, ema)


def merge(params: Any, ema: Any) -> Any:
  """The params with the EMA's leaves in place of the raw ones (the frozen leaves are raw anyway)."""
  flat = traverse_util.flatten_dict(params)
  flat.update(traverse_util.flatten_dict(ema))
  return traverse_util.unflatten_dict(flat)
