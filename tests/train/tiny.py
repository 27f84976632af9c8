"""A tiny training config (2 layers, width 32, 24x24 images in 9 tokens) and ways to run it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

from mmar_jax import configs

OVERRIDES = (
    "model.num_layers=2", "model.hidden_size=32", "model.intermediate_size=64", "model.num_heads=2",
    "model.num_kv_heads=2", "model.adapter_width=32", "model.adapter_heads=2", "head.depth=1", "head.width=32",
    "head.frequency_dim=32", "tokenizer.image_size=24", "tokenizer.patch_size=8", "data.seq_len=40",
    "data.batch_size=8", "data.num_workers=0", "data.packing=False", "train.warmup_steps=2",
    "train.learning_rate=0.003", "train.log_every=2", "train.checkpoint_every=3", "train.eval_every=0",
    "train.num_steps=6", "diffusion.diffusion_batch_mul=2",
)


def config(*extra: str):
  return configs.load_config("configs/demo.py", OVERRIDES + tuple(extra))


def cli_args(workdir: str, *extra: str) -> list[str]:
  return ["train", "--config=configs/demo.py", f"--workdir={workdir}"] + [f"--config.{o}" for o in OVERRIDES + extra]


def start(workdir: str, *extra: str) -> subprocess.Popen:
  """`mmar-jax train` on the tiny config in a child process with the tests' 8 CPU devices."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", "mmar_jax.cli.main", *cli_args(workdir, *extra)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def run(workdir: str, *extra: str, timeout: float = 300) -> str:
  proc = start(workdir, *extra)
  out, _ = proc.communicate(timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"mmar-jax train failed ({proc.returncode}):\n{out}")
  return out


def wait_for_step(workdir: str, step: int, *procs: subprocess.Popen, timeout: float = 300) -> None:
  """Blocks until checkpoint `step` is complete on disk (Orbax renames it into place when done),
  failing when any of the training processes `procs` exits first."""
  path = os.path.join(workdir, "checkpoints", str(step))
  deadline = time.monotonic() + timeout
  while not os.path.isdir(path):
    for proc in procs:
      if proc.poll() is not None:
        raise AssertionError(f"training exited ({proc.returncode}) before step {step}:\n{proc.communicate()}")
    if time.monotonic() > deadline:
      raise AssertionError(f"no checkpoint {step} after {timeout} s")
    time.sleep(0.05)


def saved_params(workdir: str, step: int | None = None):
  """The params of a checkpoint (newest by default) as numpy, read with plain Orbax."""
  mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=ocp.CheckpointManagerOptions(read_only=True))
  step = mngr.latest_step() if step is None else step
  restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
  return step, restored["params"]


def saved_run(workdir: str, step: int) -> dict:
  """The run item of a checkpoint step: processes, devices and mesh that wrote it."""
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    path = os.path.abspath(os.path.join(workdir, "checkpoints", str(step)))
    return checkpointer.restore(path, ocp.args.Composite(run=ocp.args.JsonRestore()))["run"]


def finished_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps on disk (Orbax renames a step into place when complete)."""
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []


def assert_trees_equal(a, b, atol=0.0):
  import jax
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    x, y = np.asarray(x), np.asarray(y)
    if atol == 0:
      assert np.array_equal(x, y), f"{jax.tree_util.keystr(path)} differs (max {np.abs(x - y).max()})"
    else:
      np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))
