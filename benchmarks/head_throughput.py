"""Head throughput: diffusion_batch_mul folded into one batch against a loop, and the head's share of a step.

All on demo shapes (configs/demo.py): `batch` sequences of `seq_len` tokens of which `image_tokens`
are image positions whose hidden states condition the head. Times are medians of fwd+bwd
(`jax.value_and_grad`, jitted) on this machine's default backend. Usage:

  python benchmarks/head_throughput.py [--batch 8] [--seq_len 256] [--image_tokens 128] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For benchmarks.report.

from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.diffusion import losses  # noqa: E402
from mmar_jax.diffusion.schedule import Schedule  # noqa: E402
from mmar_jax.models.backbone import Backbone, BackboneConfig  # noqa: E402
from mmar_jax.models.diffusion_head import DiffusionHead, HeadConfig  # noqa: E402


def _median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--image_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=20)
  report.add_json_flag(parser)
  args = parser.parse_args()
  config = configs.load_config(args.config)
  head_cfg, bb_cfg = HeadConfig.from_config(config), BackboneConfig.from_config(config)
  d = config.diffusion
  schedule, mul = Schedule.from_config(d), d.diffusion_batch_mul
  head, backbone = DiffusionHead(head_cfg), Backbone(bb_cfg)
  b, l, n, c = args.batch, args.seq_len, args.image_tokens, head_cfg.token_channels

  keys = jax.random.split(jax.random.key(0), 6)
  ids = jax.random.randint(keys[0], (b, l), 0, bb_cfg.vocab_size)
  x0 = jax.random.normal(keys[1], (b, n, c))
  z = jax.random.normal(keys[2], (b, n, bb_cfg.hidden_size))
  head_params = nn.meta.unbox(head.init(keys[3], x0[0], jnp.zeros(n), z[0]))
  bb_params = nn.meta.unbox(backbone.init(keys[4], ids))
  rng = keys[5]

  def head_loss(p, z, rng):
    return losses.diffusion_loss(lambda *a: head.apply(p, *a), x0, z, None, rng, schedule=schedule,
                                 prediction=d.prediction, batch_mul=mul)

  def head_loss_loop(p, z, rng):
    # The same draws' count as a Python loop of `mul` single-draw head calls.
    return sum(losses.diffusion_loss(lambda *a: head.apply(p, *a), x0, z, None, r, schedule=schedule,
                                     prediction=d.prediction, batch_mul=1) for r in jax.random.split(rng, mul)) / mul

  def backbone_loss(p):
    out = backbone.apply(p, ids)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out.logits[:, :-1], ids[:, 1:])), out.hidden

  def joint_loss(params, rng):
    ce, hidden = backbone_loss(params[0])
    return ce + head_loss(params[1], hidden[:, -n:], rng)  # The last n positions play the image tokens.

  grad = lambda f, **kw: jax.jit(jax.value_and_grad(f, **kw))  # noqa: E731
  t_fold = _median_ms(grad(head_loss), head_params, z, rng, repeats=args.repeats)
  t_loop = _median_ms(grad(head_loss_loop), head_params, z, rng, repeats=args.repeats)
  t_bb = _median_ms(grad(backbone_loss, has_aux=True), bb_params, repeats=args.repeats)
  t_joint = _median_ms(grad(joint_loss), (bb_params, head_params), rng, repeats=args.repeats)

  rows = b * n * mul
  print(f"backend {jax.default_backend()}, {args.config}: head depth {head_cfg.depth} width {head_cfg.width} "
        f"{head_cfg.dtype}, diffusion_batch_mul {mul}; batch {b} x {l} tokens, {n} image tokens each "
        f"({rows} head rows); backbone {bb_cfg.num_layers} layers x {bb_cfg.hidden_size} {bb_cfg.dtype}")
  print("| fwd+bwd | median ms |")
  print("|---|---|")
  print(f"| head, batch_mul folded into one batch | {t_fold:.2f} |")
  print(f"| head, loop over {mul} repeats | {t_loop:.2f} |")
  print(f"| backbone (CE) | {t_bb:.2f} |")
  print(f"| backbone + head (joint step) | {t_joint:.2f} |")
  print(f"folded/loop speed-up {t_loop / t_fold:.2f}x; head share of the joint step: "
        f"{100 * (t_joint - t_bb) / t_joint:.1f}% (joint - backbone), {100 * t_fold / t_joint:.1f}% (head alone / joint)")
  report.emit(args, "head_throughput", dict(backend=jax.default_backend(), config=args.config, head_rows=rows,
                                            head_folded_ms=t_fold, head_loop_ms=t_loop, backbone_ms=t_bb,
                                            joint_ms=t_joint))


if __name__ == "__main__":
  main()
