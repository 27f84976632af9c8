"""The train state (step, params, optimizer state, RNG, the params' EMA) and its sharded creation.

The state is a plain pytree, so the jitted step, Orbax and `jax.tree` all handle it as one
value. Every leaf is created on its own shards: the parameters' shardings come from their
logical axes, the optimizer state's from the parameters' (`optax.tree_map_params`), the EMA's
are the parameters' own (train/ema.py: a pruned copy of the trainable leaves), and one
`jax.jit(init, out_shardings=...)` materialises the whole state where it lives.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmar_jax.train import ema as ema_lib
from mmar_jax.train import sharding


@flax.struct.dataclass
@typing.no_type_check  # flax rebuilds it through __init__ from ShapeDtypeStructs (eval_shape): unchecked.
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken (skipped non-finite steps included).
  params: Any
  opt_state: Any
  # Raw uint32 key data (Orbax stores plain arrays); each step folds the step number into it,
  # so a resumed run draws exactly the randomness the uninterrupted one would have.
  rng: jax.Array
  # The trainable params' exponential moving average (train/ema.py); None when config.train.ema_decay is 0.
  ema: Any = None

  def step_key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


# Which params paths the EMA averages (train/ema.py); None: no EMA.
EmaKeep = Callable[[tuple[str, ...]], bool] | None


def _init_fn(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, ema_keep: EmaKeep):
  def init(seed):
    key = jax.random.key(seed)
    params = nn.meta.unbox(init_params(jax.random.fold_in(key, 0)))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(key, 1)),
                      ema=None if ema_keep is None else ema_lib.prune(params, ema_keep))
  return init


def shardings(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, mesh: Mesh, rules,
              ema_keep: EmaKeep = None) -> TrainState:
  """The state's NamedShardings, from the params' logical axes, without materialising anything.

  `init_params(key)` returns the model's boxed (logically partitioned) params; `ema_keep` picks
  the params paths the EMA holds (None: no EMA).
  """
  replicated = NamedSharding(mesh, PartitionSpec())
  with sharding.activate(mesh, rules):
    boxed = jax.eval_shape(init_params, jax.random.key(0))
    sharding.check_divisible(boxed, mesh, rules)
    param_shardings = sharding.logical_shardings(boxed, mesh, rules)
    abstract_params = jax.tree.map(lambda x: x.unbox(apply_constraint=False), boxed, is_leaf=_is_boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    # Frozen parameters (LoRA) have no optimizer state: optax leaves a MaskedNode in their place.
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_shardings = optax.tree_map_params(tx, lambda x, s: x if masked(x) else s, abstract_opt, param_shardings,
                                          transform_non_params=lambda _: replicated, is_leaf=masked)
  ema_shardings = None if ema_keep is None else ema_lib.prune(param_shardings, ema_keep)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated,
                    ema=ema_shardings)


def abstract(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, seed: int,
             state_shardings: TrainState, ema_keep: EmaKeep = None) -> TrainState:
  """ShapeDtypeStructs with shardings: the restore target for a checkpoint onto any mesh."""
  shapes = jax.eval_shape(_init_fn(init_params, tx, ema_keep), seed)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shardings)


def create(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation, seed: int, mesh: Mesh,
           rules, ema_keep: EmaKeep = None) -> tuple[TrainState, TrainState]:
  """A fresh state, every leaf born on its own shards, and the state's shardings (the EMA starts at the params)."""
  state_shardings = shardings(init_params, tx, mesh, rules, ema_keep)
  with sharding.activate(mesh, rules):
    state = jax.jit(_init_fn(init_params, tx, ema_keep), out_shardings=state_shardings)(seed)
  return state, state_shardings


def overlay(params: Any, pretrained: Any, where: str = "params") -> Any:
  """`params` with every leaf that `pretrained` has replaced (same shape, placed on the same
  shards); leaves only ours has (LoRA factors) stay fresh. Mismatches fail naming the leaf."""
  if isinstance(pretrained, dict):
    missing = set(pretrained) - set(params)
    if missing:
      raise ValueError(f"{where}: the pretrained checkpoint has {sorted(missing)} that this model lacks")
    return {k: overlay(v, pretrained[k], f"{where}.{k}") if k in pretrained else v for k, v in params.items()}
  if tuple(params.shape) != tuple(np.shape(pretrained)):
    raise ValueError(f"{where}: pretrained shape {tuple(np.shape(pretrained))} != model shape {tuple(params.shape)}")
  return jax.device_put(np.asarray(pretrained, params.dtype), params.sharding)


def _is_boxed(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def bytes_per_device(tree: Any) -> dict[str, int]:
  """Bytes each device holds of `tree` (a concrete, sharded pytree), keyed by device id."""
  held: dict[str, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[str(shard.device.id)] = held.get(str(shard.device.id), 0) + shard.data.nbytes
  return held
