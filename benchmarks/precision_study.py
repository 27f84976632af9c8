"""The error that bfloat16 adds to the x0 estimate, per timestep bucket, for eps, x0 and v heads.

    python benchmarks/precision_study.py [--steps 1500] [--buckets 10]

Trains one head per parameterisation on the toy 2-D mixture (mmar_jax/diffusion/toy.py), then
runs each trained head in float32 and in bfloat16 on the same noisy inputs. It prints, per bucket
of training steps, the output error bfloat16 adds, the resulting x0 error, and the paper's
prediction (coefficient x output error); then the paper's DDIM-step coefficients along the
schedule. MMAR's claim: eps's x0 error grows without bound as alpha_bar -> 0; v's stays within
the output error.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from mmar_jax.diffusion import toy
from mmar_jax.diffusion.precision import ddim_step_error_coefficient, measure_x0_error
from mmar_jax.diffusion.schedule import cosine_schedule


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1500, help="training steps of each head")
  parser.add_argument("--buckets", type=int, default=10)
  parser.add_argument("--samples", type=int, default=4096)
  args = parser.parse_args()
  schedule = cosine_schedule(1000)
  cfg = toy.head_config(depth=3, width=256)
  x0, classes = toy.draw(jax.random.key(7), args.samples)
  z = toy.condition(classes)
  print(f"head depth {cfg.depth} width {cfg.width}, trained {args.steps} steps per parameterisation; "
        f"{args.samples} samples per bucket; errors are mean absolute values")
  for prediction in ("eps", "x0", "v"):
    params, losses = toy.train_head(cfg, schedule, prediction=prediction, steps=args.steps)
    print(f"\n{prediction}-prediction (final training loss {float(losses[-100:].mean()):.4f})")
    print(f"{'steps':>10} {'min alpha_bar':>14} {'output err':>11} {'x0 err':>11} {'predicted':>11} {'x0/output':>10}")
    for b in measure_x0_error(cfg, params, prediction, schedule, x0, z, jax.random.key(8), args.buckets):
      print(f"{b.steps[0]:>4}-{b.steps[1]:<5} {b.alpha_bar:>14.3e} {b.output_error:>11.3e} {b.x0_error:>11.3e} "
            f"{b.predicted:>11.3e} {b.x0_error / max(b.output_error, 1e-30):>10.2f}")
  print("\nDDIM step coefficient |d x_(t-1) / d output| along the 1000-step cosine schedule (the paper's bound)")
  a, a_prev = schedule.alphas_cumprod, schedule.alphas_cumprod_prev
  print(f"{'t':>5} {'alpha_bar':>11} {'eps':>11} {'v':>8}")
  for t in (0, 250, 500, 750, 900, 990, 995, 999):
    eps_c, v_c = ddim_step_error_coefficient("eps", a[t], a_prev[t]), ddim_step_error_coefficient("v", a[t], a_prev[t])
    print(f"{t:>5} {float(a[t]):>11.3e} {float(eps_c):>11.3e} {float(v_c):>8.4f}")
  print(f"max over t: eps {float(jnp.max(ddim_step_error_coefficient('eps', a, a_prev))):.3e}, "
        f"v {float(jnp.max(ddim_step_error_coefficient('v', a, a_prev))):.4f} (bound: 1)")


if __name__ == "__main__":
  main()
