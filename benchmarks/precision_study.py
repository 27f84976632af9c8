"""Precision study: the x0 and DDIM-step error that a bfloat16 head adds, per parameterisation.

Trains one toy head per parameterisation (eps, x0, v) in float32, then runs the same parameters
with the forward pass in float32 and in bfloat16 and prints, per timestep bucket, the RMS error
the low precision adds to the head's output (delta), to the implied x0 and to a DDIM step t ->
t-1, each beside the paper's bound (coefficient x delta). Usage:

  python benchmarks/precision_study.py [--steps 1000] [--per_bucket 4096]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax

from mmar_jax import configs
from mmar_jax.diffusion import precision, toy
from mmar_jax.models.diffusion_head import HeadConfig


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--per_bucket", type=int, default=4096)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=3)
  args = parser.parse_args()
  head = dataclasses.replace(HeadConfig.from_config(configs.with_values(
      {"head.depth": args.depth, "head.width": args.width, "head.dtype": "float32"})), token_channels=2)
  data = toy.ToyMixture()
  print(f"head depth {args.depth} width {args.width}, {args.steps} float32 training steps on the 2-D mixture; "
        f"{args.per_bucket} samples per bucket; errors are RMS of (bfloat16 - float32)")
  for prediction in ("eps", "x0", "v"):
    start = time.perf_counter()
    params, loss = toy.train_head(head, data, jax.random.key(0), prediction=prediction, steps=args.steps)
    rows = precision.bucket_errors(head, params, prediction, data, jax.random.key(1), per_bucket=args.per_bucket)
    print(f"\n## {prediction}-prediction (final loss {loss:.4f}, {time.perf_counter() - start:.0f} s)")
    print("| t | alpha_bar | delta (output) | x0 error | x0 bound | DDIM step error | paper's step bound |")
    print("|---|---|---|---|---|---|---|")
    for b in rows:
      print(f"| {b.t_lo}-{b.t_hi - 1} | {b.alpha_bar:.2e} | {b.out_err:.2e} | {b.x0_err:.2e} | {b.x0_bound:.2e} "
            f"| {b.step_err:.2e} | {b.step_bound:.2e} |")


if __name__ == "__main__":
  main()
