"""The jitted train step on meshes: same losses everywhere, real FSDP sharding, non-finite skipping."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from mmar_jax.data import pipeline
from mmar_jax.train import experiment, loop, optimizer, sharding
from mmar_jax.train import state as state_lib
from mmar_jax.train import step as step_lib
from mmar_jax.train import mesh as mesh_lib
from tests.train import tiny


def make(config, devices):
  """(jitted step, fresh state, mesh) for `config` on `devices`."""
  exp = experiment.build(config)
  mesh = mesh_lib.make_mesh(config, devices)
  rules = config.mesh.logical_axis_rules
  tx = loop.build_optimizer(exp, config)
  fn = step_lib.make_train_step(exp.model, exp.image_tokenizer, tx, optimizer.learning_rate_schedule(config.train),
                                step_lib.StepConfig.from_config(config))
  state, shardings = state_lib.create(exp.init_params, tx, config.seed, mesh, rules)
  with sharding.activate(mesh, rules):
    jitted = jax.jit(fn, in_shardings=(shardings, pipeline.batch_sharding(mesh, rules), None),
                     out_shardings=(shardings, None))
  return jitted, state, mesh, exp


@pytest.fixture(scope="module")
def host_batch():
  config = tiny.config()
  exp = experiment.build(config)
  return next(iter(pipeline.build_dataset(pipeline.PipelineConfig.from_config(config), exp.text_tokenizer)))


def run_step(config, devices, batch):
  jitted, state, mesh, _ = make(config, devices)
  with sharding.activate(mesh, config.mesh.logical_axis_rules):
    new_state, metrics = jitted(state, pipeline.to_global(batch, mesh, config.mesh.logical_axis_rules), {})
  return jax.device_get(metrics), jax.device_get(new_state.params), state


def test_losses_and_update_agree_across_meshes(host_batch):
  devices = jax.devices()
  one = run_step(tiny.config("mesh.data=1"), devices[:1], host_batch)
  data = run_step(tiny.config("mesh.data=8"), devices, host_batch)
  fsdp_tp = run_step(tiny.config("mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2"), devices, host_batch)
  for other in (data, fsdp_tp):
    for key in ("loss", "ce", "v_loss", "grad_norm"):
      np.testing.assert_allclose(other[0][key], one[0][key], rtol=1e-5, atol=1e-5, err_msg=key)
    tiny.assert_trees_equal(other[1], one[1], atol=1e-5)


def test_fsdp_really_shards_parameters_and_optimizer_state():
  devices = jax.devices()
  _, replicated, _, _ = make(tiny.config("mesh.data=8"), devices)
  _, sharded, _, _ = make(tiny.config("mesh.data=1", "mesh.fsdp=8"), devices)
  for part in ("params", "opt_state"):
    full = state_lib.bytes_per_device(getattr(replicated, part))
    split = state_lib.bytes_per_device(getattr(sharded, part))
    assert len(split) == 8 and len(set(full.values())) == 1
    # Each device holds its eighth of every matrix; only norms, biases and counters stay whole.
    ratio = max(split.values()) / max(full.values())
    assert ratio < 0.25, (part, ratio)


def test_non_finite_batch_is_skipped_without_touching_the_state(host_batch):
  config = tiny.config("mesh.data=8")
  jitted, state, mesh, exp = make(config, jax.devices())
  before = jax.device_get((state.params, state.opt_state))
  tokens = np.asarray(step_lib.image_tokens(exp.image_tokenizer, {}, host_batch, None))
  poisoned = dataclasses.replace(host_batch, image_tokens=tokens.copy())
  poisoned.image_tokens[0, 0, 0, 0] = np.nan
  with sharding.activate(mesh, config.mesh.logical_axis_rules):
    state, metrics = jitted(state, pipeline.to_global(poisoned, mesh, config.mesh.logical_axis_rules), {})
    assert int(metrics["skipped"]) == 1 and int(metrics["consecutive_skips"]) == 1
    assert not np.isfinite(float(metrics["loss"]))
    after = jax.device_get((state.params, state.opt_state.inner_state))
    tiny.assert_trees_equal(after, (before[0], before[1].inner_state))
    assert int(state.step) == 1
    # The same batch, clean, trains: counters reset, parameters move.
    state, metrics = jitted(state, pipeline.to_global(dataclasses.replace(host_batch, image_tokens=tokens), mesh,
                                                      config.mesh.logical_axis_rules), {})
    assert int(metrics["skipped"]) == 0 and int(metrics["total_skips"]) == 1
    moved = jax.device_get(state.params)
    # The same leaf before and after: the head's input projection and the backbone's q kernel move.
    for part, path in (("head", ("input_proj", "kernel")), ("backbone", ("layers", "self_attn", "q_proj", "kernel"))):
      old, new = before[0][part], moved[part]
      for key in path:
        old, new = old[key], new[key]
      assert old.shape == new.shape and not np.array_equal(old, new), (part, path)


def test_gradient_accumulation_of_identical_micro_batches_equals_one_step(host_batch):
  """Two micro-batches that are both `host_batch` give exactly the one-batch step (CE only: the
  v-loss draws its noise per micro-batch, so it is switched off here)."""
  extra = ("loss.diffusion_weight=0.0", "mesh.data=8")
  config = tiny.config(*extra, "train.grad_accum_steps=2", "data.batch_size=16")
  jitted, state, mesh, _ = make(config, jax.devices())
  # Micro-batch i takes rows i, i + 2, ...: interleave two copies so that both are host_batch.
  double = jax.tree.map(lambda v: np.repeat(v, 2, axis=0), host_batch)
  with sharding.activate(mesh, config.mesh.logical_axis_rules):
    new_state, accumulated = jitted(state, pipeline.to_global(double, mesh, config.mesh.logical_axis_rules), {})
  single, single_params, _ = run_step(tiny.config(*extra), jax.devices(), host_batch)
  np.testing.assert_allclose(accumulated["ce"], single["ce"], rtol=1e-6)
  np.testing.assert_allclose(accumulated["grad_norm"], single["grad_norm"], rtol=1e-5)
  tiny.assert_trees_equal(jax.device_get(new_state.params), single_params, atol=1e-6)


def test_lora_step_moves_only_lora_adapter_head_and_new_rows(host_batch):
  config = tiny.config("mesh.data=8", "model.lora.rank=4")
  jitted, state, mesh, exp = make(config, jax.devices())
  before = jax.device_get(state.params)
  with sharding.activate(mesh, config.mesh.logical_axis_rules):
    state, _ = jitted(state, pipeline.to_global(host_batch, mesh, config.mesh.logical_axis_rules), {})
  after = jax.device_get(state.params)
  layers_before, layers_after = before["backbone"]["layers"], after["backbone"]["layers"]
  for path, leaf in jax.tree_util.tree_leaves_with_path(layers_before):
    name = jax.tree_util.keystr(path)
    moved = not np.array_equal(leaf, _at(layers_after, path))
    # B moves by its gradient; A (no gradient while B is zero) by weight decay.
    assert moved == ("lora_" in name), name
  new_rows = [exp.special_ids.boi, exp.special_ids.eoi, exp.special_ids.mask]
  table_before, table_after = before["backbone"]["embed_tokens"], after["backbone"]["embed_tokens"]
  old_rows = np.setdiff1d(np.arange(table_before.shape[0]), new_rows)
  np.testing.assert_array_equal(table_after[old_rows], table_before[old_rows])
  assert not np.array_equal(table_after[exp.special_ids.mask], table_before[exp.special_ids.mask])
  for part in ("adapter", "head"):
    # Some leaves of the zero-initialised AdaLN paths get no gradient in a first step; the rest move.
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[part]), jax.tree.leaves(after[part])))


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_diverging_run_stops_with_its_last_good_checkpoint(tmp_path):
  # A learning rate of 1e30 blows the parameters up in one step: every later loss is non-finite.
  config = tiny.config("train.learning_rate=1e30", "train.warmup_steps=0", "train.checkpoint_every=1",
                       "train.max_consecutive_skips=2", "train.num_steps=20")
  with pytest.raises(loop.TrainingDiverged, match="last good checkpoint is step"):
    loop.train(config, str(tmp_path))
  step, params = tiny.saved_params(str(tmp_path))
  assert 1 <= step < 20


def test_step_reads_the_mask_ratio_distribution():
  config = tiny.config("model.mask_ratio_dist=truncnorm", "model.mask_ratio_min=0.0", "model.mask_ratio_std=0.3")
  cfg = step_lib.StepConfig.from_config(config)
  r = cfg.mask_ratio
  assert (r.dist, r.min_ratio, r.max_ratio, r.loc, r.std) == ("truncnorm", 0.0, 1.0, 1.0, 0.3)
