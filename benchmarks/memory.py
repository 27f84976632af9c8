"""Per-device memory of a training step on simulated meshes, from compilation alone (nothing runs).

    python benchmarks/memory.py [--presets mmar_0p5b,mmar_7b] [--devices 8,64,256] [--tensor 0p5b=2,7b=4] [--json]

For each preset and device count k, two layouts: pure FSDP (fsdp = k; data x fsdp where the
width does not split k ways) and FSDP x tensor parallel (tensor = t, fsdp = k / t). The train
step (mmar_jax/train/step.py) is jitted with the loop's shardings and lowered from abstract
inputs (ShapeDtypeStructs with shardings), so even 7B parameters are never materialised.
Parameters and optimizer state per device are summed from their shardings (shard shape x item
size); activations and other temporaries are XLA's `memory_analysis().temp_size_in_bytes`.
Each device gets a micro-batch of one row of data.seq_len tokens. Images enter as precomputed
KL-16 latents (the latent cache), so the frozen VAE's encoder is not in the step. The optimizer
is the loop's (`loop.build_optimizer`): under a LoRA preset the base weights have no moments.
benchmarks/scale_plan.py reuses `build`, `shard`, `layout` and `compile_step`.

The simulated devices are XLA:CPU's: its memory analysis estimates what a TPU or GPU would
need (its fusions, layouts and bfloat16 handling differ), so read the figures as +-20-30%.
"""

from __future__ import annotations

import os
import sys

# Must precede the first use of a jax backend: 256 fake CPU devices to lay meshes over, unless the
# importer (a test's 8) already chose a count; its child processes inherit XLA_FLAGS.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=256").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from benchmarks import report  # noqa: E402
from mmar_jax import configs  # noqa: E402
from mmar_jax.data import pipeline, text_tokenizer  # noqa: E402
from mmar_jax.models import tokenizers  # noqa: E402
from mmar_jax.models.mmar import MMAR, MMARConfig  # noqa: E402
from mmar_jax.train import experiment, loop, optimizer, sharding  # noqa: E402
from mmar_jax.train import mesh as mesh_lib  # noqa: E402
from mmar_jax.train import state as state_lib  # noqa: E402
from mmar_jax.train import step as step_lib  # noqa: E402

GIB = 2**30
CHIPS = (("v5e 16 GiB", 16 * GIB), ("H100 80 GB", 80e9))


def build(config) -> experiment.Experiment:
  """The experiment without its text tokenizer (the Qwen2 files need not be on disk): only the
  model and the image tokenizer take part in compiling the step. Any ids work for the special
  tokens (the vocabulary's last six): they only pick which embedding rows LoRA trains."""
  last = config.model.vocab_size - 1
  ids = text_tokenizer.SpecialIds(*range(last - 5, last + 1))
  model = MMAR(MMARConfig.from_config(config, ids.mask))
  image = tokenizers.make_tokenizer(tokenizers.TokenizerConfig.from_config(config))
  return experiment.Experiment(config=config, text_tokenizer=None, special_ids=ids, model=model,
                               image_tokenizer=image)


