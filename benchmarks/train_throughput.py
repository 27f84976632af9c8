"""Training throughput of the real jitted train step: tokens/s, images/s, step time and MFU.

    python benchmarks/train_throughput.py --config configs/demo.py [--steps 20] [--warmup 3] \
        [--peak_flops 0] [--json] [--override mesh.fsdp=-1 --override data.batch_size=32 ...]

The run is built as `mmar-jax train` builds it (mmar_jax.train.loop.setup: mesh, model,
optimizer, state shardings, the grain pipeline), with a fresh state and the loop's jit (state
donated). Batches are drawn from the pipeline before timing, so the figures are the step's
alone (benchmarks/data_throughput.py measures the input side). Model FLOPs follow
the convention of mmar_jax/train/flops.py (loop.training_flops_per_row: the backbone over every
position, the adapter and the diffusion head over every image slot); the peak is the device's data-sheet figure
(mmar_jax/train/metrics.py) or --peak_flops, so on a CPU MFU is n/a unless that is given.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.data import pipeline  # noqa: E402
from mmar_jax.train import loop, metrics, optimizer, sharding  # noqa: E402
from mmar_jax.train import step as step_lib  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--override", action="append", default=[], help="config override, e.g. mesh.fsdp=-1")
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
  parser.add_argument("--peak_flops", type=float, default=0.0, help="per-device peak FLOP/s; 0 = data sheet")
  report.add_json_flag(parser)
  args = parser.parse_args()
  config = configs.load_config(args.config, args.override, num_devices=jax.device_count())
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.setup(config, workdir)  # Its checkpoint manager is never used.
    mesh, rules = run.mesh, config.mesh.logical_axis_rules
    state = run.fresh_state()
    fn = step_lib.make_train_step(run.exp.model, run.exp.image_tokenizer, run.tx,
                                  optimizer.learning_rate_schedule(config.train), step_lib.StepConfig.from_config(config))
    tokenizer_params = jax.device_put(run.exp.image_tokenizer_params(), NamedSharding(mesh, PartitionSpec()))
    batches = [pipeline.to_global(next(run.data_iterator), mesh, config.mesh.logical_axis_rules)
               for _ in range(args.warmup + args.steps)]
    with sharding.activate(mesh, rules):
      jitted = jax.jit(fn, in_shardings=(run.state_shardings, pipeline.batch_sharding(mesh, config.mesh.logical_axis_rules), None),
                       out_shardings=(run.state_shardings, None), donate_argnums=0)
      start = time.perf_counter()
      for batch in batches[:args.warmup]:
        state, step_metrics = jitted(state, batch, tokenizer_params)
      jax.block_until_ready(step_metrics)
      warmup_s = time.perf_counter() - start
      times, images, tokens = [], 0.0, 0.0
      for batch in batches[args.warmup:]:
        start = time.perf_counter()
        state, step_metrics = jitted(state, batch, tokenizer_params)
        values = jax.device_get(step_metrics)  # Waits for the step: per-step times.
        times.append(time.perf_counter() - start)
        images += float(values["images"])
        tokens += float(values["tokens"])
  seconds = sum(times)
  rows = args.steps * config.data.batch_size
  n = jax.device_count()
  peak = metrics.peak_flops_per_device(jax.devices()[0], args.peak_flops or config.train.peak_flops_per_device)
  rates = metrics.throughput(tokens=rows * config.data.seq_len, images=images, seconds=seconds,
                             flops=rows * loop.training_flops_per_row(config), num_devices=n, peak=peak)
  print(f"{config.name}: {n} x {jax.devices()[0].device_kind} ({jax.default_backend()}), mesh {dict(mesh.shape)}, "
        f"batch {config.data.batch_size} x seq_len {config.data.seq_len}, accum {config.train.grad_accum_steps}, "
        f"compute {config.model.dtype}, remat {config.model.remat_policy}")
  print(f"warmup {args.warmup} steps (compile included) {warmup_s:.1f} s; {args.steps} timed steps")
  print(f"step time: median {statistics.median(times) * 1e3:.1f} ms, mean {seconds / args.steps * 1e3:.1f} ms, "
        f"min {min(times) * 1e3:.1f} ms")
  print(f"tokens/s (all positions): {rows * config.data.seq_len / seconds:,.0f} "
        f"({rates['tokens_per_s_per_device']:,.0f} per device); non-pad tokens/s {tokens / seconds:,.0f}")
  print(f"images/s: {images / seconds:,.2f} ({rates['images_per_s_per_device']:,.2f} per device)")
  print(f"model TFLOP/s per device: {rates['model_tflops_per_s_per_device']:.4f}; MFU: "
        + (f"{rates['mfu']:.2%} of {peak / 1e12:.1f} TFLOP/s" if "mfu" in rates else "n/a (no peak for this device; "
           "give --peak_flops)"))
  report.emit(args, "train_throughput", {
      "config": config.name, "devices": n, "device_kind": jax.devices()[0].device_kind, "mesh": dict(mesh.shape),
      "batch_size": config.data.batch_size, "seq_len": config.data.seq_len, "warmup_s": warmup_s,
      "step_time_median_s": statistics.median(times), "step_time_mean_s": seconds / args.steps,
      "tokens_per_s": rows * config.data.seq_len / seconds, "non_pad_tokens_per_s": tokens / seconds,
      "images_per_s": images / seconds} | rates)


if __name__ == "__main__":
  main()
