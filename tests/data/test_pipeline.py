"""The grain pipeline: exact resume through an Orbax checkpoint with workers on, host sharding, global arrays."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp

import grain
from mmar_jax import configs
from mmar_jax.batch import Batch
from mmar_jax.data import pipeline, text_tokenizer
from mmar_jax.train import mesh as mesh_lib

TOK = text_tokenizer.build_demo_tokenizer()


def pipeline_config(*overrides):
  config = configs.load_config("configs/demo.py", ["data.synthetic_records=48", "data.batch_size=8", *overrides])
  return pipeline.PipelineConfig.from_config(config)


def assert_batches_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert np.array_equal(x, y), jax.tree_util.keystr(path)


def test_resumed_iterator_continues_exactly_with_workers(tmp_path):
  # Packing (stateful) and two worker processes; 48 records and ~32 per batch cross epochs.
  pc = pipeline_config("data.packing=True", "data.num_workers=2", "data.worker_buffer_size=2")
  ds = pipeline.build_dataset(pc, TOK, process_index=0, process_count=1)
  it = iter(ds)
  first = [next(it) for _ in range(3)]
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = [next(it) for _ in range(3)]
  it.close()
  # Without the restore a fresh iterator would replay the first batches, not these.
  assert not np.array_equal(first[0].record_index, expected[0].record_index)

  resumed = iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1))
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  for want in expected:
    assert_batches_equal(next(resumed), want)
  counts = pipeline.corrupt_counts(resumed)  # Counts resumed too: past one epoch, each record counted once.
  assert counts["reads"] > 48 and counts["distinct"] == 48
  resumed.close()
  manager.close()


def test_worker_count_does_not_change_the_batches():
  # Everything many-to-one or stateful (corrupt skipping, packing) runs after the workers.
  batches = {}
  for workers in (0, 1):
    it = iter(pipeline.build_dataset(pipeline_config("data.packing=True", f"data.num_workers={workers}"), TOK,
                                     process_index=0, process_count=1))
    batches[workers] = [next(it) for _ in range(2)]
    it.close()
  for a, b in zip(batches[0], batches[1]):
    assert_batches_equal(a, b)


def test_two_hosts_see_disjoint_records_covering_the_data():
  pc = pipeline_config("data.packing=False", "data.num_workers=0")
  per_host = {}
  for host in (0, 1):
    it = iter(pipeline.build_dataset(pc, TOK, process_index=host, process_count=2))
    epochs = [np.concatenate([next(it).record_index[:, 0] for _ in range(6)]) for _ in range(2)]  # 6 x 4 = 24
    per_host[host] = epochs
    # Each epoch draws a new global permutation, so a host's share changes between epochs.
    assert len(set(epochs[0])) == len(set(epochs[1])) == 24
    assert set(epochs[0]) != set(epochs[1])
  for epoch in (0, 1):
    a, b = set(per_host[0][epoch]), set(per_host[1][epoch])
    assert not a & b and a | b == set(range(48))


def test_host_batches_become_global_arrays_over_the_data_axes():
  config = configs.load_config("configs/demo.py", ["data.batch_size=8", "data.num_workers=0"],
                               num_devices=jax.device_count())
  mesh = mesh_lib.make_mesh(config)
  pc = pipeline.PipelineConfig.from_config(config)
  batch = next(iter(pipeline.build_dataset(pc, TOK, process_index=0, process_count=1)))
  arrays = pipeline.to_global(batch, mesh, config.mesh.logical_axis_rules)
  assert isinstance(arrays, Batch) and arrays.images is not None
  for (path, value), host in zip(jax.tree_util.tree_leaves_with_path(arrays), jax.tree.leaves(batch), strict=True):
    key = jax.tree_util.keystr(path)
    assert value.shape == host.shape and value.dtype == host.dtype, key
    assert value.sharding.spec[0] == ("data", "fsdp")
    # Each device holds its own 1/8 of the rows.
    shard = value.addressable_shards[3]
    assert shard.data.shape[0] == 1 and np.array_equal(np.asarray(shard.data), host[shard.index])
