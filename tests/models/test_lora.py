"""LoRA on the backbone: a fresh LoRA model is the base model, frozen weights stay bit-exact under
the partitioned optimizer, merging folds LoRA in exactly, the factors shard, and bad configs fail."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmar_jax import configs
from mmar_jax.models import lora
from mmar_jax.models.backbone import Backbone, BackboneConfig, Linear
from mmar_jax.models.mmar import MMAR, MMARConfig
from mmar_jax.train import sharding
from mmar_jax.train import mesh as mesh_lib
from tests.models import test_mmar
from tests.views import view

RANK = 4
CFG = view(BackboneConfig, {"model.vocab_size": 128, "model.hidden_size": 64, "model.intermediate_size": 128,
                      "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2, "model.head_dim": 16,
                      "model.rope_theta": 10_000.0, "model.tie_word_embeddings": False, "model.max_seq_len": 64,
                      "model.init_std": 0.1, "model.dtype": "float32",
                      "model.lora.rank": RANK, "model.lora.alpha": 8.0})
BASE = dataclasses.replace(CFG, lora_rank=0)
IDS = jax.random.randint(jax.random.key(1), (2, 12), 0, CFG.vocab_size)


@functools.partial(jax.jit, static_argnames="cfg")
def logits(cfg, params, ids):
  return Backbone(cfg).apply({"params": params}, ids).logits


@functools.lru_cache(maxsize=None)  # Trees of immutable jax arrays: safe to share between tests.
def init(cfg=CFG):
  return nn.meta.unbox(Backbone(cfg).init(jax.random.key(0), IDS))["params"]


def without_lora(tree):
  if not isinstance(tree, dict):
    return tree
  return {k: without_lora(v) for k, v in tree.items() if k not in (lora.LORA_A, lora.LORA_B)}


def randomise_b(params, seed=3, std=0.05):
  """Nonzero B everywhere, as after training."""
  def fill(path, x):
    if lora.LORA_B not in lora._keys(path):
      return x
    key = jax.random.fold_in(jax.random.key(seed), hash(jax.tree_util.keystr(path)) % 2**31)
    return std * jax.random.normal(key, x.shape, x.dtype)
  return jax.tree_util.tree_map_with_path(fill, params)


def test_factors_are_2d_beside_every_targeted_kernel_stacked_over_layers():
  params = init(dataclasses.replace(CFG, lora_targets=("q", "o", "down")))
  layer = params["layers"]
  assert layer["self_attn"]["q_proj"]["lora_a"].shape == (2, 64, RANK)
  assert layer["self_attn"]["q_proj"]["lora_b"].shape == (2, RANK, 4 * 16)  # (heads, head_dim) flattened.
  assert layer["self_attn"]["o_proj"]["lora_a"].shape == (2, 4 * 16, RANK)
  assert layer["self_attn"]["o_proj"]["lora_b"].shape == (2, RANK, 64)
  assert layer["mlp"]["down_proj"]["lora_a"].shape == (2, 128, RANK)
  for untargeted in (layer["self_attn"]["k_proj"], layer["self_attn"]["v_proj"], layer["mlp"]["up_proj"]):
    assert set(untargeted) <= {"kernel", "bias"}
  assert not np.any(np.asarray(layer["self_attn"]["q_proj"]["lora_b"]))  # B starts at zero.


def test_a_fresh_lora_model_is_the_base_model():
  params = init()
  base = logits(BASE, without_lora(params), IDS)
  np.testing.assert_array_equal(np.asarray(logits(CFG, params, IDS)), np.asarray(base))


def test_alpha_over_rank_scales_the_update_by_hand():
  # One MLP projection, 2 -> 2, rank 2, alpha 6: y = x W + (6 / 2) (x A) B, numbers worked on paper.
  cfg = dataclasses.replace(CFG, lora_rank=2, lora_alpha=6.0, lora_targets=("up",))
  params = {"kernel": jnp.array([[1.0, 0.0], [0.0, 1.0]]), lora.LORA_A: jnp.array([[1.0, 2.0], [0.0, 1.0]]),
            lora.LORA_B: jnp.array([[1.0, 0.0], [0.0, -1.0]])}
  x = jnp.array([[1.0, 2.0]])
  # x W = [1, 2]; x A = [1, 4]; times 3 = [3, 12]; times B = [3, -12]; sum [4, -10].
  y = Linear(cfg, features=2, axes=("embed", "mlp"), target="up").apply({"params": params}, x)
  np.testing.assert_array_equal(np.asarray(y), [[4.0, -10.0]])
  # The merge folds the same 3 A B into the kernel: W + 3 [[1, -2], [0, -1]].
  np.testing.assert_array_equal(np.asarray(lora.merge(params, cfg)["kernel"]), [[4.0, -6.0], [0.0, -2.0]])


@pytest.mark.parametrize("scan", [True, False])
def test_merged_rank0_model_equals_the_lora_model(scan):
  cfg = dataclasses.replace(CFG, scan_layers=scan)
  params = randomise_b(init(cfg))
  with_lora = logits(cfg, params, IDS)
  merged = lora.merge(params, cfg)
  assert not lora.has_lora(merged)
  assert jax.tree.structure(merged) == jax.tree.structure(init(dataclasses.replace(cfg, lora_rank=0)))
  out = logits(dataclasses.replace(cfg, lora_rank=0), merged, IDS)
  base = logits(dataclasses.replace(cfg, lora_rank=0), without_lora(params), IDS)
  assert float(jnp.abs(with_lora - base).max()) > 0.1  # LoRA really changes the model...
  # ... and the merge reproduces it to float32 rounding: logits are O(1), sums of O(100) terms.
  np.testing.assert_allclose(np.asarray(out), np.asarray(with_lora), atol=1e-5, rtol=1e-5)


def test_merge_refuses_lora_params_with_a_rank0_config():
  with pytest.raises(ValueError, match="lora_rank=0"):
    lora.merge(init(), BASE)


@functools.lru_cache(maxsize=None)
def mmar_setup(rank=RANK):
  config = test_mmar.tiny_config()
  config.model.lora.rank, config.model.lora.alpha = rank, 8.0
  configs.validate(config)
  cfg = MMARConfig.from_config(config, test_mmar.MASK_ID)
  batch, image_tokens, generate_mask = test_mmar.make_batch()
  params = dict(nn.meta.unbox(MMAR(cfg).init(jax.random.key(0), batch, image_tokens, generate_mask,
                                             jax.random.key(1)))["params"])
  # The head's zero-initialised output layers would block gradients into z (DiT); perturb them.
  leaves, treedef = jax.tree.flatten(params["head"])
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params["head"] = jax.tree.unflatten(treedef, [x + 0.02 * jax.random.normal(k, x.shape)
                                                for x, k in zip(leaves, keys)])
  return cfg, params


def adam_steps(cfg, params, tx, steps=2):
  batch, image_tokens, generate_mask = test_mmar.make_batch()
  loss = lambda p: test_mmar.forward(cfg, p, batch, image_tokens, generate_mask).loss  # noqa: E731
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    params, opt_state = step(params, opt_state)
  return params, opt_state


def leaves_by_path(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_partitioned_adam_freezes_base_weights_bit_for_bit_and_trains_the_rest():
  cfg, params = mmar_setup()
  train_rows = (test_mmar.MASK_ID, 6)  # The special tokens' rows: <mask> is used by generation.
  tx = lora.partition_optimizer(optax.adamw(1e-2, weight_decay=0.1), params, RANK, train_rows=train_rows)
  # Two steps: at step one A's gradient is zero (B = 0), so only the second moves A by its gradient.
  new, opt_state = adam_steps(cfg, params, tx)
  before, after = leaves_by_path(params), leaves_by_path(new)
  for path, old in before.items():
    if "'backbone'" not in path:
      assert not np.array_equal(after[path], old), f"{path} (adapter/head) did not train"
    elif "lora_" in path:
      assert not np.array_equal(after[path], old), f"{path} (LoRA) did not train"
    elif "embed_tokens" in path or "lm_head" in path:
      rows = np.zeros(cfg.backbone.vocab_size, bool)
      rows[list(train_rows)] = True
      old_rows, new_rows = (old, after[path]) if "embed_tokens" in path else (old.T, after[path].T)
      assert old_rows[~rows].tobytes() == new_rows[~rows].tobytes(), f"{path}: a frozen row moved"
      assert not np.array_equal(old_rows[test_mmar.MASK_ID], new_rows[test_mmar.MASK_ID]), path
    else:
      assert old.tobytes() == after[path].tobytes(), f"{path} (base weight) moved"
  # multi_transform keeps Adam's moments for the trained leaves only.
  state_size = sum(x.size for x in jax.tree.leaves(opt_state) if hasattr(x, "size"))
  trained = sum(x.size for p, x in before.items() if "'backbone'" not in p or "lora_" in p
                or "embed_tokens" in p or "lm_head" in p)
  assert state_size <= 2 * trained + 16 < 2 * sum(x.size for x in before.values())


def test_without_train_rows_the_whole_table_trains_and_rank0_trains_everything():
  cfg, params = mmar_setup()
  mask = lora.trainable_mask(params, RANK)
  assert mask["backbone"]["embed_tokens"] is True and mask["backbone"]["lm_head"] is True
  assert mask["backbone"]["layers"]["self_attn"]["q_proj"]["kernel"] is False
  assert mask["backbone"]["layers"]["self_attn"]["q_proj"]["lora_a"] is True
  assert all(jax.tree.leaves(mask["adapter"])) and all(jax.tree.leaves(mask["head"]))
  assert all(jax.tree.leaves(lora.trainable_mask(params, 0)))
  with pytest.raises(ValueError, match="hold no lora_a"):
    lora.trainable_mask(without_lora(params), RANK)


def test_lora_factors_shard_over_fsdp_and_tensor():
  config = configs.base_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  mesh, rules = mesh_lib.make_mesh(config), config.mesh.logical_axis_rules
  params = randomise_b(init())
  expected = logits(CFG, params, IDS)
  variables, shardings = sharding.init_sharded(Backbone(CFG).init, mesh, rules, jax.random.key(0), IDS)
  q = variables["params"]["layers"]["self_attn"]["q_proj"]
  P = jax.sharding.PartitionSpec
  assert q["lora_a"].sharding.spec == P(None, "fsdp", None)  # (layers, embed, lora)
  # (layers, lora, heads x head_dim): split over tensor and FSDP, as it has no embed axis.
  assert q["lora_b"].sharding.spec == P(None, None, ("tensor", "fsdp"))
  assert q["lora_b"].addressable_shards[0].data.shape == (2, RANK, 64 // 4)
  down = shardings["params"]["layers"]["mlp"]["down_proj"]
  assert down["lora_a"].spec == P(None, ("tensor", "fsdp"), None) and down["lora_b"].spec == P(None, None, "fsdp")
  placed = jax.device_put({"params": params}, shardings)
  with sharding.activate(mesh, rules):
    out = jax.jit(lambda v: Backbone(CFG).apply(v, IDS).logits)(placed)
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-5, rtol=0)


def test_presets_default_to_lora_and_the_base_to_full_fine_tuning():
  assert configs.base_config().model.lora.rank == 0
  for name in ("mmar_0p5b", "mmar_7b"):
    cfg = BackboneConfig.from_config(configs.load_config(f"configs/{name}.py"))
    assert cfg.lora_rank == 128 and cfg.lora_alpha == 256.0 and cfg.lora_targets == configs.LORA_TARGETS


@pytest.mark.parametrize("override,message", [
    ("model.lora.rank=-1", r"config\.model\.lora\.rank=-1 must be an int in \[0, config\.model\.hidden_size=128\]"),
    ("model.lora.rank=129", r"config\.model\.lora\.rank=129"),
    ("model.lora.alpha=0.0", r"config\.model\.lora\.alpha=0\.0 must be positive"),
    ("model.lora.targets=('q','query')", r"config\.model\.lora\.targets=\('q', 'query'\).*unknown: \['query'\]"),
    ("model.lora.targets=('q','q')", r"config\.model\.lora\.targets=\('q', 'q'\) must be distinct"),
    ("model.lora.targets=()", r"config\.model\.lora\.targets=\(\) must be distinct"),
])
def test_bad_lora_fields_fail_naming_the_field(override, message):
  with pytest.raises(configs.ConfigError, match=message):
    configs.load_config("configs/demo.py", [override])
