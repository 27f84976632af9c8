"""Analytic FLOPs per token of each preset beside XLA's cost analysis of the compiled program.

    python benchmarks/flops.py [--seq_len 1024] [--batch 1]

Compiles (never runs) the forward pass and a training step's loss + gradients from abstract
shapes, so even mmar_7b needs no memory. The convention is written in mmar_jax/train/flops.py
(PaLM's: full seq_len x seq_len attention, training = 3 x forward); XLA counts the dense
attention kernel whole too, so the two should agree to within the uncounted elementwise work.
"""

from __future__ import annotations

import argparse
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmar_jax import configs
from mmar_jax.models.backbone import Backbone, BackboneConfig
from mmar_jax.train.flops import backbone_flops_per_token


def xla_flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--presets", default="demo,mmar_0p5b,mmar_7b")
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, batch {args.batch} x seq_len {args.seq_len}; GFLOPs per token")
  print(f"{'preset':<10} {'analytic fwd':>13} {'XLA fwd':>9} {'ratio':>6} {'analytic train':>15} "
        f"{'XLA train':>10} {'ratio':>6} {'attention share':>16}")
  for name in args.presets.split(","):
    # Unrolled layers: XLA's cost analysis counts a while loop's body (nn.scan) once, not per trip.
    # float32 and no remat: no recomputation or dtype-dependent fusions in its count.
    cfg = dataclasses.replace(BackboneConfig.from_config(configs.load_config(f"configs/{name}.py")),
                              dtype="float32", remat_policy="none", scan_layers=False)
    model = Backbone(cfg)
    ids = jax.ShapeDtypeStruct((args.batch, args.seq_len), jnp.int32)
    params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), ids))

    def loss(p, x):
      logits = model.apply(p, x).logits
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), x[:, 1:, None], -1))

    tokens = args.batch * args.seq_len
    fwd = xla_flops(lambda p, x: model.apply(p, x).logits, params, ids) / tokens
    train = xla_flops(jax.grad(loss), params, ids) / tokens
    analytic = backbone_flops_per_token(cfg, args.seq_len)
    print(f"{name:<10} {analytic.forward / 1e9:>13.4f} {fwd / 1e9:>9.4f} {fwd / analytic.forward:>6.3f} "
          f"{analytic.training / 1e9:>15.4f} {train / 1e9:>10.4f} {train / analytic.training:>6.3f} "
          f"{analytic.attention / analytic.forward:>16.1%}")


if __name__ == "__main__":
  main()
