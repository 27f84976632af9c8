"""Samples/s of the demo input pipeline with 0, 1 and 2 worker processes, against a step proxy.

    python benchmarks/data_throughput.py [--config configs/demo.py] [--batches 40] [--workers 0 1 2] [--json]
    python benchmarks/data_throughput.py --latents [--config configs/mmar_0p5b.py] [--mfu 1.0] [--json]

A sample is one record (one task sequence, one image); with packing a row holds several. The
training step does not exist yet, so the consumption side is a proxy: the demo backbone's
jitted forward + backward (text cross-entropy only) on the pipeline's own batches. The real step
adds the image tokenizer, adapter and diffusion head, so it consumes fewer samples/s than this
proxy and the printed ratio is a lower bound of the true one.

--latents measures the latent cache source (data.source='latents') at the config's shapes
(mmar_0p5b: 256px, moments 16x16x32 float32 and their mirror, 64 KiB a record) on a cache of
random moments written to a temporary directory, against what one H100 step consumes:
  records/s needed = peak x mfu / F x records per row,  F = loop.training_flops_per_row(config)
with the H100 SXM's bf16 peak from train/metrics.PEAK_FLOPS and --mfu (default 1.0, scale_plan's
assumption: the most a chip can consume). The cache is small enough to sit in the page cache, so
this is the decode and sequence cost, not the disk's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from array_record.python.array_record_module import ArrayRecordWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # For benchmarks.report.
from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.data import images, latent_cache, pipeline, synthetic, text_tokenizer  # noqa: E402
from mmar_jax.models import kl_vae  # noqa: E402
from mmar_jax.models.backbone import Backbone, BackboneConfig  # noqa: E402
from mmar_jax.train import loop  # noqa: E402
from mmar_jax.train.metrics import PEAK_FLOPS  # noqa: E402


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


def write_random_cache(config, directory: str, records: int) -> None:
  """A cache of `records` random moments at the config's shapes, captions from the synthetic grammar."""
  vae = kl_vae.VAEConfig.from_config(config)
  size = config.tokenizer.image_size
  shape = (size // vae.downsample, size // vae.downsample, 2 * vae.z_channels)
  captions = synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(records, 32, seed=0, noisy_backgrounds=False))
  rng = np.random.default_rng(0)
  writer = ArrayRecordWriter(os.path.join(directory, latent_cache.shard_name(0, 1)), "group_size:1")
  for i in range(records):
    moments, flip = rng.standard_normal((2,) + shape, np.float32)  # Independent: no bytes for brotli to share.
    writer.write(latent_cache.write_record(f"{i}.png", captions[i]["caption"], moments, flip, image_size=size))
  writer.close()
  info = {"num_records": records, "num_shards": 1, "records_per_shard": records, "image_size": size,
          "vae": json.loads(json.dumps(dataclasses.asdict(vae))),
          "image": latent_cache.image_settings(images.ImageConfig.from_config(config))}
  with open(os.path.join(directory, latent_cache.INFO_FILE), "w") as f:
    json.dump(info, f)
  with open(latent_cache.skip_file_path(os.path.join(directory, latent_cache.shard_name(0, 1))), "w") as f:
    json.dump({"written": records, "upscaled": 0, "skipped": []}, f)


def latents_main(args) -> None:
  config = configs.load_config(args.config or "configs/mmar_0p5b.py")
  with tempfile.TemporaryDirectory() as directory:
    config.data.source, config.data.latents_dir, config.data.tokenizer = "latents", directory, "demo"
    write_random_cache(config, directory, args.records)
    d = config.data
    record_bytes = os.path.getsize(os.path.join(directory, latent_cache.shard_name(0, 1))) / args.records
    print(f"{config.name}: latent cache {config.tokenizer.image_size}px ({record_bytes / 1024:.0f} KiB a record), "
          f"seq_len {d.seq_len}, batch {d.batch_size}, packing {d.packing}; {os.cpu_count()} CPU cores, "
          f"{args.batches} batches after 5 warm-up")
    row_flops = loop.training_flops_per_row(config)
    peak = PEAK_FLOPS["NVIDIA H100"]
    rows_needed = peak * args.mfu / row_flops
    results = []
    for workers in args.workers:
      records_per_s, rows_per_s = pipeline_rate(config, workers, args.batches)
      per_row = records_per_s / rows_per_s
      needed = rows_needed * per_row
      results.append(dict(workers=workers, records_per_s=records_per_s, rows_per_s=rows_per_s,
                          needed_records_per_s=needed, ratio=records_per_s / needed))
      print(f"  pipeline, {workers} workers: {records_per_s:8.1f} records/s {rows_per_s:7.1f} rows/s   "
            f"{records_per_s / needed:5.2f}x one H100's need")
    print(f"  one H100 step's need: {peak / 1e12:.0f} TFLOP/s x MFU {args.mfu:.2f} / {row_flops / 1e12:.3f} TFLOP a "
          f"row = {rows_needed:.1f} rows/s x {per_row:.2f} records a row = {needed:.1f} records/s")
    report.emit(args, "data_throughput", dict(source="latents", config=config.name, cpu_cores=os.cpu_count(),
                                              record_bytes=record_bytes, row_flops=row_flops, peak_flops=peak,
                                              mfu=args.mfu, needed_rows_per_s=rows_needed, results=results))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=None, help="default configs/demo.py, with --latents configs/mmar_0p5b.py")
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--latents", action="store_true", help="the latent cache source against one H100 step")
  parser.add_argument("--records", type=int, default=1024, help="--latents: records in the random cache")
  parser.add_argument("--mfu", type=float, default=1.0, help="--latents: share of the H100's peak the step runs at")
  report.add_json_flag(parser)
  args = parser.parse_args()
  if args.latents:
    latents_main(args)
    return
  config = configs.load_config(args.config or "configs/demo.py")
  d = config.data
  print(f"{config.name}: {d.source} {config.tokenizer.image_size}px, seq_len {d.seq_len}, batch {d.batch_size}, packing "
        f"{d.packing}; {os.cpu_count()} CPU cores, {args.batches} batches after 5 warm-up")
  step_samples, step_rows = step_proxy_rate(config, args.batches)
  print(f"  step proxy (backbone fwd+bwd, jit): {step_samples:8.1f} samples/s {step_rows:7.1f} rows/s")
  results = []
  for workers in args.workers:
    samples, rows = pipeline_rate(config, workers, args.batches)
    print(f"  pipeline, {workers} workers:          {samples:8.1f} samples/s {rows:7.1f} rows/s   "
          f"{samples / step_samples:5.2f}x the step proxy")
    results.append(dict(workers=workers, samples_per_s=samples, rows_per_s=rows, ratio=samples / step_samples))
  report.emit(args, "data_throughput", dict(source=d.source, config=config.name, cpu_cores=os.cpu_count(),
                                            step_proxy_samples_per_s=step_samples, results=results))


if __name__ == "__main__":
  main()
