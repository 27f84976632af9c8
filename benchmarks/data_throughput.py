"""Samples/s of the demo input pipeline with 0, 1 and 2 worker processes, against a step proxy.

    python benchmarks/data_throughput.py [--config configs/demo.py] [--batches 40] [--workers 0 1 2]

A sample is one record (one task sequence, one image); with packing a row holds several. The
training step does not exist yet, so the consumption side is a proxy: the demo backbone's
jitted forward + backward (text cross-entropy only) on the pipeline's own batches. The real step
adds the image tokenizer, adapter and diffusion head, so it consumes fewer samples/s than this
proxy and the printed ratio is a lower bound of the true one.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import optax

from mmar_jax import configs
from mmar_jax.data import pipeline, text_tokenizer
from mmar_jax.models.backbone import Backbone, BackboneConfig


def pipeline_rate(config, workers: int, batches: int) -> tuple[float, float]:
  """(samples/s, rows/s) after a warm-up that starts the workers."""
  config = config.copy_and_resolve_references()
  config.data.num_workers = workers
  pc = pipeline.PipelineConfig.from_config(config)
  it = iter(pipeline.build_dataset(pc, text_tokenizer.load(config.data.tokenizer)))
  for _ in range(5):
    next(it)
  start = time.perf_counter()
  samples = sum(int(next(it).image_valid.sum()) for _ in range(batches))
  seconds = time.perf_counter() - start
  it.close()
  return samples / seconds, batches * pc.batch_size / seconds


def step_proxy_rate(config, batches: int) -> tuple[float, float]:
  """(samples/s, rows/s) of the backbone's forward + backward on pipeline batches."""
  config = config.copy_and_resolve_references()
  config.data.num_workers = 0
  pc = pipeline.PipelineConfig.from_config(config)
  it = iter(pipeline.build_dataset(pc, text_tokenizer.load(config.data.tokenizer)))
  host = [next(it) for _ in range(batches)]
  model = Backbone(BackboneConfig.from_config(config))
  params = model.init(jax.random.key(0), jnp.asarray(host[0].input_ids), jnp.asarray(host[0].positions),
                      segment_ids=jnp.asarray(host[0].segment_ids))

  @jax.jit
  def grads(params, batch):
    def loss(p):
      logits = model.apply(p, batch["input_ids"], batch["positions"], segment_ids=batch["segment_ids"]).logits
      ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["targets"])
      return (ce * batch["text_loss_mask"]).sum() / jnp.maximum(batch["text_loss_mask"].sum(), 1.0)
    return jax.grad(loss)(params)

  keys = ("input_ids", "positions", "segment_ids", "targets", "text_loss_mask")
  device = [{k: jnp.asarray(getattr(b, k)) for k in keys} for b in host]
  jax.block_until_ready(grads(params, device[0]))  # Compile.
  start = time.perf_counter()
  for b in device:
    out = grads(params, b)
  jax.block_until_ready(out)
  seconds = time.perf_counter() - start
  samples = sum(int(b.image_valid.sum()) for b in host)
  return samples / seconds, batches * pc.batch_size / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  args = parser.parse_args()
  config = configs.load_config(args.config)
  d = config.data
  print(f"{config.name}: {d.source} {config.tokenizer.image_size}px, seq_len {d.seq_len}, batch {d.batch_size}, packing "
        f"{d.packing}; {os.cpu_count()} CPU cores, {args.batches} batches after 5 warm-up")
  step_samples, step_rows = step_proxy_rate(config, args.batches)
  print(f"  step proxy (backbone fwd+bwd, jit): {step_samples:8.1f} samples/s {step_rows:7.1f} rows/s")
  for workers in args.workers:
    samples, rows = pipeline_rate(config, workers, args.batches)
    print(f"  pipeline, {workers} workers:          {samples:8.1f} samples/s {rows:7.1f} rows/s   "
          f"{samples / step_samples:5.2f}x the step proxy")


if __name__ == "__main__":
  main()
