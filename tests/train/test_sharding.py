"""Mesh construction: the single-slice path, and the multi-slice / multi-host (DCN) arithmetic and layout."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from mmar_jax import configs
from mmar_jax.train import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  """What mesh_utils reads of a device; 8 fake CPUs cannot stand in for several slices or processes."""
  id: int
  process_index: int
  slice_index: int | None = None
  platform: str = "cpu"
  device_kind: str = "cpu"


def demo(*overrides: str):
  return configs.load_config("configs/demo.py", list(overrides))


def test_single_slice_mesh_is_jax_make_mesh():
  config = demo("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
  mesh = mesh_lib.make_mesh(config)
  expected = jax.make_mesh((2, 2, 2), configs.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  assert mesh == expected and mesh.devices.tolist() == expected.devices.tolist()


@pytest.mark.parametrize("overrides, devices, ici, whole", [
    (("mesh.dcn_data=2",), 8, (4, 1, 1), (8, 1, 1)),  # data=-1 is the rest of one slice's 4.
    (("mesh.dcn_data=2", "mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=2"), 16, (1, 4, 2), (2, 4, 2)),
    (("mesh.dcn_fsdp=4", "mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=8"), 256, (1, 8, 8), (1, 32, 8)),
    (("mesh.dcn_data=2", "mesh.dcn_fsdp=2", "mesh.data=1", "mesh.fsdp=2"), 8, (1, 2, 1), (2, 4, 1)),
])
def test_dcn_shapes_multiply_the_per_slice_shape(overrides, devices, ici, whole):
  config = demo(*overrides)
  assert mesh_lib.ici_shape(config, devices) == ici
  assert mesh_lib.mesh_shape(config, devices) == whole


@pytest.mark.parametrize("override, devices, message", [
    (("mesh.dcn_data=0",), 8, r"config\.mesh\.dcn_data=0 must be a positive number"),
    (("mesh.dcn_fsdp=-1",), 8, r"config\.mesh\.dcn_fsdp=-1 must be a positive number"),
    (("mesh.dcn_data=3",), 8, r"spans 3 slices or hosts, which do not divide the 8 devices"),
    (("mesh.dcn_data=2", "mesh.data=2", "mesh.fsdp=1"), 8,
     r"covers 2 devices but there are 4 of each of the 2 slices or hosts"),
    (("mesh.dcn_data=2", "mesh.fsdp=3"), 16, r"fixed axes \(3 devices\) do not divide the 8 devices of each"),
])
def test_bad_dcn_settings_fail_naming_the_field(override, devices, message):
  with pytest.raises(configs.ConfigError, match=message):
    configs.validate(demo(*override), num_devices=devices)


def _grid(config, devices):
  return np.vectorize(lambda d: d.id, otypes=[int])(mesh_lib.hybrid_device_grid(config, devices))


def test_hybrid_grid_keeps_each_slice_a_contiguous_block():
  # 16 devices in 4 slices of 4, 2 a process: slices, not processes, are the DCN unit.
  devices = [FakeDevice(id=i, process_index=i // 2, slice_index=i // 4) for i in range(16)]
  config = demo("mesh.dcn_data=2", "mesh.dcn_fsdp=2", "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2")
  ids = _grid(config, devices)
  assert ids.shape == (2, 4, 2)
  slice_of = ids // 4
  # The DCN axes are the outer factor of data and fsdp: slice = 2 * data_block + fsdp_block.
  for data in range(2):
    for fsdp in range(4):
      assert (slice_of[data, fsdp] == 2 * data + fsdp // 2).all()
  assert sorted(ids.ravel()) == list(range(16))


def test_hybrid_grid_uses_processes_where_devices_have_no_slices():
  # Two GPU hosts of 4 devices each: no slice_index, so the DCN unit is the process.
  devices = [FakeDevice(id=i, process_index=i // 4, platform="gpu", device_kind="fake gpu") for i in range(8)]
  ids = _grid(demo("mesh.dcn_data=2", "mesh.data=1", "mesh.fsdp=-1"), devices)
  assert ids.shape == (2, 4, 1)
  assert (ids[0] // 4 == 0).all() and (ids[1] // 4 == 1).all()


def test_hybrid_grid_must_match_the_number_of_slices():
  devices = [FakeDevice(id=i, process_index=0, slice_index=i // 2) for i in range(8)]  # 4 slices of 2.
  with pytest.raises(configs.ConfigError, match=r"asks for 2 slices or hosts, but the 8 devices span 4 slices"):
    mesh_lib.hybrid_device_grid(demo("mesh.dcn_data=2"), devices)
  # The tests' one process: a DCN axis needs more than one.
  with pytest.raises(configs.ConfigError, match=r"span 1 processes"):
    mesh_lib.make_mesh(demo("mesh.dcn_data=2"))


def test_the_input_batch_follows_the_batch_rule():
  # The batches' sharding and the micro-batch constraint come from the rule table's 'batch' axis:
  # changing that rule is all it takes to feed another layout.
  from jax.sharding import PartitionSpec

  from mmar_jax.data import pipeline
  config = demo("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
  mesh = mesh_lib.make_mesh(config)
  rules = config.mesh.logical_axis_rules
  assert pipeline.batch_sharding(mesh, rules).spec == PartitionSpec(("data", "fsdp"))
  data_only = tuple(("batch", "data") if name == "batch" else (name, t) for name, t in rules)
  assert pipeline.batch_sharding(mesh, data_only).spec == PartitionSpec("data")
  batch = {"x": np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
  placed = pipeline.to_global(batch, mesh, data_only)["x"]
  assert placed.sharding.spec == PartitionSpec("data")
  assert {s.data.shape for s in placed.addressable_shards} == {(4, 3)}
