"""The device mesh, the logical-axis rule table, and shardings derived from them.

Modules name logical axes only; `config.mesh.logical_axis_rules` maps them to the mesh axes
('data', 'fsdp', 'tensor'). Data parallel, FSDP and tensor parallel differ only in that table
and the mesh shape; multi-slice / multi-node runs add DCN extents to the data and fsdp axes
(config.mesh.dcn_*). Parameters are created already sharded: `jax.eval_shape` of the init gives
their logical names, and `jax.jit(init, out_shardings=...)` materialises each shard where it lives.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding

from mmar_jax import configs

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices of all processes).

  With config.mesh.dcn_data or dcn_fsdp above 1 the data / fsdp axes span several slices or
  hosts: each slice's devices form one contiguous (data, fsdp, tensor) block, so only the
  gradient all-reduce (data) and the FSDP gathers (fsdp) cross the slower network.
  """
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: shardings follow the logical constraints and XLA propagates the rest.
  axis_types = (AxisType.Auto,) * len(configs.MESH_AXES)
  if math.prod(configs.dcn_shape(config)) > 1:
    return Mesh(hybrid_device_grid(config, devices), configs.MESH_AXES, axis_types=axis_types)
  shape = configs.mesh_shape(config, len(devices))
  return jax.make_mesh(shape, configs.MESH_AXES, axis_types=axis_types, devices=devices)


def hybrid_device_grid(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> np.ndarray:
  """`devices` arranged as the multi-slice / multi-host mesh: a (data, fsdp, tensor) array of them.

  Slices (TPU `slice_index`) are the DCN units where the devices span several; otherwise
  processes are (GPU or CPU hosts, which have no slices). Only the `id`, `process_index`,
  `slice_index`, `platform` and `device_kind` attributes of the devices are read.
  """
  dcn = configs.dcn_shape(config)
  ici = configs.ici_shape(config, len(devices))  # Checks that the slices split the devices evenly.
  slices = {getattr(d, "slice_index", None) for d in devices}
  # A GPU or CPU device has no slice_index (or every one says 0): the process is the unit then.
  by_slice = None not in slices and len(slices) > 1
  attr, unit = ("slice_index", "slices") if by_slice else ("process_index", "processes")
  per_unit = collections.Counter(getattr(d, attr) for d in devices)
  if len(per_unit) != math.prod(dcn):
    raise configs.ConfigError(
        f"config.mesh.dcn_data={dcn[0]} x config.mesh.dcn_fsdp={dcn[1]} asks for {math.prod(dcn)} slices or "
        f"hosts, but the {len(devices)} devices span {len(per_unit)} {unit}")
  if len(set(per_unit.values())) > 1:
    raise configs.ConfigError(f"the {unit} hold different numbers of devices ({dict(per_unit)}); a hybrid "
                              "mesh (config.mesh.dcn_*) needs the same number in each")
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice)


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
