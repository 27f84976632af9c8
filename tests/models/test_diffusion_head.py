"""The MAR diffusion head: zero-initialised output, logical axes, float32 timesteps, remat, sharding."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmar_jax import configs
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig, timestep_features
from mmar_jax.train import sharding
from mmar_jax.train import mesh as mesh_lib
from tests.views import view

CFG = view(HeadConfig, {"head.depth": 2, "head.width": 64, "head.dtype": "float32"}, token_channels=4)


def _inputs(n=16, dz=24, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(k1, (n, CFG.token_channels)), jax.random.randint(k2, (n,), 0, 1000).astype(jnp.float32),
          jax.random.normal(k3, (n, dz)))


def _randomise(params, seed=1):
  """Every parameter nonzero, so that the zero-initialised layers take part in the comparison."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_untrained_head_predicts_zero_like_mar():
  head = DiffusionHead(CFG)
  params = nn.meta.unbox(head.init(jax.random.key(0), *_inputs()))
  out = head.apply(params, *_inputs(seed=3))
  assert out.shape == (16, CFG.token_channels)
  np.testing.assert_array_equal(np.asarray(out), 0.0)
  for i in range(CFG.depth):  # Modulations start at zero: each residual block starts as the identity.
    np.testing.assert_array_equal(np.asarray(params["params"][f"res_blocks_{i}"]["adaLN_modulation"]["kernel"]), 0.0)


def test_every_parameter_names_ruled_logical_axes():
  boxed = DiffusionHead(CFG).init(jax.random.key(0), *_inputs())
  known = {name for name, _ in configs.DEFAULT_LOGICAL_AXIS_RULES}
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim
    assert {n for n in leaf.names if n is not None} <= known


def test_timestep_features_are_float32_and_separate_nearby_steps():
  f = timestep_features(jnp.array([998.0, 999.0]), 256)
  assert f.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(f[0] - f[1]))) > 0.5
  # The reason: bfloat16 values in [512, 1024) are 4 apart, so 998 and 999 both round to 1000.
  assert jnp.array(998.0, jnp.bfloat16) == jnp.array(999.0, jnp.bfloat16) == 1000


def test_bfloat16_head_tracks_float32_head():
  params = _randomise(nn.meta.unbox(DiffusionHead(CFG).init(jax.random.key(0), *_inputs())))
  x = _inputs(seed=5)
  out32 = DiffusionHead(CFG).apply(params, *x)
  out16 = DiffusionHead(CFG.replace(dtype="bfloat16")).apply(params, *x)
  assert out16.dtype == jnp.bfloat16
  rel = float(jnp.linalg.norm(out16.astype(jnp.float32) - out32) / jnp.linalg.norm(out32))
  assert rel < 0.05, rel  # bfloat16 keeps 8 bits: a few rounding steps of 0.4% each.


def test_remat_gives_the_same_gradients():
  params = _randomise(nn.meta.unbox(DiffusionHead(CFG).init(jax.random.key(0), *_inputs())))
  x = _inputs(seed=7)
  grads = [jax.grad(lambda p, h=h: jnp.sum(h.apply(p, *x) ** 2))(params)
           for h in (DiffusionHead(CFG), DiffusionHead(CFG.replace(remat=True)))]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_head_initialises_sharded_over_fsdp_and_tensor():
  config = configs.base_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  mesh = mesh_lib.make_mesh(config)
  head = DiffusionHead(CFG)
  params, shardings = sharding.init_sharded(head.init, mesh, config.mesh.logical_axis_rules, jax.random.key(0),
                                            *_inputs())
  kernel = params["params"]["res_blocks_0"]["mlp_in"]["kernel"]  # ('embed', 'mlp') -> (fsdp, tensor)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (CFG.width // 2, CFG.width // 2)
  # Nonzero values everywhere (the output layer starts at zero), placed on the same shards: the
  # sharded forward must compute what one device computes from the same numbers.
  values = _randomise(jax.device_get(params))
  placed = jax.device_put(values, shardings)
  assert placed["params"]["res_blocks_0"]["mlp_in"]["kernel"].sharding.spec == kernel.sharding.spec
  x = _inputs(seed=2)
  with sharding.activate(mesh, config.mesh.logical_axis_rules):
    out = jax.jit(head.apply)(placed, *x)
  expected = head.apply(jax.device_put(values, jax.devices()[0]), *(jax.device_put(v, jax.devices()[0]) for v in x))
  assert out.shape == (16, CFG.token_channels) and float(jnp.abs(expected).max()) > 1e-2
  # float32 sums split over shards add in another order: ~1e-7 of the partial sums (~10) apart.
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_head_config_reads_the_preset():
  config = configs.load_config("configs/mmar_7b.py")
  cfg = HeadConfig.from_config(config)
  assert (cfg.depth, cfg.width, cfg.token_channels) == (12, 1536, 16)  # KL-16 tokens: 16 channels.
  demo = HeadConfig.from_config(configs.load_config("configs/demo.py"))
  assert demo.token_channels == 8 * 8 * 3  # The demo's 8x8 RGB pixel patches.


@pytest.mark.parametrize("override,message", [
    ("head.width=0", r"config\.head\.width=0 must be positive"),
    ("head.dtype=fp8", r"config\.head\.dtype='fp8' must be one of"),
    ("diffusion.prediction=score", r"config\.diffusion\.prediction='score' must be one of"),
    ("diffusion.num_sampling_steps=2000", r"config\.diffusion\.num_sampling_steps=2000 must be at most"),
    ("diffusion.temperature=0.0", r"config\.diffusion\.temperature=0\.0 must be positive"),
    ("diffusion.sampler=euler", r"config\.diffusion\.sampler='euler'"),
])
def test_bad_head_and_diffusion_fields_fail_by_name(override, message):
  with pytest.raises(configs.ConfigError, match=message):
    configs.load_config("configs/demo.py", [override])