def sharded_bytes(tree) -> int:
  """Bytes one device holds of an abstract, sharded tree (every leaf's sharding splits evenly)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def whole_bytes(tree) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def shard(config, exp, tx, shape: tuple[int, int, int]):
  """The (data, fsdp, tensor) mesh of `shape` over the first devices and the state's shardings on
  it; ConfigError when a mesh axis does not divide a parameter dimension it shards."""
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = shape
  mesh = mesh_lib.make_mesh(config, jax.devices()[:math.prod(shape)])
  return mesh, state_lib.shardings(exp.init_params, tx, mesh, config.mesh.logical_axis_rules)


def layout(config, exp, tx, k: int, tensor: int):
  """(data, fsdp, tensor) over k devices with `tensor`-way TP; FSDP as wide as the widths allow."""
  fsdp = k // tensor
  while fsdp >= 1:
    try:
      return shard(config, exp, tx, (k // (fsdp * tensor), fsdp, tensor))
    except configs.ConfigError:
      fsdp //= 2  # A width this many ways does not split evenly: move a factor to data.
  raise SystemExit(f"no layout of {k} devices with tensor={tensor}")


def measure(config, exp, k: int, tensor: int) -> dict:
  tx = loop.build_optimizer(exp, config)
  mesh, shardings = layout(config, exp, tx, k, tensor)
  return compile_step(config, exp, tx, mesh, shardings)


def compile_step(config, exp, tx, mesh, shardings, rows_per_shard: int = 1) -> dict:
  """Compiles the train step on `mesh` (nothing runs) with `rows_per_shard` rows for each device
  of the batch axes (data x fsdp; tensor-parallel peers share theirs); bytes per device."""
  rows = mesh.shape["data"] * mesh.shape["fsdp"] * rows_per_shard
  config.data.batch_size = rows
  abstract_state = state_lib.abstract(exp.init_params, tx, config.seed, shardings)
  inputs, _ = exp.dummy_inputs(rows)
  batch_sharding = pipeline.batch_sharding(mesh, config.mesh.logical_axis_rules)
  batch = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding), inputs)
  fn = step_lib.make_train_step(exp.model, exp.image_tokenizer, tx, optimizer.learning_rate_schedule(config.train),
                                step_lib.StepConfig.from_config(config))
  start = time.perf_counter()
  with sharding.activate(mesh, config.mesh.logical_axis_rules):
    compiled = jax.jit(fn, in_shardings=(shardings, batch_sharding, None), out_shardings=(shardings, None),
                       donate_argnums=0).lower(abstract_state, batch, {}).compile()
  seconds = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  # Peak: inputs + outputs not aliased to (donated) inputs + temporaries.
  peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
          + analysis.temp_size_in_bytes)
  return dict(mesh=dict(mesh.shape), rows_per_shard=rows_per_shard, params=sharded_bytes(abstract_state.params),
              params_whole=whole_bytes(abstract_state.params), opt=sharded_bytes(abstract_state.opt_state),
              opt_whole=whole_bytes(abstract_state.opt_state), temp=analysis.temp_size_in_bytes, peak=peak,
              compile_s=seconds, compiled=compiled)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="mmar_0p5b,mmar_7b")
  parser.add_argument("--devices", default="8,64,256")
  parser.add_argument("--tensor", default="mmar_0p5b=2,mmar_7b=4",
                      help="tensor-parallel degree per preset for the FSDP x TP layout (must divide the KV heads)")
  parser.add_argument("--override", action="append", default=[], help="config override, e.g. data.seq_len=2048")
  report.add_json_flag(parser)
  args = parser.parse_args()
  tensor_of = dict(kv.split("=") for kv in args.tensor.split(","))
  print(f"{jax.device_count()} simulated {jax.default_backend()} devices; XLA:CPU's memory analysis, an "
        "estimate of a TPU/GPU's; one row per device of data x fsdp; GiB per device")
  print(f"{'preset':<10} {'devices':>7} {'mesh (data,fsdp,tensor)':>24} {'params':>8} {'x whole':>8} "
        f"{'opt state':>9} {'x whole':>8} {'temp':>8} {'x 1 dev':>8} {'peak':>8} {'compile s':>9}  fits")
  figures = []
  for name in args.presets.split(","):
    config = configs.load_config(f"configs/{name}.py", ["data.num_workers=0", *args.override])
    config.unlock()
    exp = build(config)
    print(f"# {name}: seq_len {config.data.seq_len} (the preset's; the paper publishes none), "
          f"{configs.num_image_tokens(config)} image tokens, remat {config.model.remat_policy}, "
          f"compute {config.model.dtype}, params {config.model.param_dtype}")
    base = measure(config, exp, 1, 1)
    cases = [(1, 1)] + [(k, t) for k in map(int, args.devices.split(",")) for t in (1, int(tensor_of[name]))]
    for k, t in cases:
      r = base if k == 1 else measure(config, exp, k, t)
      shape = tuple(r["mesh"].values())
      fits = ", ".join(chip for chip, cap in CHIPS if r["peak"] <= cap) or "neither"
      print(f"{name:<10} {k:>7} {str(shape):>24} {r['params'] / GIB:>8.3f} {r['params'] / r['params_whole']:>8.3f} "
            f"{r['opt'] / GIB:>9.3f} {r['opt'] / r['opt_whole']:>8.3f} {r['temp'] / GIB:>8.3f} "
            f"{r['temp'] / base['temp']:>8.3f} {r['peak'] / GIB:>8.3f} {r['compile_s']:>9.1f}  {fits}", flush=True)
      figures.append({"preset": name, "devices": k, "mesh": r["mesh"], "fits": fits, "compile_s": r["compile_s"]}
                     | {f"{key}_bytes_per_device": r[key] for key in ("params", "opt", "temp", "peak")})
  report.emit(args, "memory", {"rows": figures})


if __name__ == "__main__":
  main()
