"""The logical-axis rule table and the shardings derived from it (the mesh itself: train/mesh.py).

Modules name logical axes only; `config.mesh.logical_axis_rules` maps them to the mesh axes
('data', 'fsdp', 'tensor'). Data parallel, FSDP and tensor parallel differ only in that table
and the mesh shape; multi-slice / multi-node runs add DCN extents to the data and fsdp axes
(config.mesh.dcn_*). Parameters are created already sharded: `jax.eval_shape` of the init gives
their logical names, and `jax.jit(init, out_shardings=...)` materialises each shard where it lives.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh

from mmar_jax import configs

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules):
  """Makes `mesh` and `rules` the ones that flax's logical constraints resolve against."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(boxed_tree, mesh: Mesh, rules: Rules):
  """NamedShardings for a tree of flax `LogicallyPartitioned` leaves (abstract or concrete)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)


def check_divisible(boxed_tree, mesh: Mesh, rules: Rules) -> None:
  """Fails with the parameter's path when a mesh axis does not divide the dimension it shards."""
  is_boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
  for path, leaf in jax.tree_util.tree_leaves_with_path(boxed_tree, is_leaf=is_boxed):
    if not is_boxed(leaf):
      continue  # Unannotated leaves are replicated.
    for dim, (size, name, axes) in enumerate(zip(leaf.value.shape, leaf.names,
                                                 nn.logical_to_mesh_axes(leaf.names, rules))):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      parts = math.prod(mesh.shape[a] for a in axes)
      if size % parts:
        raise configs.ConfigError(
            f"parameter {jax.tree_util.keystr(path)} dimension {dim} ({name!r}, size {size}) is "
            f"sharded over mesh axes {axes} of total size {parts}, which does not divide it; change "
            "config.mesh or config.mesh.logical_axis_rules")


def init_sharded(init_fn: Callable, mesh: Mesh, rules: Rules, *args):
  """Runs `init_fn(*args)` (a flax init) with every parameter born on its own shards.

  Returns (unboxed variables, their shardings).
  """
  with activate(mesh, rules):
    abstract = jax.eval_shape(init_fn, *args)
    check_divisible(abstract, mesh, rules)
    shardings = logical_shardings(abstract, mesh, rules)
    variables = jax.jit(init_fn, out_shardings=shardings)(*args)
  return nn.meta.unbox(variables), shardings
