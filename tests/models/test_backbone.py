"""Properties of the Qwen2 backbone that do not need a reference implementation."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax import configs
from mmar_jax.models.backbone import Backbone, BackboneConfig, KVCache
from mmar_jax.train import sharding
from mmar_jax.train import mesh as mesh_lib
from tests.views import view

CFG = view(BackboneConfig, {"model.vocab_size": 128, "model.hidden_size": 64, "model.intermediate_size": 128,
                      "model.num_layers": 2, "model.num_heads": 4, "model.num_kv_heads": 2, "model.head_dim": 16,
                      "model.rope_theta": 10_000.0, "model.tie_word_embeddings": False, "model.max_seq_len": 64,
                      "model.init_std": 0.1, "model.dtype": "float32"})


def init(cfg=CFG, length=12):
  ids = jax.random.randint(jax.random.key(1), (4, length), 0, cfg.vocab_size)
  return nn.meta.unbox(Backbone(cfg).init(jax.random.key(0), ids)), ids


@functools.partial(jax.jit, static_argnames=("cfg", "compute_logits"))
def forward(cfg, variables, ids, **kwargs):
  return Backbone(cfg).apply(variables, ids, **kwargs)


def mesh_config(data, fsdp, tensor):
  config = configs.base_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = data, fsdp, tensor
  return config


@pytest.mark.parametrize("data,fsdp,tensor", [(2, 2, 2), (1, 4, 2), (8, 1, 1)])
def test_sharded_forward_equals_unsharded_and_params_are_split(data, fsdp, tensor):
  variables, ids = init()
  expected = forward(CFG, variables, ids).logits
  config = mesh_config(data, fsdp, tensor)
  mesh = mesh_lib.make_mesh(config)
  rules = config.mesh.logical_axis_rules
  sharded, shardings = sharding.init_sharded(Backbone(CFG).init, mesh, rules, jax.random.key(0), ids)
  with sharding.activate(mesh, rules):
    logits = jax.jit(lambda v, x: forward(CFG, v, x).logits)(sharded, ids)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5, rtol=0)

  # The rule table really splits the weights: vocab over 'tensor', embed over 'fsdp'.
  embed = sharded["params"]["embed_tokens"]
  assert embed.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  shard_shape = embed.addressable_shards[0].data.shape
  assert shard_shape == (CFG.vocab_size // tensor, CFG.hidden_size // fsdp)
  q_kernel = sharded["params"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q_kernel.addressable_shards[0].data.shape == (CFG.num_layers, CFG.hidden_size // fsdp,
                                                         CFG.num_heads // tensor, CFG.head_dim)
  assert shardings["params"]["layers"]["mlp"]["gate_proj"]["kernel"].spec == jax.sharding.PartitionSpec(
      None, "fsdp", "tensor")


def test_the_kv_cache_is_born_sharded_as_the_rule_table_says():
  config = mesh_config(2, 2, 2)
  mesh, rules = mesh_lib.make_mesh(config), config.mesh.logical_axis_rules
  with sharding.activate(mesh, rules):
    cache = jax.jit(lambda: KVCache.zeros(CFG, 4, 16))()
  # [layers, b, s, k, e]: the batch over data x fsdp, the 2 kv heads over tensor; nothing gathered.
  assert cache.key.sharding.spec == jax.sharding.PartitionSpec(None, ("data", "fsdp"), None, "tensor")
  assert cache.key.addressable_shards[0].data.shape == (CFG.num_layers, 1, 16, 1, CFG.head_dim)
  assert cache.valid.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_indivisible_sharding_names_the_parameter():
  cfg = dataclasses.replace(CFG, num_kv_heads=1, num_heads=2, head_dim=32)  # 1 kv head over tensor=2.
  config = mesh_config(1, 4, 2)
  mesh = mesh_lib.make_mesh(config)
  ids = jnp.zeros((4, 8), jnp.int32)
  with pytest.raises(configs.ConfigError, match=r"k_proj.*'kv_heads', size 1.*\('tensor',\)"):
    sharding.init_sharded(Backbone(cfg).init, mesh, config.mesh.logical_axis_rules, jax.random.key(0), ids)


def test_scan_remat_and_unrolled_layers_agree():
  variables, ids = init()

  def loss_and_grads(cfg, params):
    return jax.value_and_grad(lambda p: forward(cfg, {"params": p}, ids).logits.std())(params)

  expected_loss, expected_grads = loss_and_grads(CFG, variables["params"])
  for policy in ("full", "dots", "dots_with_no_batch_dims"):  # Remat changes the backward pass only.
    loss, grads = loss_and_grads(dataclasses.replace(CFG, remat_policy=policy), variables["params"])
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, expected_grads)

  stacked = variables["params"]["layers"]
  unrolled = {k: v for k, v in variables["params"].items() if k != "layers"}
  unrolled.update({f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(CFG.num_layers)})
  loss, _ = loss_and_grads(dataclasses.replace(CFG, scan_layers=False), unrolled)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)


def test_compiled_size_does_not_grow_with_depth():
  ids = jnp.zeros((2, 8), jnp.int32)

  def hlo_size(layers):
    cfg = dataclasses.replace(CFG, num_layers=layers)
    abstract = jax.eval_shape(Backbone(cfg).init, jax.random.key(0), ids)
    return len(forward.lower(cfg, nn.meta.unbox(abstract), ids).as_text())

  assert hlo_size(16) < 1.05 * hlo_size(2)


def test_kv_cache_decoding_equals_full_forward():
  variables, ids = init(length=12)
  full = forward(CFG, variables, ids).logits
  cache = KVCache.zeros(CFG, ids.shape[0], 16)
  out = forward(CFG, variables, ids[:, :7], kv_cache=cache)
  pieces = [out.logits]
  for t in range(7, 12):  # One token at a time after a 7-token prefill.
    out = forward(CFG, variables, ids[:, t:t + 1], kv_cache=out.kv_cache)
    pieces.append(out.logits)
  assert int(out.kv_cache.index) == 12
  np.testing.assert_allclose(np.concatenate(pieces, 1), np.asarray(full), atol=1e-5, rtol=0)


def test_packed_segments_do_not_see_each_other():
  variables, ids = init(length=12)
  segments = jnp.asarray([[1] * 5 + [2] * 7] * 4)
  positions = jnp.asarray([list(range(5)) + list(range(7))] * 4)
  packed = forward(CFG, variables, ids, positions=positions, segment_ids=segments).logits
  alone_first = forward(CFG, variables, ids[:, :5]).logits
  alone_second = forward(CFG, variables, ids[:, 5:]).logits
  np.testing.assert_allclose(np.asarray(packed[:, :5]), np.asarray(alone_first), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(packed[:, 5:]), np.asarray(alone_second), atol=1e-5, rtol=0)


def test_arbitrary_mask_and_hidden_states():
  """A full (bidirectional) mask lets early positions see later ones; hidden states come back."""
  variables, ids = init(length=6)
  full_mask = jnp.ones((4, 6, 6), bool)
  out = forward(CFG, variables, ids, attention_mask=full_mask, compute_logits=False)
  assert out.logits is None and out.hidden.shape == (4, 6, CFG.hidden_size)
  changed = ids.at[:, -1].set((ids[:, -1] + 1) % CFG.vocab_size)
  moved = forward(CFG, variables, changed, attention_mask=full_mask, compute_logits=False).hidden
  assert float(jnp.abs(moved[:, 0] - out.hidden[:, 0]).max()) > 1e-4
  causal = forward(CFG, variables, ids).hidden
  causal_changed = forward(CFG, variables, changed).hidden
  np.testing.assert_array_equal(np.asarray(causal[:, :-1]), np.asarray(causal_changed[:, :-1]))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = dataclasses.replace(CFG, dtype="bfloat16")
  variables, ids = init(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  out = forward(cfg, variables, ids)
  assert out.logits.dtype == jnp.float32 and out.hidden.dtype == jnp.bfloat16
  expected = forward(CFG, variables, ids).logits
  # bfloat16 keeps 8 significant bits: a rounding errs by at most 2^-8 relative (0.39%), rms about
  # 2^-8 / sqrt(3) = 0.23%. Some 15 roundings a layer feed the logits (norm, q/k/v, scores, softmax,
  # o, residual, norm, gate/up/down, residual) over 2 layers; independent, they add in quadrature:
  # sqrt(30) * 0.23% = 1.2% expected. Measured: rms 0.93% of the logits' rms, max 0.98% of the
  # largest logit (1.0-1.7% over four seeds). 3% leaves room; one extra rounding to float8_e4m3
  # (4 significant bits) at the LM head's input gives 4.9% and fails, as a wrong computation would.
  assert float(jnp.abs(out.logits - expected).max()) < 0.03 * float(jnp.abs(expected).max())
