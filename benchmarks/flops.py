"""Analytic training FLOPs of each preset beside XLA's cost analysis of the compiled train step.

    python benchmarks/flops.py [--presets demo,mmar_0p5b,mmar_7b] [--lora_rank 16] [--json]

Compiles (never runs) the real train step (mmar_jax/train/step.py, with the loop's optimizer,
on one device) from abstract inputs, so even mmar_7b needs no memory, and divides XLA's FLOPs by
the rows of the batch; the analytic figure is `loop.training_flops_per_row` (backbone, adapter
and head, by the convention in mmar_jax/train/flops.py: LoRA's matmuls counted, no weight
gradients for frozen kernels). Each preset runs with LoRA on (its own rank, or `--lora_rank`
where it has none) and off (rank 0: full fine-tuning). For the count the layers are unrolled
(XLA's cost analysis counts a while loop's body, nn.scan's, once), the dtype is float32 and
there is no remat, so that no recomputation or dtype-dependent fusion enters it.
XLA counts what the analytic figure leaves out too (norms, softmax, activations, the optimizer
update), so the ratio sits a little below 1, most at the demo's tiny widths.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import memory, report  # noqa: E402  (memory's import fixes the fake device count)
from mmar_jax import configs  # noqa: E402
from mmar_jax.train import loop  # noqa: E402


def step_config(name: str, lora_rank: int):
  config = configs.load_config(f"configs/{name}.py")
  config.model.lora.rank = lora_rank
  config.model.update(dtype="float32", scan_layers=False, remat_policy="none", adapter_remat=False)
  config.head.update(dtype="float32", remat=False)
  config.train.grad_accum_steps = 1  # A scan too.
  return config


def measure(name: str, lora_rank: int) -> dict:
  config = step_config(name, lora_rank)
  exp = memory.build(config)
  tx = loop.build_optimizer(exp, config)
  mesh, shardings = memory.shard(config, exp, tx, (1, 1, 1))
  start = time.perf_counter()
  compiled = memory.compile_step(config, exp, tx, mesh, shardings)
  xla = compiled["compiled"].cost_analysis()["flops"] / config.data.batch_size
  analytic = loop.training_flops_per_row(config)
  return dict(preset=name, lora_rank=lora_rank, seq_len=config.data.seq_len, analytic_gflop_per_row=analytic / 1e9,
              xla_gflop_per_row=xla / 1e9, ratio=analytic / xla, compile_s=time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="demo,mmar_0p5b,mmar_7b")
  parser.add_argument("--lora_rank", type=int, default=16, help="LoRA's rank for presets that have none")
  report.add_json_flag(parser)
  args = parser.parse_args()
  print("train step, one row of data.seq_len tokens, GFLOP per row (analytic / XLA)")
  print(f"{'preset':<10} {'lora':>5} {'seq_len':>8} {'analytic':>12} {'XLA':>12} {'ratio':>6} {'compile s':>10}")
  rows = []
  for name in args.presets.split(","):
    preset_rank = configs.load_config(f"configs/{name}.py").model.lora.rank
    for rank in (preset_rank or args.lora_rank, 0):
      row = measure(name, rank)
      rows.append(row)
      print(f"{name:<10} {rank:>5} {row['seq_len']:>8} {row['analytic_gflop_per_row']:>12.2f} "
            f"{row['xla_gflop_per_row']:>12.2f} {row['ratio']:>6.3f} {row['compile_s']:>10.1f}", flush=True)
  report.emit(args, "flops", {"rows": rows})


if __name__ == "__main__":
  main()
