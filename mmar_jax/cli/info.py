"""mmar-jax info: a config's parameter counts, its mesh, and one timed sharded forward pass."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from mmar_jax import configs
from mmar_jax.models.backbone import Backbone, BackboneConfig
from mmar_jax.train import sharding
from mmar_jax.train import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py.", lock_config=True)
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sequences in the forward pass (divisible by the data axes).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Tokens per sequence in the forward pass.")


def parameter_table(params) -> list[tuple[str, int]]:
  """(top-level module, parameter count) rows."""
  return [(name, sum(x.size for x in jax.tree.leaves(tree))) for name, tree in params.items()]


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise flags.ValidationError("--config is required, e.g. --config=configs/demo.py")
  configs.validate(config, num_devices=jax.device_count())
  cfg = BackboneConfig.from_config(config)
  mesh = mesh_lib.make_mesh(config)
  rules = config.mesh.logical_axis_rules
  ids = jax.random.randint(jax.random.key(config.seed), (_BATCH.value, _SEQ_LEN.value), 0, cfg.vocab_size)
  variables, _ = sharding.init_sharded(Backbone(cfg).init, mesh, rules, jax.random.key(config.seed), ids)

  print(f"config {config.name}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, heads {cfg.num_heads}/"
        f"{cfg.num_kv_heads} (q/kv), vocab {cfg.vocab_size}, compute {cfg.dtype}")
  print(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} device(s)")
  rows = parameter_table(variables["params"])
  for name, count in rows:
    print(f"  {name:<16} {count:>14,d}")
  total = sum(count for _, count in rows)
  per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(variables))
  print(f"  {'total':<16} {total:>14,d} parameters; {per_device / 2**20:,.1f} MiB on each device")

  with sharding.activate(mesh, rules):
    forward = jax.jit(lambda v, x: Backbone(cfg).apply(v, x).logits)
    logits = forward(variables, ids).block_until_ready()  # Compile and warm up.
    start = time.perf_counter()
    logits = forward(variables, ids).block_until_ready()
    seconds = time.perf_counter() - start
  next_token_loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], -1))
  print(f"forward {tuple(ids.shape)} -> logits {tuple(logits.shape)} in {seconds * 1e3:.1f} ms "
        f"({ids.size / seconds:,.0f} tokens/s); untrained next-token loss {float(next_token_loss):.3f} "
        f"(uniform: {float(jnp.log(cfg.vocab_size)):.3f})")
