"""The device mesh: its shape from config.mesh (slices or hosts over DCN, devices within), and the mesh.

Axes are ('data', 'fsdp', 'tensor'); one size may be -1 ("the rest of the devices"). The shape
arithmetic is plain Python (validation uses it before any device is touched); `make_mesh` builds
the jax Mesh, with `create_hybrid_device_mesh` when the data or fsdp axis spans several slices.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from mmar_jax.configs.schema import MESH_AXES
from mmar_jax.configs.validation import ConfigError, fail


DCN_AXES = ("dcn_data", "dcn_fsdp")  # config.mesh fields: the DCN extent of 'data' and 'fsdp'.


def dcn_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The DCN extent of each mesh axis, (dcn_data, dcn_fsdp, 1): slices or hosts per axis."""
  for field in DCN_AXES:
    if not isinstance(config.mesh[field], int) or config.mesh[field] < 1:
      fail(f"mesh.{field}", config.mesh[field], "must be a positive number of slices or hosts")
  return (config.mesh.dcn_data, config.mesh.dcn_fsdp, 1)


def ici_shape(config: ml_collections.ConfigDict, num_devices: int | None) -> tuple[int, ...]:
  """The (data, fsdp, tensor) sizes within one slice or host, -1 resolved against its share of
  `num_devices` (all devices / the DCN product)."""
  sizes = [config.mesh[a] for a in MESH_AXES]
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      fail(f"mesh.{axis}", size, "must be a positive size or -1 (the rest of the devices)")
  if sizes.count(-1) > 1:
    fail("mesh", dict(zip(MESH_AXES, sizes)), "may have at most one axis of size -1")
  granules = math.prod(dcn_shape(config))
  if num_devices is None:
    return tuple(sizes)
  if num_devices % granules:
    fail("mesh", {f: config.mesh[f] for f in DCN_AXES}, f"spans {granules} slices or hosts, which do not "
          f"divide the {num_devices} devices")
  per_granule = num_devices // granules
  where = f" of each of the {granules} slices or hosts" if granules > 1 else ""
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if per_granule % known:
      fail("mesh", dict(zip(MESH_AXES, sizes)), f"fixed axes ({known} devices) do not divide the "
            f"{per_granule} devices{where}")
    sizes[sizes.index(-1)] = per_granule // known
  elif known != per_granule:
    fail("mesh", dict(zip(MESH_AXES, sizes)), f"covers {known} devices but there are {per_granule}{where}")
  return tuple(sizes)


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int | None) -> tuple[int, ...]:
  """The whole mesh's (data, fsdp, tensor) sizes: the per-slice sizes times their DCN extent,
  -1 resolved against `num_devices` (left as -1 when that is None)."""
  ici = ici_shape(config, num_devices)
  return tuple(i if i == -1 else i * d for i, d in zip(ici, dcn_shape(config)))



def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over `devices` (default: all devices of all processes).

  With config.mesh.dcn_data or dcn_fsdp above 1 the data / fsdp axes span several slices or
  hosts: each slice's devices form one contiguous (data, fsdp, tensor) block, so only the
  gradient all-reduce (data) and the FSDP gathers (fsdp) cross the slower network.
  """
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: shardings follow the logical constraints and XLA propagates the rest.
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if math.prod(dcn_shape(config)) > 1:
    return Mesh(hybrid_device_grid(config, devices), MESH_AXES, axis_types=axis_types)
  shape = mesh_shape(config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def hybrid_device_grid(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> np.ndarray:
  """`devices` arranged as the multi-slice / multi-host mesh: a (data, fsdp, tensor) array of them.

  Slices (TPU `slice_index`) are the DCN units where the devices span several; otherwise
  processes are (GPU or CPU hosts, which have no slices). Only the `id`, `process_index`,
  `slice_index`, `platform` and `device_kind` attributes of the devices are read.
  """
  dcn = dcn_shape(config)
  ici = ici_shape(config, len(devices))  # Checks that the slices split the devices evenly.
  slices = {getattr(d, "slice_index", None) for d in devices}
  # A GPU or CPU device has no slice_index (or every one says 0): the process is the unit then.
  by_slice = None not in slices and len(slices) > 1
  attr, unit = ("slice_index", "slices") if by_slice else ("process_index", "processes")
  per_unit = collections.Counter(getattr(d, attr) for d in devices)
  if len(per_unit) != math.prod(dcn):
    raise ConfigError(
        f"config.mesh.dcn_data={dcn[0]} x config.mesh.dcn_fsdp={dcn[1]} asks for {math.prod(dcn)} slices or "
        f"hosts, but the {len(devices)} devices span {len(per_unit)} {unit}")
  if len(set(per_unit.values())) > 1:
    raise ConfigError(f"the {unit} hold different numbers of devices ({dict(per_unit)}); a hybrid "
                              "mesh (config.mesh.dcn_*) needs the same number in each")
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice)


def mesh_axes(logical: str, rules) -> str | tuple[str, ...] | None:
  """The mesh axes `config.mesh.logical_axis_rules` maps one logical axis to (the first rule that
  names it, as flax reads the table); None when it is replicated or has no rule.

  Plain Python, for the code that shards without flax (the input pipeline's batches).
  """
  for name, target in rules:
    if name == logical:
      return tuple(target) if isinstance(target, (list, tuple)) else target
  return None
